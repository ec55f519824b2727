//! A test certificate authority and leaves it issues (rcgen), for the
//! HTTPS publisher and the encrypted DNS listeners; clients trust the CA's
//! PEM (webpki refuses a self-signed leaf as its own anchor).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA that issues server certificates.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM: what clients trust.
    pub pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key.
#[derive(Debug)]
pub struct Leaf {
    /// The leaf then the CA, PEM.
    pub chain_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The same chain, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The same key, DER.
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: certificate.pem(),
            der: certificate.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards or IP
    /// addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("shieldns test"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", certificate.pem(), self.pem),
            key_pem: key.serialize_pem(),
            chain: vec![certificate.der().clone(), self.der.clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// A DNS over TLS client on one connection (rustls, blocking), for tests
/// that need a connection kept open across something the server does.
#[derive(Debug)]
pub struct DotClient {
    stream: tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, std::net::TcpStream>,
}

impl DotClient {
    /// Connects to `server` as `server_name`, trusting the CA `ca_pem`, and
    /// completes the handshake.
    pub fn connect(server: std::net::SocketAddr, server_name: &str, ca_pem: &str) -> Self {
        use std::sync::Arc;
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(certificate.expect("CA PEM")).expect("CA certificate");
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"dot".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("server name");
        let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
        let socket = std::net::TcpStream::connect(server).expect("connect");
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut stream = rustls::StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
        }
        Self { stream }
    }

    /// Sends one message and reads its answer on this connection.
    pub fn query(&mut self, message: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let length = u16::try_from(message.len()).expect("a DNS message");
        self.stream.write_all(&length.to_be_bytes())?;
        self.stream.write_all(message)?;
        self.stream.flush()?;
        let mut length = [0u8; 2];
        self.stream.read_exact(&mut length)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        self.stream.read_exact(&mut answer)?;
        Ok(answer)
    }
}
