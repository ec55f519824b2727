//! The query log (off by default): a writer thread drains the bounded queue
//! the handler feeds (see `shieldns_metrics::QueryEvent`) and writes either
//! JSON lines (one file per UTC day, older files removed after `retention`)
//! or dnstap over a Frame Streams socket (unix or TCP), so existing
//! collectors can read it.
//!
//! Client addresses are anonymized here, before anything is written:
//! truncated to /24 (IPv4) and /48 (IPv6) by default, or replaced by a keyed
//! hash whose key is random per start (so hashes cannot be joined across
//! restarts or with another operator's logs).
//!
//! dnstap framing is written by hand: the Dnstap message needs eight
//! protobuf fields (varints, fixed32s and byte strings) and Frame Streams
//! five control frames, both small and fully specified, and no maintained
//! crate offers the bidirectional handshake without a code generator.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use shieldns_metrics::{LoggedBlock, Metrics, QueryEvent};
use tracing::{info, warn};

/// `[query_log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryLogConfig {
    /// Off by default: a resolver for children logs nothing unless asked.
    #[serde(default)]
    pub(crate) enabled: bool,
    /// `json` (files in `dir`) or `dnstap` (to `dnstap`).
    #[serde(default)]
    pub(crate) format: LogFormat,
    /// Log blocked answers only.
    #[serde(default)]
    pub(crate) blocked_only: bool,
    /// `truncate` (/24, /48), `hash` (keyed, key random per start) or `off`.
    #[serde(default)]
    pub(crate) anonymize: Anonymize,
    /// Directory of the JSON files (relative: against the config file).
    #[serde(default = "default_dir")]
    pub(crate) dir: PathBuf,
    /// JSON files older than this are deleted.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub(crate) retention: Duration,
    /// dnstap destination: `unix:/path/to.sock` or `tcp:127.0.0.1:6000`.
    #[serde(default)]
    pub(crate) dnstap: Option<String>,
    /// Events waiting for the writer; beyond this they are dropped and
    /// counted (`shieldns_querylog_events_total{result="dropped"}`).
    #[serde(default = "default_queue")]
    pub(crate) queue: usize,
}

fn default_dir() -> PathBuf {
    PathBuf::from("query-log")
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_queue() -> usize {
    65_536
}

impl Default for QueryLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            format: LogFormat::default(),
            blocked_only: false,
            anonymize: Anonymize::default(),
            dir: default_dir(),
            retention: default_retention(),
            dnstap: None,
            queue: default_queue(),
        }
    }
}

/// `query_log.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// JSON lines.
    #[default]
    Json,
    /// dnstap over Frame Streams.
    Dnstap,
}

/// `query_log.anonymize`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Anonymize {
    /// IPv4 to /24, IPv6 to /48.
    #[default]
    Truncate,
    /// A keyed SHA-256 of the address (an IPv6-shaped value for dnstap).
    Hash,
    /// The real address (only where the law requires it).
    Off,
}

/// Starts the writer if the log is on.
pub(crate) fn start(config: &QueryLogConfig, base_dir: &Path, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    if !config.enabled {
        return Ok(());
    }
    let sink = match config.format {
        LogFormat::Json => {
            let dir = base_dir.join(&config.dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("query_log.dir: cannot create {}", dir.display()))?;
            Sink::Json {
                dir,
                retention: config.retention,
                day: String::new(),
                file: None,
            }
        }
        LogFormat::Dnstap => {
            let Some(target) = config.dnstap.clone() else {
                bail!("query_log.format = \"dnstap\" needs query_log.dnstap (unix:/path or tcp:host:port)");
            };
            if !(target.starts_with("unix:") || target.starts_with("tcp:")) {
                bail!("query_log.dnstap = {target:?}: expected unix:/path or tcp:host:port");
            }
            Sink::Dnstap { target, stream: None }
        }
    };
    let receiver = metrics.attach_query_log(config.queue, config.blocked_only)?;
    let writer = Writer {
        sink,
        anonymize: config.anonymize,
        key: rand::random(),
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("query-log".into())
        .spawn(move || writer.run(&receiver))
        .context("cannot start the query-log writer")?;
    info!(format = ?config.format, anonymize = ?config.anonymize, "query log on");
    Ok(())
}

struct Writer {
    sink: Sink,
    anonymize: Anonymize,
    key: [u8; 32],
    metrics: Arc<Metrics>,
}

enum Sink {
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

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

impl Writer {
    fn run(mut self, receiver: &Receiver<QueryEvent>) {
        loop {
            match receiver.recv_timeout(Duration::from_secs(1)) {
                Ok(event) => {
                    let mut written = u64::from(self.write(&event));
                    // Drain what is queued, then flush once.
                    for event in receiver.try_iter().take(4096) {
                        written += u64::from(self.write(&event));
                    }
                    self.flush();
                    self.metrics.log_written(written);
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
            Sink::Dnstap { target, stream } => write_dnstap(target, stream, event, client),
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
pub(crate) fn anonymize(address: IpAddr, how: Anonymize, key: &[u8; 32]) -> IpAddr {
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
        "protocol": if event.datagram { "udp" } else { "tcp" },
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

/// The Frame Streams content type of dnstap.
const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";
const FSTRM_ACCEPT: u32 = 1;
const FSTRM_START: u32 = 2;
const FSTRM_STOP: u32 = 3;
const FSTRM_READY: u32 = 4;
const FSTRM_FIELD_CONTENT_TYPE: u32 = 1;

/// A Frame Streams control frame: escape, length, type, content-type field.
pub(crate) fn control_frame(kind: u32, with_content_type: bool) -> Vec<u8> {
    let mut body = kind.to_be_bytes().to_vec();
    if with_content_type {
        body.extend_from_slice(&FSTRM_FIELD_CONTENT_TYPE.to_be_bytes());
        body.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
        body.extend_from_slice(CONTENT_TYPE);
    }
    let mut frame = 0u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads one control frame and returns its type.
fn read_control(stream: &mut dyn ReadWrite) -> std::io::Result<u32> {
    let mut word = [0u8; 4];
    stream.read_exact(&mut word)?;
    if word != [0; 4] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "expected a control frame",
        ));
    }
    stream.read_exact(&mut word)?;
    let length = u32::from_be_bytes(word) as usize;
    if !(4..=512).contains(&length) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad control frame length",
        ));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    let kind = body
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    Ok(kind)
}

/// Connects and runs the bidirectional handshake: READY → ACCEPT → START.
fn connect(target: &str) -> std::io::Result<Box<dyn ReadWrite>> {
    let mut stream: Box<dyn ReadWrite> = if let Some(path) = target.strip_prefix("unix:") {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Box::new(stream)
    } else {
        let address = target.strip_prefix("tcp:").unwrap_or(target);
        let stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Box::new(stream)
    };
    stream.write_all(&control_frame(FSTRM_READY, true))?;
    stream.flush()?;
    if read_control(&mut *stream)? != FSTRM_ACCEPT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "collector did not ACCEPT",
        ));
    }
    stream.write_all(&control_frame(FSTRM_START, true))?;
    Ok(stream)
}

fn write_dnstap(
    target: &str,
    stream: &mut Option<Box<dyn ReadWrite>>,
    event: &QueryEvent,
    client: IpAddr,
) -> std::io::Result<()> {
    if stream.is_none() {
        *stream = Some(connect(target)?);
    }
    let payload = dnstap_message(event, client);
    let Some(connected) = stream else { return Ok(()) };
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let result = connected.write_all(&frame);
    if result.is_err() {
        // Reconnect on the next event.
        *stream = None;
    }
    result
}

/// Ends a dnstap stream politely (STOP); used by tests and shutdown paths.
#[allow(dead_code)]
pub(crate) fn stop_frame() -> Vec<u8> {
    control_frame(FSTRM_STOP, false)
}

/// Protobuf encoding helpers (proto2 wire format).
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u32, value: u64) {
    varint(out, u64::from(field) << 3);
    varint(out, value);
}

fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A `Dnstap { type: MESSAGE, message: CLIENT_RESPONSE }` with the query and
/// a response carrying the query section and rcode.
pub(crate) fn dnstap_message(event: &QueryEvent, client: IpAddr) -> Vec<u8> {
    let (query_wire, response_wire) = wire_messages(event);
    let mut message = Vec::with_capacity(128 + query_wire.len() + response_wire.len());
    field_varint(&mut message, 1, 6); // CLIENT_RESPONSE
    field_varint(&mut message, 2, if client.is_ipv4() { 1 } else { 2 });
    field_varint(&mut message, 3, if event.datagram { 1 } else { 2 });
    match client {
        IpAddr::V4(v4) => field_bytes(&mut message, 4, &v4.octets()),
        IpAddr::V6(v6) => field_bytes(&mut message, 4, &v6.octets()),
    }
    field_varint(&mut message, 6, u64::from(event.client.port()));
    let (query_sec, query_nsec) = split_time(event.time);
    field_varint(&mut message, 8, query_sec);
    field_fixed32(&mut message, 9, query_nsec);
    field_bytes(&mut message, 10, &query_wire);
    let (response_sec, response_nsec) = split_time(event.response_time);
    field_varint(&mut message, 12, response_sec);
    field_fixed32(&mut message, 13, response_nsec);
    field_bytes(&mut message, 14, &response_wire);
    let mut dnstap = Vec::with_capacity(message.len() + 32);
    field_bytes(&mut dnstap, 1, b"shieldns");
    field_bytes(&mut dnstap, 2, env!("CARGO_PKG_VERSION").as_bytes());
    field_bytes(&mut dnstap, 14, &message);
    field_varint(&mut dnstap, 15, 1); // MESSAGE
    dnstap
}

fn split_time(time: SystemTime) -> (u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs(), since.subsec_nanos())
}

/// The query and response as DNS wire messages (the response without
/// records: the log says what was decided, not what was answered).
fn wire_messages(event: &QueryEvent) -> (Vec<u8>, Vec<u8>) {
    let name = Name::from_ascii(if event.name.is_empty() { "." } else { &event.name }).unwrap_or_default();
    let query = Query::query(name, RecordType::from(event.qtype));
    let mut request = Message::new(event.id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(query.clone());
    let mut response = Message::new(event.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = true;
    response.metadata.recursion_available = true;
    response.metadata.response_code = ResponseCode::from(0, (event.rcode & 0xff) as u8);
    response.add_query(query);
    (
        request.to_vec().unwrap_or_default(),
        response.to_vec().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn control_frames_follow_frame_streams() {
        let ready = control_frame(FSTRM_READY, true);
        assert_eq!(&ready[..4], &[0, 0, 0, 0]);
        let length = u32::from_be_bytes([ready[4], ready[5], ready[6], ready[7]]) as usize;
        assert_eq!(length, ready.len() - 8);
        assert_eq!(&ready[8..12], &FSTRM_READY.to_be_bytes());
        assert!(ready.ends_with(CONTENT_TYPE));
    }
}
