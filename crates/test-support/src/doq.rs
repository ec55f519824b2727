//! A DNS over QUIC client (quinn) for the tests: the installed kdig has no
//! `+quic`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// Sends `message` (RFC 9250: ID 0) to the DoQ listener at `server` as
/// `server_name`, trusting the CA `ca_pem`; the answer, or why there is
/// none.
pub fn query(server: SocketAddr, server_name: &str, ca_pem: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(ask(server, server_name, ca_pem, message))
}

async fn ask(server: SocketAddr, server_name: &str, ca_pem: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.map_err(|e| error(&e))?).map_err(|e| error(&e))?;
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| error(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![b"doq".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| error(&e))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| error(&e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(server, server_name).map_err(|e| error(&e))?;
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|e| error(&e))?
        .map_err(|e| error(&e))?;
    let (mut send, mut receive) = connection.open_bi().await.map_err(|e| error(&e))?;
    let length = u16::try_from(message.len()).map_err(|e| error(&e))?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    send.write_all(&framed).await.map_err(|e| error(&e))?;
    send.finish().map_err(|e| error(&e))?;
    let answer = tokio::time::timeout(Duration::from_secs(5), receive.read_to_end(2 + 65_535))
        .await
        .map_err(|e| error(&e))?
        .map_err(|e| error(&e))?;
    connection.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    answer
        .get(2..)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "an empty answer".to_owned())
}
