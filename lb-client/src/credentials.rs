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

/// A token and TLS settings for talking to daemons (both optional), for
/// [`ClientOptions::with_credentials`](crate::ClientOptions::with_credentials)
/// and [`ReporterOptions::with_credentials`](crate::ReporterOptions::with_credentials).
/// Its `Debug` never shows the token.
///
/// ```
/// use lb_client::{ClientOptions, Credentials, ReporterOptions};
///
/// let creds = Credentials::default().with_token("s3cret");
/// assert!(!creds.uses_tls()); // a token alone: plaintext
/// assert!(!format!("{creds:?}").contains("s3cret"));
/// let client = ClientOptions::new("127.0.0.1:7400").with_credentials(creds.clone());
/// let backend = ReporterOptions::new("127.0.0.1:7400").with_credentials(creds);
/// # let _ = (client, backend);
/// ```
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
    ///
    /// ```
    /// use lb_client::credentials::{Authorize, Credentials};
    /// use tonic::service::Interceptor;
    ///
    /// let creds = Credentials::default().with_token(" s3cret\n"); // trimmed
    /// let req = Authorize::new(&creds).call(tonic::Request::new(())).unwrap();
    /// assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");
    /// // From the environment; unset (empty) sends no token:
    /// let token = std::env::var("LB_TOKEN").unwrap_or_default();
    /// let creds = Credentials::default().with_token(token);
    /// # let _ = creds;
    /// ```
    pub fn with_token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref().trim();
        self.token = (!token.is_empty())
            .then(|| format!("Bearer {token}").parse().ok())
            .flatten();
        self
    }

    /// Dials daemons over TLS, trusting the CA certificates in `pem`: a bare
    /// "host:port" daemon address is then dialled as https. [`crate::subscribe`]
    /// refuses PEM it cannot use ([`crate::Error::InvalidCredentials`]).
    ///
    /// ```
    /// // e.g. from a secret store:
    /// let ca_pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_vec();
    /// let creds = lb_client::Credentials::default().with_ca_pem(ca_pem);
    /// assert!(creds.uses_tls());
    /// ```
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`Credentials::with_ca_pem`] from a file, read now.
    ///
    /// ```
    /// use lb_client::Credentials;
    /// match Credentials::default().with_ca_file("/etc/lb/ca.pem") {
    ///     Ok(creds) => assert!(creds.uses_tls()),
    ///     // The error does not name the file: say which one.
    ///     Err(e) => eprintln!("cannot read /etc/lb/ca.pem: {e}"),
    /// }
    /// ```
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(self.with_ca_pem(std::fs::read(path)?))
    }

    /// Presents this client certificate (PEM chain and key) to daemons that
    /// require one (mTLS). Needs a CA ([`Credentials::with_ca_pem`]): without
    /// one, no TLS and no certificate.
    ///
    /// ```
    /// use lb_client::Credentials;
    /// # let (ca, cert, key) = (b"ca".to_vec(), b"cert".to_vec(), b"key".to_vec());
    /// // ca, cert, key: PEM bytes (the client's certificate chain and its private key)
    /// let creds = Credentials::default().with_ca_pem(ca).with_identity_pem(cert, key);
    /// assert!(creds.uses_tls());
    /// ```
    pub fn with_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// [`Credentials::with_identity_pem`] from files, read now.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let creds = lb_client::Credentials::default()
    ///     .with_ca_file("/etc/lb/ca.pem")?
    ///     .with_identity_files("/etc/lb/client.pem", "/etc/lb/client.key")?;
    /// # let _ = creds; Ok(()) }
    /// ```
    pub fn with_identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> std::io::Result<Self> {
        Ok(self.with_identity_pem(std::fs::read(cert)?, std::fs::read(key)?))
    }

    /// Checks the daemon's certificate against this name instead of the
    /// dialled host: for a daemon dialled by IP address, or through a name
    /// its certificate does not carry.
    ///
    /// ```
    /// # let ca_pem = b"...".to_vec();
    /// let creds = lb_client::Credentials::default()
    ///     .with_ca_pem(ca_pem)
    ///     .with_domain_name("lb.internal"); // the certificate's name
    /// let options = lb_client::ClientOptions::new("10.0.0.2:7400").with_credentials(creds);
    /// # let _ = options;
    /// ```
    pub fn with_domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Whether daemons are dialled over TLS (a CA is set).
    ///
    /// ```
    /// use lb_client::Credentials;
    /// assert!(!Credentials::default().uses_tls());
    /// assert!(Credentials::default().with_ca_pem(b"...".to_vec()).uses_tls());
    /// ```
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

/// A tonic interceptor that adds the bearer token, if any: for a
/// connection of your own to a daemon ([`crate::daemon::connect`]), as
/// `lb-server ctl` makes.
///
/// ```no_run
/// use std::time::Duration;
/// use lb_client::{credentials::Authorize, daemon, Credentials};
/// use lb_proto::v1::{admin_client::AdminClient, ListServicesRequest};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let creds = Credentials::default().with_token("s3cret");
/// let channel = daemon::connect("127.0.0.1:7400", Duration::from_secs(5), &creds).await?;
/// let mut admin = AdminClient::with_interceptor(channel, Authorize::new(&creds));
/// let services = admin.list_services(ListServicesRequest {}).await?.into_inner();
/// # let _ = services; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Authorize(Option<MetadataValue<Ascii>>);

impl Authorize {
    /// The interceptor for `credentials` (a copy of its token: later
    /// changes to `credentials` do not reach it).
    ///
    /// ```
    /// use lb_client::credentials::{Authorize, Credentials};
    /// use tonic::service::Interceptor;
    ///
    /// let mut auth = Authorize::new(&Credentials::default().with_token("s3cret"));
    /// let req = auth.call(tonic::Request::new(())).unwrap();
    /// assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");
    /// ```
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
