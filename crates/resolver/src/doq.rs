//! DNS over QUIC (RFC 9250): one query per bidirectional stream, each
//! message behind a 2-byte length, answered through the same handler as
//! every other transport. The server name of the connection carries a
//! client ID as DoT's does.
//!
//! Key design decision: quinn (the QUIC stack of the Rust ecosystem, on
//! the same rustls and ring as DoT and DoH) rather than hickory's DoQ
//! listener, which answers a connection's streams one at a time and closes
//! it after 100 requests. Connections count under the TCP caps (ACL at the
//! first packet, per client and in total) and under the listener's own
//! ([`crate::listener_caps`]); a connection's concurrent
//! streams are bounded by `tcp_pipeline`, its idleness by
//! `tcp_idle_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;

use shieldns_metrics::{Discard, Transport};
use tokio::sync::watch;
use tracing::debug;

use crate::error::ResolverError;
use crate::handler::ClientId;
use crate::listener_caps;
use crate::tcp::{Admitted, Shared};
use crate::tls::Encrypted;
use crate::wire::screen_header;

/// A DNS message is at most this long, behind its 2-byte length.
const MAX_STREAM: usize = 2 + 65_535;

/// RFC 9250 §4.3: DOQ_NO_ERROR, DOQ_PROTOCOL_ERROR.
const DOQ_NO_ERROR: u32 = 0;
const DOQ_PROTOCOL_ERROR: u32 = 2;

/// The QUIC endpoint of a DoQ listener.
pub(crate) fn endpoint(
    address: SocketAddr,
    encrypted: &Encrypted,
    shared: &Shared,
) -> Result<quinn::Endpoint, ResolverError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(encrypted.tls.clone()).map_err(|e| {
        ResolverError::Config {
            key: "server.listener",
            reason: format!("DoQ: {e}"),
        }
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let streams = u32::try_from(shared.limits.pipeline.max(1)).unwrap_or(u32::MAX);
    transport
        .max_concurrent_bidi_streams(streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(shared.limits.idle_timeout).ok());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, address).map_err(|cause| ResolverError::Bind {
        address,
        protocol: "udp (DoQ)",
        cause,
    })
}

/// Accepts connections on `endpoint` until `stop` turns true.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    encrypted: Arc<Encrypted>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => None,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            endpoint.close(DOQ_NO_ERROR.into(), b"");
            return;
        };
        let peer = incoming.remote_address();
        let client = peer.ip().to_canonical();
        match shared.admit_encrypted(client, &encrypted.caps) {
            Ok(admitted) => {
                tokio::spawn(connection(incoming, peer, admitted, encrypted.clone(), stop.clone()));
            }
            Err(reason) => {
                incoming.refuse();
                shared.discards.note(reason, client);
            }
        }
    }
}

/// One connection: its handshake, then a task per stream.
async fn connection(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    (admitted, handshake): (Admitted, listener_caps::Handshake),
    encrypted: Arc<Encrypted>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = admitted.shared.clone();
    let shaken = match incoming.accept() {
        Ok(connecting) => tokio::time::timeout(encrypted.handshake_timeout, connecting).await,
        Err(error) => {
            debug!(%error, %peer, "QUIC connection refused");
            shared.discards.note(Discard::TlsHandshake, admitted.client);
            return;
        }
    };
    drop(handshake);
    let Ok(Ok(connection)) = shaken else {
        shared.discards.note(Discard::TlsHandshake, admitted.client);
        return;
    };
    let client_id = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.server_name.and_then(|name| encrypted.client_id_of_name(&name)))
        .map(Arc::new);
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            stream = connection.accept_bi() => stream,
        };
        // The client closed, or the idle timeout ended the connection.
        let Ok((send, receive)) = stream else { break };
        let (shared, client_id) = (shared.clone(), client_id.clone());
        tokio::spawn(async move { answer(&shared, send, receive, peer, client_id.as_deref()).await });
    }
    connection.close(DOQ_NO_ERROR.into(), b"");
    drop(admitted);
}

/// Answers the one query of a stream.
async fn answer(
    shared: &Shared,
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    peer: SocketAddr,
    client_id: Option<&ClientId>,
) {
    let client = peer.ip().to_canonical();
    let Ok(framed) = receive.read_to_end(MAX_STREAM).await else {
        shared.discards.note(Discard::Malformed, client);
        let _ = send.reset(DOQ_PROTOCOL_ERROR.into());
        return;
    };
    let length = framed.get(..2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    let message = match (length, framed.get(2..)) {
        (Some(length), Some(message)) if message.len() == length => message.to_vec(),
        _ => {
            shared.discards.note(Discard::Malformed, client);
            let _ = send.reset(DOQ_PROTOCOL_ERROR.into());
            return;
        }
    };
    if let Err(reason) = screen_header(&message) {
        shared.discards.note(reason, client);
        let _ = send.reset(DOQ_PROTOCOL_ERROR.into());
        return;
    }
    let Some(answer) = shared.handler.respond(message, peer, Transport::Doq, client_id).await else {
        let _ = send.finish();
        return;
    };
    let Ok(length) = u16::try_from(answer.len()) else {
        return;
    };
    let mut framed = Vec::with_capacity(answer.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&answer);
    if send.write_all(&framed).await.is_ok() {
        let _ = send.finish();
    }
}
