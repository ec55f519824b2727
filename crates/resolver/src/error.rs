//! The resolver crate's error type.

use std::net::SocketAddr;

/// Errors starting or configuring the resolver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolverError {
    /// A configuration value is unusable.
    #[error("{key}: {reason}")]
    Config {
        /// The configuration key at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Binding a listen address failed.
    #[error("cannot listen on {address} ({protocol}): {cause}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// UDP or TCP.
        protocol: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Building the upstream failed.
    #[error("upstream: {reason}")]
    Upstream {
        /// Why.
        reason: String,
    },
    /// A listener's certificate or key cannot be used.
    #[error("server.listener: {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The server stopped with an error.
    #[error("server: {reason}")]
    Server {
        /// Why.
        reason: String,
    },
}
