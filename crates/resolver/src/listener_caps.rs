//! One encrypted listener's own caps: its connections and its TLS
//! handshakes in progress, in total and per client prefix.
//!
//! Key design decision: counted beside the caps every TCP listener shares
//! ([`crate::tcp::Shared::admit`]: the access list, a total, a cap per
//! address), not instead of them, and checked at accept, before a byte of
//! the handshake is read. A handshake costs a key exchange and a
//! certificate signature, several thousand times a query, so the number in
//! progress is bounded on its own: a flood of them (or a slow client
//! holding one open to its timeout) is closed and counted, and never
//! starves the connections already open. Prefixes, not addresses, because
//! one attacker holds a whole /24 or /56; one mutex over one map, whose
//! entries leave at zero, so it never holds more prefixes than there are
//! open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;
use shieldns_metrics::Discard;

use crate::config::ListenerConfig;
use crate::ratelimit::client_prefix;

/// A listener's caps, from its `[[server.listener]]` table.
#[derive(Debug)]
pub(crate) struct ListenerCaps {
    limits: Limits,
    held: Mutex<Held>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    connections: usize,
    connections_per_prefix: usize,
    handshakes: usize,
    handshakes_per_prefix: usize,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

/// What is held now: in total, and by each prefix holding anything.
#[derive(Debug, Default)]
struct Held {
    total: Counts,
    prefixes: HashMap<IpNet, Counts>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
}

/// An admitted connection's place under its listener's caps, given back
/// when it closes.
#[derive(Debug)]
pub(crate) struct Connection {
    caps: Arc<ListenerCaps>,
    prefix: IpNet,
}

/// An admitted connection's handshake place, given back once the handshake
/// ended (done, failed or timed out).
#[derive(Debug)]
pub(crate) struct Handshake {
    caps: Arc<ListenerCaps>,
    prefix: IpNet,
}

impl ListenerCaps {
    /// The caps of `config` (each at least 1 and each prefix length
    /// within its family, as the config's parser checked).
    pub(crate) fn new(config: &ListenerConfig) -> Self {
        Self {
            limits: Limits {
                connections: config.max_connections.unwrap_or(usize::MAX),
                connections_per_prefix: config.max_connections_per_prefix,
                handshakes: config.max_handshakes,
                handshakes_per_prefix: config.max_handshakes_per_prefix,
                ipv4_prefix: config.ipv4_prefix,
                ipv6_prefix: config.ipv6_prefix,
            },
            held: Mutex::new(Held::default()),
        }
    }

    /// Admits a new connection from `client` (canonical: an IPv4 client
    /// never in its mapped IPv6 form) with its handshake, or says which cap
    /// it is over.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<(Connection, Handshake), Discard> {
        let prefix = self.prefix(client);
        let limits = self.limits;
        // A poisoned lock (a panic while it was held, which the code below
        // cannot raise) still holds consistent counts.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let Held { total, prefixes } = &mut *held;
        let mine = prefixes.get(&prefix).copied().unwrap_or_default();
        if total.connections >= limits.connections {
            return Err(Discard::ListenerConnectionLimit);
        }
        if mine.connections >= limits.connections_per_prefix {
            return Err(Discard::PrefixConnectionLimit);
        }
        if total.handshakes >= limits.handshakes {
            return Err(Discard::HandshakeLimit);
        }
        if mine.handshakes >= limits.handshakes_per_prefix {
            return Err(Discard::PrefixHandshakeLimit);
        }
        total.connections += 1;
        total.handshakes += 1;
        let mine = prefixes.entry(prefix).or_default();
        mine.connections += 1;
        mine.handshakes += 1;
        Ok((
            Connection {
                caps: self.clone(),
                prefix,
            },
            Handshake {
                caps: self.clone(),
                prefix,
            },
        ))
    }

