//! The Prometheus endpoint: `GET /metrics` on `metrics.listen`, for the
//! sources `metrics.allow` lists (loopback by default).
//!
//! One request per connection, read up to the end of the request head, no
//! keep-alive: Prometheus scrapes need nothing more, and this keeps an HTTP
//! stack out of the resolver until the metrics issue needs one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use shieldns_metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

pub(crate) async fn spawn(address: SocketAddr, allow: Vec<IpNet>, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {address}"))?;
    info!(%address, allowed = ?allow, "metrics endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // Out of descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // An IPv4 scraper on an IPv6 socket, as the IPv4 address.
            let source = peer.ip().to_canonical();
            if !allow.iter().any(|net| net.contains(&source)) {
                debug!(%peer, "metrics scrape from a source metrics.allow does not list; closed");
                continue;
            }
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(error) = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics)).await {
                    debug!(%peer, %error, "metrics request timed out");
                }
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(buffer.get(..read).unwrap_or_default());
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, content_type, body) = if request_line.starts_with(b"GET /metrics ") {
        match metrics.render() {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            Err(error) => ("500 Internal Server Error", "text/plain", error.to_string()),
        }
    } else {
        ("404 Not Found", "text/plain", String::from("try /metrics\n"))
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
