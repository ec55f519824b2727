//! TLS for the encrypted listeners: each listener's certificate from its
//! PEM files, swapped in place on SIGHUP, and the accept step that turns a
//! TCP connection into a TLS one with the client ID its server name
//! carries.
//!
//! Key design decision: rustls (ring provider, already built for DNSSEC and
//! list downloads) with a certificate resolver of our own that hands out
//! the current certificate through an `ArcSwap`, so a reload replaces the
//! certificate for new handshakes without touching open connections, and a
//! broken file on reload keeps the one in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{EncryptedProtocol, ListenerConfig, UnknownClientId};
use crate::error::ResolverError;
use crate::handler::ClientId;
use crate::listener_caps::ListenerCaps;

/// A listener's certificate, replaceable while it serves.
#[derive(Debug)]
pub(crate) struct Certificate {
    current: ArcSwap<CertifiedKey>,
    certificate: PathBuf,
    key: PathBuf,
}

impl Certificate {
    /// Reads the chain and key (paths already resolved).
    pub(crate) fn load(certificate: &Path, key: &Path) -> Result<Self, ResolverError> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(certificate, key)?),
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<(), ResolverError> {
        self.current
            .store(Arc::new(certified_key(&self.certificate, &self.key)?));
        Ok(())
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The chain and key of `certificate` and `key`, checked to belong
/// together.
fn certified_key(certificate: &Path, key: &Path) -> Result<CertifiedKey, ResolverError> {
    let bad = |path: &Path, reason: String| ResolverError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| bad(certificate, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(certificate, "no PEM certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| bad(key, format!("does not match {}: {e}", certificate.display())))?;
    Ok(certified)
}

/// What an encrypted listener does with a connection once it is admitted.
pub(crate) struct Encrypted {
    pub(crate) protocol: EncryptedProtocol,
    /// The TLS configuration (QUIC's too, for DoQ).
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) certificate: Arc<Certificate>,
    pub(crate) handshake_timeout: Duration,
    /// `client_id_domain`, lower case, without a trailing dot.
    client_id_domain: Option<String>,
    pub(crate) refuse_unknown: bool,
    /// DoH: the path queries go to, without a trailing slash.
    pub(crate) path: String,
    pub(crate) http2_max_streams: u32,
    /// The listener's own connection and handshake caps.
    pub(crate) caps: Arc<ListenerCaps>,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("protocol", &self.protocol)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Encrypted {
    /// The listener of `config` (its file paths as the binary resolved
    /// them against the configuration file).
    pub(crate) fn new(config: &ListenerConfig) -> Result<Self, ResolverError> {
        let certificate = Arc::new(Certificate::load(&config.certificate, &config.key)?);
        let alpn: Vec<Vec<u8>> = match config.protocol {
            EncryptedProtocol::Dot => vec![b"dot".to_vec()],
            EncryptedProtocol::Doh => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            EncryptedProtocol::Doq => vec![b"doq".to_vec()],
        };
        // QUIC is TLS 1.3 only.
        let versions: &[&rustls::SupportedProtocolVersion] = match config.protocol {
            EncryptedProtocol::Doq => &[&rustls::version::TLS13],
            EncryptedProtocol::Dot | EncryptedProtocol::Doh => rustls::DEFAULT_VERSIONS,
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .map_err(|e| ResolverError::Config {
                key: "server.listener",
                reason: format!("TLS: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        tls.alpn_protocols = alpn;
        let tls = Arc::new(tls);
        Ok(Self {
            protocol: config.protocol,
            tls,
            certificate,
            handshake_timeout: Duration::from_secs(config.handshake_timeout.max(1)),
            client_id_domain: config
                .client_id_domain
                .as_deref()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
            refuse_unknown: config.unknown_client_id == UnknownClientId::Refuse,
            path: config.path.trim_end_matches('/').to_owned(),
            http2_max_streams: config.http2_max_streams.max(1),
            caps: Arc::new(ListenerCaps::new(config)),
        })
    }

    /// The TLS handshake, within the handshake timeout; `None` when it
    /// failed or timed out.
    pub(crate) async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(
            self.handshake_timeout,
            TlsAcceptor::from(self.tls.clone()).accept(stream),
        )
        .await
        {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }

    /// The client ID a DoT connection's server name carries: `{id}` of
    /// `{id}.{client_id_domain}`.
    pub(crate) fn client_id_of(&self, stream: &TlsStream<TcpStream>) -> Option<ClientId> {
        self.client_id_of_name(stream.get_ref().1.server_name()?)
    }

    /// The client ID a server name carries: `{id}` of
    /// `{id}.{client_id_domain}`.
    pub(crate) fn client_id_of_name(&self, server_name: &str) -> Option<ClientId> {
        let domain = self.client_id_domain.as_deref()?;
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let id = name.strip_suffix(domain)?.strip_suffix('.')?;
        (!id.is_empty() && !id.contains('.')).then(|| self.client_id(id))
    }

    /// `id` as this listener treats an ID no profile lists.
    pub(crate) fn client_id(&self, id: &str) -> ClientId {
        ClientId {
            id: id.to_owned(),
            refuse_unknown: self.refuse_unknown,
        }
    }
}
