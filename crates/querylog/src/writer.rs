//! The writer thread: anonymizes each event's client and writes it as a
//! JSON line or hands it to the dnstap stream ([`crate::dnstap`]).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::RecordType;
use prometheus::IntCounter;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::dnstap::{self, ReadWrite};
use crate::{Anonymize, LoggedBlock, QueryEvent};

/// The writer thread's state.
pub(crate) struct Writer {
    sink: Sink,
    anonymize: Anonymize,
    /// The anonymization hash key, random per start.
    key: [u8; 32],
    written: IntCounter,
}

/// Where events go.
pub(crate) enum Sink {
    Json {
        dir: PathBuf,
        retention: Duration,
        day: String,
        file: Option<std::io::BufWriter<std::fs::File>>,
    },
    Dnstap {
        target: String,
        stream: Option<Box<dyn ReadWrite>>,
    },
}

impl Sink {
    pub(crate) fn json(dir: PathBuf, retention: Duration) -> Self {
        Self::Json {
            dir,
            retention,
            day: String::new(),
            file: None,
        }
    }

    pub(crate) fn dnstap(target: String) -> Self {
        Self::Dnstap { target, stream: None }
    }
}

impl Writer {
    pub(crate) fn new(sink: Sink, anonymize: Anonymize, written: IntCounter) -> Self {
        Self {
            sink,
            anonymize,
            key: rand::random(),
            written,
        }
    }

    /// Drains `receiver` until every sender is gone.
    pub(crate) fn run(mut self, receiver: &Receiver<QueryEvent>) {
        loop {
            match receiver.recv_timeout(Duration::from_secs(1)) {
                Ok(event) => {
                    let mut written = u64::from(self.write(&event));
                    // Drain what is queued, then flush once.
                    for event in receiver.try_iter().take(4096) {
                        written += u64::from(self.write(&event));
                    }
                    self.flush();
                    self.written.inc_by(written);
                }
                Err(RecvTimeoutError::Timeout) => self.flush(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    fn anonymized(&self, address: IpAddr) -> IpAddr {
        anonymize(address, self.anonymize, &self.key)
    }

    fn write(&mut self, event: &QueryEvent) -> bool {
        let client = self.anonymized(event.client.ip());
        let result = match &mut self.sink {
            Sink::Json {
                dir,
                retention,
                day,
                file,
            } => write_json(dir, *retention, day, file, event, client),
            Sink::Dnstap { target, stream } => dnstap::write(target, stream, event, client),
        };
        match result {
            Ok(()) => true,
            Err(error) => {
                warn!(%error, "query log: write failed; event dropped");
                false
            }
        }
    }

    fn flush(&mut self) {
        let result = match &mut self.sink {
            Sink::Json { file: Some(file), .. } => file.flush(),
            Sink::Dnstap {
                stream: Some(stream), ..
            } => stream.flush(),
            _ => Ok(()),
        };
        if let Err(error) = result {
            warn!(%error, "query log: flush failed");
            if let Sink::Dnstap { stream, .. } = &mut self.sink {
                *stream = None;
            }
        }
    }
}

/// Truncates or hashes a client address.
pub fn anonymize(address: IpAddr, how: Anonymize, key: &[u8; 32]) -> IpAddr {
    match (how, address) {
        (Anonymize::Off, _) => address,
        (Anonymize::Truncate, IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        (Anonymize::Truncate, IpAddr::V6(v6)) => {
            let mut octets = v6.octets();
            for byte in octets.iter_mut().skip(6) {
                *byte = 0;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (Anonymize::Hash, _) => {
            let mut hasher = Sha256::new();
            hasher.update(key);
            match address {
                IpAddr::V4(v4) => hasher.update(v4.octets()),
                IpAddr::V6(v6) => hasher.update(v6.octets()),
            }
            let digest = hasher.finalize();
            let mut octets = [0u8; 16];
            for (to, from) in octets.iter_mut().zip(digest.iter()) {
                *to = *from;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn write_json(
    dir: &Path,
    retention: Duration,
    day: &mut String,
    file: &mut Option<std::io::BufWriter<std::fs::File>>,
    event: &QueryEvent,
    client: IpAddr,
) -> std::io::Result<()> {
    let stamp = rfc3339(event.time);
    let today = stamp.get(..10).unwrap_or_default();
    if file.is_none() || day != today {
        if let Some(mut old) = file.take() {
            old.flush()?;
        }
        today.clone_into(day);
        let path = dir.join(format!("queries-{today}.jsonl"));
        *file = Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new().create(true).append(true).open(path)?,
        ));
        prune(dir, retention);
    }
    let blocked = match &event.blocked {
        None => serde_json::Value::Null,
        Some(LoggedBlock::List { list, category, ede }) => {
            json!({"list": &**list, "category": category.as_deref(), "ede": ede})
        }
        Some(LoggedBlock::Policy(policy)) => json!({"policy": policy}),
    };
    let line = json!({
        "time": stamp,
        "client": client.to_string(),
        "protocol": event.protocol,
        "client_id": event.client_id.as_deref(),
        "name": event.name,
        "qtype": RecordType::from(event.qtype).to_string(),
        "rcode": rcode_name(event.rcode),
        "profile": &*event.profile,
        "blocked": blocked,
        "duration_ms": event.response_time.duration_since(event.time).unwrap_or_default().as_secs_f64() * 1000.0,
    });
    match file {
        Some(file) => writeln!(file, "{line}"),
        None => Ok(()),
    }
}

/// The rcode mnemonic dig and dnstap-read print.
fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// Deletes `queries-*.jsonl` files whose modification is older than the
/// retention.
fn prune(dir: &Path, retention: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let cutoff = SystemTime::now().checked_sub(retention).unwrap_or(UNIX_EPOCH);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("queries-") && name.ends_with(".jsonl")) {
            continue;
        }
        if entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified < cutoff)
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            warn!(%error, file = %name, "query log: cannot remove an expired file");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn truncates_and_hashes_addresses() {
        let key = [7u8; 32];
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:1234:5678::1".parse().unwrap();
        assert_eq!(anonymize(v4, Anonymize::Truncate, &key).to_string(), "203.0.113.0");
        assert_eq!(anonymize(v6, Anonymize::Truncate, &key).to_string(), "2001:db8:1234::");
        let hashed = anonymize(v4, Anonymize::Hash, &key);
        assert_ne!(hashed, v4);
        assert_eq!(hashed, anonymize(v4, Anonymize::Hash, &key));
        assert_ne!(hashed, anonymize(v4, Anonymize::Hash, &[8u8; 32]));
        assert_eq!(anonymize(v4, Anonymize::Off, &key), v4);
    }
}
