//! How this client proves itself to a daemon that requires it: a bearer
//! token (sent as `authorization: Bearer …` on every call) and TLS (the CA
//! that signed the daemon's certificate, and optionally a client certificate
//! for mTLS). [`ClientOptions`](crate::ClientOptions),
//! [`ReporterOptions`](crate::ReporterOptions) and `lb-server ctl` take the
//! same [`Credentials`].
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! let creds = lb_client::Credentials::default()
//!     .with_token(std::env::var("LB_TOKEN").unwrap_or_default())
//!     .with_ca_file("/etc/lb/ca.pem")?;
//! let options = lb_client::ClientOptions::new("lb.internal:7400").with_credentials(creds);
//! # let _ = options; Ok(()) }
//! ```

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A token and TLS settings for talking to daemons (both optional).
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<MetadataValue<Ascii>>,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tls", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl Credentials {
    /// Sends `token` as a bearer token on every call (an empty token, or one
    /// with characters a header cannot carry, sends none).
    pub fn with_token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref().trim();
        self.token = (!token.is_empty())
            .then(|| format!("Bearer {token}").parse().ok())
            .flatten();
        self
    }

    /// Dials daemons over TLS, trusting the CA certificates in `pem`.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`Credentials::with_ca_pem`] from a file.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(self.with_ca_pem(std::fs::read(path)?))
    }

    /// Presents this client certificate (PEM chain and key) to daemons that
    /// require one (mTLS). Needs a CA ([`Credentials::with_ca_pem`]).
    pub fn with_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// [`Credentials::with_identity_pem`] from files.
    pub fn with_identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> std::io::Result<Self> {
        Ok(self.with_identity_pem(std::fs::read(cert)?, std::fs::read(key)?))
    }

    /// Checks the daemon's certificate against this name instead of the
    /// dialled host.
    pub fn with_domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Whether daemons are dialled over TLS.
    pub fn uses_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// The `authorization` header value, if a token is set.
    pub(crate) fn authorization(&self) -> Option<&MetadataValue<Ascii>> {
        self.token.as_ref()
    }

    /// What tells one TLS connection from another: the trusted CA, the
    /// client certificate and the name checked (`None`: plaintext). The
    /// token is not part of it: it is a per-call header, so callers with
    /// different tokens can share a connection; a client certificate is the
    /// connection's identity, so callers with different ones cannot.
    pub(crate) fn tls_identity(&self) -> Option<TlsIdentity> {
        Some(TlsIdentity {
            ca_pem: self.ca_pem.clone()?,
            identity: self.identity.clone(),
            domain: self.domain.clone(),
        })
    }

    /// tonic's TLS settings, if TLS is on.
    pub(crate) fn tls_config(&self) -> Option<ClientTlsConfig> {
        let ca = self.ca_pem.as_ref()?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        Some(tls)
    }
}

/// The TLS settings that make a connection what it is (see
/// [`Credentials::tls_identity`]); compared in full, never hashed into a
/// digest that could collide.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsIdentity {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("TlsIdentity")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A tonic interceptor that adds the bearer token, if any.
#[derive(Clone, Debug)]
pub struct Authorize(Option<MetadataValue<Ascii>>);

impl Authorize {
    /// The interceptor for `credentials`.
    pub fn new(credentials: &Credentials) -> Authorize {
        Authorize(credentials.authorization().cloned())
    }
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_goes_in_a_bearer_header_and_not_in_debug() {
        let c = Credentials::default().with_token(" lbt_abc ");
        let mut a = Authorize::new(&c);
        let req = a.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer lbt_abc"
        );
        assert!(!format!("{c:?}").contains("lbt_abc"));
        let none = Authorize::new(&Credentials::default().with_token(""))
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(none.metadata().get("authorization").is_none());
    }

    #[test]
    fn the_tls_identity_is_what_the_connection_presents_not_the_token() {
        let ca = Credentials::default().with_ca_pem("ca");
        assert_eq!(Credentials::default().tls_identity(), None);
        assert_eq!(
            ca.tls_identity(),
            ca.clone().with_token("lbt_x").tls_identity()
        );
        let cert = ca.clone().with_identity_pem("cert", "key");
        assert_ne!(ca.tls_identity(), cert.tls_identity());
        assert_ne!(
            cert.tls_identity(),
            ca.clone()
                .with_identity_pem("cert", "other key")
                .tls_identity()
        );
        assert_ne!(
            ca.tls_identity(),
            ca.clone().with_domain_name("lb.internal").tls_identity()
        );
        assert!(!format!("{:?}", cert.tls_identity()).contains("key"));
    }
}