    /// The network `client` is grouped into (the config's parser checked
    /// the prefix lengths against the family's width).
    fn prefix(&self, client: IpAddr) -> IpNet {
        client_prefix(client, self.limits.ipv4_prefix, self.limits.ipv6_prefix)
    }

    /// Gives back one place of the kind `take` picks.
    fn release(&self, prefix: &IpNet, take: fn(&mut Counts) -> &mut usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let Held { total, prefixes } = &mut *held;
        let count = take(total);
        *count = count.saturating_sub(1);
        if let Some(mine) = prefixes.get_mut(prefix) {
            let count = take(mine);
            *count = count.saturating_sub(1);
            if mine.connections == 0 && mine.handshakes == 0 {
                prefixes.remove(prefix);
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.caps.release(&self.prefix, |counts| &mut counts.connections);
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.caps.release(&self.prefix, |counts| &mut counts.handshakes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(extra: &str) -> Arc<ListenerCaps> {
        let config: ListenerConfig = toml::from_str(&format!(
            "protocol = \"dot\"\naddress = \"127.0.0.1:853\"\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n{extra}"
        ))
        .unwrap();
        Arc::new(ListenerCaps::new(&config))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn handshakes_are_capped_per_prefix_and_in_total_until_they_end() {
        let caps = caps("max_handshakes = 3\nmax_handshakes_per_prefix = 2\n");
        let a = caps.admit(ip("192.0.2.1")).unwrap();
        let b = caps.admit(ip("192.0.2.200")).unwrap();
        // The same /24: its two handshakes are in progress.
        assert_eq!(caps.admit(ip("192.0.2.9")).unwrap_err(), Discard::PrefixHandshakeLimit);
        let c = caps.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(caps.admit(ip("203.0.113.1")).unwrap_err(), Discard::HandshakeLimit);
        // A handshake that ended frees its places; the connection stays.
        drop(a.1);
        let d = caps.admit(ip("192.0.2.9")).unwrap();
        drop((b, c, d));
        assert!(
            caps.held
                .lock()
                .unwrap()
                .prefixes
                .contains_key(&"192.0.2.0/24".parse().unwrap())
        );
        drop(a.0);
        assert!(
            caps.held.lock().unwrap().prefixes.is_empty(),
            "a prefix holding nothing leaves"
        );
    }

    #[test]
    fn connections_are_capped_per_prefix_and_in_total() {
        let caps = caps("max_connections = 3\nmax_connections_per_prefix = 2\nipv6_prefix = 48\n");
        let open: Vec<_> = ["2001:db8:1:1::1", "2001:db8:1:2::1"]
            .into_iter()
            .map(|client| caps.admit(ip(client)).unwrap().0)
            .collect();
        assert_eq!(
            caps.admit(ip("2001:db8:1:ffff::1")).unwrap_err(),
            Discard::PrefixConnectionLimit
        );
        let other = caps.admit(ip("2001:db8:2::1")).unwrap();
        assert_eq!(
            caps.admit(ip("192.0.2.1")).unwrap_err(),
            Discard::ListenerConnectionLimit
        );
        drop(other);
        assert!(caps.admit(ip("192.0.2.1")).is_ok());
        drop(open);
    }

    #[test]
    fn a_zero_cap_or_an_impossible_prefix_is_an_error_naming_the_key_and_line() {
        for (extra, key) in [
            ("max_handshakes = 0", "max_handshakes"),
            ("max_connections = 0", "max_connections"),
            ("max_handshakes_per_prefix = 0", "max_handshakes_per_prefix"),
            ("ipv4_prefix = 33", "ipv4_prefix"),
            ("ipv6_prefix = 0", "ipv6_prefix"),
        ] {
            let error = toml::from_str::<ListenerConfig>(&format!(
                "protocol = \"doh\"\naddress = \"127.0.0.1:443\"\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n{extra}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(error.contains("line 5") && error.contains(key), "{extra}: {error}");
        }
    }
}
