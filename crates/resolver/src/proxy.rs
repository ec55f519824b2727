//! The PROXY protocol (HAProxy's; v2 on every transport, v1 on TCP): the
//! real client of a query that a trusted load balancer (dnsdist, haproxy)
//! relays, so that the access list, the profile, rate limits and logs see
//! the client and not the balancer.
//!
//! Key design decision: a header is honoured only from `trusted_proxies`;
//! from anyone else it is dropped and counted (`untrusted_proxy`), since
//! whoever may send one may claim any address. Parsing is the `ppp`
//! crate's. With no trusted proxy configured nothing is inspected at all.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::HeaderResult;
use shieldns_metrics::Discard;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header (107 bytes, CRLF included); a v2 header is 16
/// bytes and its address block.
const V1_MAX: usize = 107;

/// `server.trusted_proxies`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

/// Who sent a message, once its PROXY header (if any) is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// No header: the peer itself; or a header (`LOCAL`, a health check)
    /// that names no client: the peer, after `header` bytes.
    Direct { header: usize },
    /// A trusted proxy relayed it for `client`; the message follows
    /// `header` bytes.
    Relayed { client: SocketAddr, header: usize },
}

impl TrustedProxies {
    pub(crate) fn new(networks: &[IpNet]) -> Self {
        Self(networks.iter().map(IpNet::trunc).collect())
    }

    /// Whether PROXY headers are honoured from anyone (else none is looked
    /// for).
    pub(crate) fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|network| network.contains(&peer))
    }

    /// The origin of a datagram from `peer` (v2 only: v1 is TCP's).
    pub(crate) fn datagram(&self, datagram: &[u8], peer: SocketAddr) -> Result<Origin, Discard> {
        if !datagram.starts_with(ppp::v2::PROTOCOL_PREFIX) {
            return Ok(Origin::Direct { header: 0 });
        }
        if !self.trusts(peer.ip()) {
            return Err(Discard::UntrustedProxy);
        }
        match HeaderResult::parse(datagram) {
            HeaderResult::V2(Ok(header)) => v2_origin(&header),
            _ => Err(Discard::Malformed),
        }
    }

    /// Reads a stream's PROXY header, if it starts with one, within
    /// `timeout`: the bytes of a header are consumed, anything else is left
    /// for the DNS (or TLS) reader.
    pub(crate) async fn stream(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<Origin, Discard> {
        match tokio::time::timeout(timeout, self.read_stream(stream, peer)).await {
            Ok(origin) => origin,
            Err(_) => Err(Discard::Malformed),
        }
    }

    async fn read_stream(&self, stream: &mut TcpStream, peer: SocketAddr) -> Result<Origin, Discard> {
        let mut start = [0u8; V1_MAX];
        // The first twelve bytes decide (a DNS message, its length and
        // header, or a TLS ClientHello is longer and never starts like a
        // PROXY header).
        let seen = peek_at_least(stream, &mut start, 12).await?;
        let v2 = start.starts_with(ppp::v2::PROTOCOL_PREFIX);
        let v1 = start.starts_with(b"PROXY ");
        if !v1 && !v2 {
            return Ok(Origin::Direct { header: 0 });
        }
        if !self.trusts(peer.ip()) {
            return Err(Discard::UntrustedProxy);
        }
        let length = if v2 {
            let fixed = peek_at_least(stream, &mut start, 16).await?;
            if fixed < 16 {
                return Err(Discard::Malformed);
            }
            16 + usize::from(u16::from_be_bytes([start[14], start[15]]))
        } else {
            // v1 ends at its CRLF, within 107 bytes.
            let mut seen = seen;
            loop {
                if let Some(end) = start[..seen].windows(2).position(|w| w == b"\r\n") {
                    break end + 2;
                }
                if seen == V1_MAX {
                    return Err(Discard::Malformed);
                }
                seen = peek_at_least(stream, &mut start, seen + 1).await?;
            }
        };
        let mut header = vec![0u8; length];
        stream.read_exact(&mut header).await.map_err(|_| Discard::Malformed)?;
        match HeaderResult::parse(&header) {
            HeaderResult::V2(Ok(parsed)) => v2_origin(&parsed),
            HeaderResult::V1(Ok(parsed)) => Ok(match parsed.addresses {
                ppp::v1::Addresses::Tcp4(a) => Origin::Relayed {
                    client: SocketAddr::new(a.source_address.into(), a.source_port),
                    header: length,
                },
                ppp::v1::Addresses::Tcp6(a) => Origin::Relayed {
                    client: SocketAddr::new(a.source_address.into(), a.source_port),
                    header: length,
                },
                ppp::v1::Addresses::Unknown => Origin::Direct { header: length },
            }),
            _ => Err(Discard::Malformed),
        }
    }
}

/// The origin a parsed v2 header names.
fn v2_origin(header: &ppp::v2::Header<'_>) -> Result<Origin, Discard> {
    let length = header.len();
    if header.command == ppp::v2::Command::Local {
        return Ok(Origin::Direct { header: length });
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Ok(Origin::Relayed {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            header: length,
        }),
        ppp::v2::Addresses::IPv6(a) => Ok(Origin::Relayed {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            header: length,
        }),
        ppp::v2::Addresses::Unspecified => Ok(Origin::Direct { header: length }),
        ppp::v2::Addresses::Unix(_) => Err(Discard::Malformed),
    }
}

/// Peeks into `buffer` until at least `wanted` bytes are there (or the
/// peer closed): how many are.
async fn peek_at_least(stream: &TcpStream, buffer: &mut [u8], wanted: usize) -> Result<usize, Discard> {
    let wanted = wanted.min(buffer.len());
    loop {
        let seen = stream.peek(buffer).await.map_err(|_| Discard::Malformed)?;
        if seen >= wanted || seen == 0 {
            return Ok(seen);
        }
        // More is on its way; peek returns at once while data is queued,
        // so wait a little instead of spinning.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(client: SocketAddr, proxy: SocketAddr) -> Vec<u8> {
        let mut header = Vec::from(ppp::v2::PROTOCOL_PREFIX);
        let (SocketAddr::V4(client), SocketAddr::V4(proxy)) = (client, proxy) else {
            panic!("IPv4 only here")
        };
        header.extend([0x21, 0x12, 0, 12]);
        header.extend(client.ip().octets());
        header.extend(proxy.ip().octets());
        header.extend(client.port().to_be_bytes());
        header.extend(proxy.port().to_be_bytes());
        header
    }

    #[test]
    fn a_trusted_v2_datagram_names_its_client_and_an_untrusted_one_is_dropped() {
        let trusted = TrustedProxies::new(&["127.0.0.1/32".parse().unwrap()]);
        let client: SocketAddr = "192.0.2.7:5353".parse().unwrap();
        let mut datagram = v2_header(client, "127.0.0.1:53".parse().unwrap());
        let header = datagram.len();
        datagram.extend([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            trusted.datagram(&datagram, proxy),
            Ok(Origin::Relayed { client, header })
        );
        let stranger: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        assert_eq!(trusted.datagram(&datagram, stranger), Err(Discard::UntrustedProxy));
        // A plain query from the proxy itself is its own.
        assert_eq!(
            trusted.datagram(&datagram[header..], proxy),
            Ok(Origin::Direct { header: 0 })
        );
        // A truncated header is malformed, not a query.
        assert_eq!(trusted.datagram(&datagram[..20], proxy), Err(Discard::Malformed));
    }
}
