//! TLS 1.3 (rustls with the ring provider): loading PEM files, the self-signed development
//! certificate, and the listener that hands axum finished TLS connections.
//!
//! Each TCP connection does its TLS handshake in a task of its own, bounded by the handshake
//! timeout, so a slow or silent client never holds up the accept loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::ConfigError;
use crate::gate::Ticket;
use crate::server::GatedTcp;

/// The folder of the self-signed certificate, in the data folder.
pub const TLS_DIR: &str = "tls";
/// The self-signed certificate (PEM), which clients add to their trusted roots.
pub const SELF_SIGNED_CERT: &str = "cert.pem";
/// The self-signed certificate's private key (PEM, mode 0600).
pub const SELF_SIGNED_KEY: &str = "key.pem";

fn tls_error(what: &'static str, path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::Tls {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a certificate chain and its private key (PEM) and builds a TLS 1.3 acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error("certificate file", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("certificate file", cert, e))?;
    if chain.is_empty() {
        return Err(tls_error(
            "certificate file",
            cert,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error("key file", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("configuration for", cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| tls_error("certificate and key", cert, e))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The self-signed certificate's expiry (Unix seconds, text), beside it: the server reads it
/// at start to renew an expired certificate without parsing X.509.
pub const SELF_SIGNED_EXPIRY: &str = "cert.expires";
/// How long a self-signed certificate is valid.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A self-signed certificate expiring within this is reported at every start.
const RENEWAL_NOTICE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The self-signed certificate in `<data_dir>/tls/`, as [`self_signed`] found or made it.
#[derive(Debug)]
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Made now (first start, or the old one expired).
    pub made: bool,
    /// Unix seconds after which clients refuse it; `None` for a certificate made before
    /// expiries were recorded (valid until the year 4096).
    pub expires: Option<u64>,
}

impl SelfSigned {
    /// What the operator should hear about renewal, if anything.
    pub fn renewal_notice(&self, now: u64) -> Option<String> {
        let dir = self.cert.parent().unwrap_or(Path::new(".")).display();
        match self.expires {
            None => Some(format!(
                "the self-signed certificate {} has no recorded expiry (it was made by an older \
                 version, valid until the year 4096); delete {dir} and restart to make one \
                 valid for a year, then give clients the new certificate",
                self.cert.display()
            )),
            Some(at) if at <= now.saturating_add(RENEWAL_NOTICE.as_secs()) => Some(format!(
                "the self-signed certificate {} expires at {}; delete {dir} and restart to make \
                 a new one, then give clients the new certificate",
                self.cert.display(),
                crate::util::format_date(blazedb_core::Date::from_unix_millis(
                    i64::try_from(at.saturating_mul(1000)).unwrap_or(i64::MAX)
                ))
            )),
            Some(_) => None,
        }
    }
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The self-signed certificate for `localhost` and `127.0.0.1` in `<data_dir>/tls/`: reused
/// when both files are there and it has not expired (so clients that trust it keep working),
/// made otherwise, valid for [`SELF_SIGNED_VALIDITY`] from an hour ago (clocks differ).
pub fn self_signed(data_dir: &Path) -> Result<SelfSigned, ConfigError> {
    let dir = data_dir.join(TLS_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    let expiry_path = dir.join(SELF_SIGNED_EXPIRY);
    let now = unix_now();
    if cert_path.exists() && key_path.exists() {
        let expires = std::fs::read_to_string(&expiry_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if expires.is_none_or(|at| at > now) {
            return Ok(SelfSigned {
                cert: cert_path,
                key: key_path,
                made: false,
                expires,
            });
        }
    }
    crate::meta::create_private_dir(&dir)
        .map_err(|e| tls_error("folder", &dir, format!("cannot create it: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|e| tls_error("self-signed certificate", &cert_path, e))?;
    let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_before = start;
    params.not_after = start + SELF_SIGNED_VALIDITY;
    let expires = u64::try_from(params.not_after.unix_timestamp()).unwrap_or(0);
    let signing_key =
        rcgen::KeyPair::generate().map_err(|e| tls_error("self-signed key", &key_path, e))?;
    let cert = params
        .self_signed(&signing_key)
        .map_err(|e| tls_error("self-signed certificate", &cert_path, e))?;
    let key_pem = zeroize::Zeroizing::new(signing_key.serialize_pem());
    write_file(&key_path, key_pem.as_bytes(), true)
        .map_err(|e| tls_error("key file", &key_path, format!("cannot write it: {e}")))?;
    write_file(&cert_path, cert.pem().as_bytes(), false).map_err(|e| {
        tls_error(
            "certificate file",
            &cert_path,
            format!("cannot write it: {e}"),
        )
    })?;
    write_file(&expiry_path, format!("{expires}\n").as_bytes(), false).map_err(|e| {
        tls_error(
            "certificate expiry file",
            &expiry_path,
            format!("cannot write it: {e}"),
        )
    })?;
    Ok(SelfSigned {
        cert: cert_path,
        key: key_path,
        made: true,
        expires: Some(expires),
    })
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Finished TLS connections, as axum's listener.
pub(crate) struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, Ticket)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Ticket;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other(
            "a TLS listener has no address of its own",
        ))
    }
}

/// Takes the connections the gate lets in until `shutdown` turns true, does each TLS
/// handshake in its own task, within the connection's time to authenticate (its ticket's
/// deadline), and hands finished connections to the returned listener. The gate bounds how
/// many handshakes run at once.
pub(crate) fn listen(
    mut listener: GatedTcp,
    acceptor: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<TlsListener> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, ticket) = tokio::select! {
                () = crate::stopped(&mut shutdown) => break,
                accepted = listener.next() => accepted,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let deadline = ticket.deadline();
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, ticket)).await;
                    }
                    Ok(Err(_)) => {
                        ticket.failed();
                    }
                    Err(_) => {}
                }
            });
        }
    });
    Ok(TlsListener { connections: rx })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let SelfSigned {
            cert, key, made, ..
        } = self_signed(dir.path()).unwrap();
        assert!(made);
        assert!(
            std::fs::read_to_string(&cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        acceptor(&cert, &key).unwrap();
        let before = std::fs::read(&cert).unwrap();
        let again = self_signed(dir.path()).unwrap();
        assert!(!again.made);
        assert_eq!(std::fs::read(&cert).unwrap(), before);
        assert_eq!(again.renewal_notice(unix_now()), None);
    }

    #[test]
    fn a_self_signed_certificate_is_valid_for_a_year_and_renewed_once_expired() {
        let dir = tempfile::tempdir().unwrap();
        let made = self_signed(dir.path()).unwrap();
        let expires = made.expires.unwrap();
        let now = unix_now();
        assert!(expires > now + SELF_SIGNED_VALIDITY.as_secs() - 2 * 3600);
        assert!(expires <= now + SELF_SIGNED_VALIDITY.as_secs());
        // Within 30 days of its expiry every start says so.
        let soon = made.renewal_notice(expires - 24 * 3600).expect("a notice");
        assert!(soon.contains("expires at"), "{soon}");
        // Expired: a new one replaces it.
        std::fs::write(dir.path().join("tls").join(SELF_SIGNED_EXPIRY), "1\n").unwrap();
        let before = std::fs::read(&made.cert).unwrap();
        let renewed = self_signed(dir.path()).unwrap();
        assert!(renewed.made);
        assert_ne!(std::fs::read(&renewed.cert).unwrap(), before);
        // One made by an older version (no expiry recorded) is kept, with a notice.
        std::fs::remove_file(dir.path().join("tls").join(SELF_SIGNED_EXPIRY)).unwrap();
        let old = self_signed(dir.path()).unwrap();
        assert!(!old.made);
        assert!(old.renewal_notice(now).unwrap().contains("4096"));
    }

    #[test]
    fn missing_or_garbage_tls_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&missing, &missing).err().expect("refused");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(err.to_string().contains("certificate file"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = acceptor(&garbage, &garbage).err().expect("refused");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let cert = self_signed(dir.path()).unwrap().cert;
        let err = acceptor(&cert, &garbage).err().expect("refused");
        assert!(err.to_string().contains("key file"), "{err}");
    }
}
