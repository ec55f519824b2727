//! The query-log hook: the handler hands one [`QueryEvent`] per answered
//! query to a bounded queue and returns at once; a writer thread in the
//! binary drains it. When the queue is full the event is dropped and
//! counted, so a slow disk or collector can never slow answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use prometheus::IntCounter;

/// Why a query was answered the way it was, as far as the log needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedBlock {
    /// A list block: the list, its category and the EDE code.
    List {
        /// The list name.
        list: Arc<str>,
        /// The list's category, if any.
        category: Option<Arc<str>>,
        /// The RFC 8914 EDE code sent.
        ede: u16,
    },
    /// A policy block (bypass defence, blocked query type, rebinding).
    Policy(&'static str),
}

/// One answered query. The client address is the real one: anonymization
/// is the writer's job, off the hot path.
#[derive(Clone, Debug)]
pub struct QueryEvent {
    /// When the query arrived.
    pub time: SystemTime,
    /// When the response was sent.
    pub response_time: SystemTime,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The address the query arrived on, when known.
    pub server: Option<SocketAddr>,
    /// UDP (true) or TCP.
    pub datagram: bool,
    /// The query name in presentation form, lower case, no trailing dot.
    pub name: String,
    /// The query type code.
    pub qtype: u16,
    /// The query's message id.
    pub id: u16,
    /// The response code sent.
    pub rcode: u16,
    /// The client's profile.
    pub profile: Arc<str>,
    /// Set when the answer was a block.
    pub blocked: Option<LoggedBlock>,
}

/// The producer side, held by [`crate::Metrics`].
#[derive(Debug)]
pub(crate) struct QueryLogHook {
    sender: SyncSender<QueryEvent>,
    blocked_only: bool,
    queued: IntCounter,
    dropped: IntCounter,
}

impl QueryLogHook {
    pub(crate) fn new(
        capacity: usize,
        blocked_only: bool,
        queued: IntCounter,
        dropped: IntCounter,
    ) -> (Self, Receiver<QueryEvent>) {
        let (sender, receiver) = sync_channel(capacity.max(1));
        (
            Self {
                sender,
                blocked_only,
                queued,
                dropped,
            },
            receiver,
        )
    }

    pub(crate) fn wants(&self, blocked: bool) -> bool {
        blocked || !self.blocked_only
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub(crate) fn submit(&self, event: QueryEvent) {
        match self.sender.try_send(event) {
            Ok(()) => self.queued.inc(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
