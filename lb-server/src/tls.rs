//! TLS for every listener (rustls, ring provider): the server's certificate
//! and key, and with `--tls-client-ca`, mandatory client certificates (mTLS).
//!
//! The files are read again when they change (checked every two seconds) or
//! on SIGHUP; a new configuration serves new connections only, so open
//! streams are not dropped (what nginx's `reload` and Envoy's SDS rotation
//! do). A reload that fails keeps the previous configuration and logs why.
//!
//! A client certificate's identity, which `ctl token create --identity`
//! binds to a role, is its SPIFFE ID (the first `spiffe://` URI SAN, per the
//! SPIFFE X.509-SVID specification) or else its subject (RFC 4514 form).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; `Some` makes
    /// client certificates mandatory.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// The files' modification times (unreadable ones as `None`).
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The live TLS configuration of the daemon's listeners.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(default_provider())
}

/// Reads the files into a server configuration.
fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl Tls {
    /// Loads `files`; an error names the flag and the file.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let stamps = files.stamps();
        let config = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: ArcSwap::from_pointee(config),
            stamps: Mutex::new(stamps),
        }))
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Whether client certificates are required.
    pub fn requires_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again if they changed (or if `force`); returns
    /// whether a new configuration is in use.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let stamps = self.files.stamps();
        {
            let last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *last == stamps {
                return Ok(false);
            }
        }
        let config = build(&self.files);
        // Remember these stamps even on failure: a broken file is reported
        // once, not every two seconds; the next change is tried again.
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        self.current.store(Arc::new(config?));
        Ok(true)
    }

    /// Reloads on file changes and on SIGHUP until `stop` resolves.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let force = tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => false,
                _ = hangup => true,
            };
            match self.reload(force) {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded; new connections use them")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                }
            }
        }
    }
}

/// The identity of a client certificate: its SPIFFE ID, else its subject.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let spiffe = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                    Some((*u).to_string())
                }
                _ => None,
            })
        });
    spiffe.or_else(|| {
        let subject = parsed.subject().to_string();
        (!subject.is_empty()).then_some(subject)
    })
}
