//! shieldns-resolver: the DNS hot path.
//!
//! hickory-server owns the sockets and the wire protocol; this crate's
//! [`handler`] decides each query: access list, client profile, one lookup
//! in the blocklist [`shieldns_index::Snapshot`] (a single `ArcSwap` load per
//! query), then either a block answer (with an RFC 8914 Extended DNS Error
//! naming the list) or an answer from the cache or the upstream (recursion
//! from the root, or forwarding), checked against answer-IP rules.
//!
//! Key design decision: policy runs before the cache, and the cache is
//! shared by all profiles. A reload that blocks a name therefore takes
//! effect on the next query even when the name is cached, and the cache
//! never needs flushing on reload.

mod answer;
mod cache;
pub mod config;
mod discard;
mod doh;
mod doq;
mod error;
mod failure_log;
mod fastpath;
mod handler;
mod listener_caps;
mod packet_cache;
mod proxy;
mod ratelimit;
mod resolved;
mod server;
mod stream_cache;
mod tally;
mod tcp;
mod tls;
mod udp;
mod unbound;
mod upstream;
mod wire;

pub use config::{
    CacheConfig, EncryptedProtocol, ListenerConfig, RateLimitConfig, ServerConfig, UnknownClientId, UpstreamConfig,
    UpstreamEngine, UpstreamMode,
};
pub use error::ResolverError;
pub use handler::{Clock, ShieldHandler};
pub use server::{RunningResolver, start};

/// Checks `[upstream]` and `[cache]` as `start` would apply them to the
/// engine (libunbound options, root hints and trust anchor files), without
/// binding or resolving anything.
pub fn check_upstream(upstream: &UpstreamConfig, cache: &CacheConfig) -> Result<(), ResolverError> {
    upstream::Upstream::check(upstream, cache)
}

/// Checks every `[[server.listener]]` as `start` would set it up (the
/// certificate chain and key read, parsed and matched), without binding.
pub fn check_listeners(server: &ServerConfig) -> Result<(), ResolverError> {
    for listener in &server.listeners {
        tls::Encrypted::new(listener)?;
    }
    Ok(())
}
