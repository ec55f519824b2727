//! dnstap over Frame Streams.
//!
//! The Dnstap protobuf message is encoded by `prost` from the schema's
//! fields transcribed below (the eight of `Message` shieldns fills and the
//! four of `Dnstap`; tags and types from dnstap.proto), so no code
//! generator or `protoc` is needed at build time. Frame Streams (five
//! control frames, a length-prefixed data frame) is written here: the only
//! Rust implementation (`framestream`, 2020) has no bidirectional
//! handshake, and the `dnstap` crate brings its own mio 0.6 writer thread.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message as DnsMessage, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use prost::Message as _;

use crate::QueryEvent;

/// A stream to a dnstap collector.
pub(crate) trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// `dnstap.Dnstap` (the fields shieldns sends).
#[derive(Clone, PartialEq, prost::Message)]
struct Dnstap {
    #[prost(bytes = "vec", optional, tag = "1")]
    identity: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    version: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    message: Option<Message>,
    /// `Dnstap.Type`: 1 is MESSAGE.
    #[prost(int32, required, tag = "15")]
    kind: i32,
}

/// `dnstap.Message` (the fields shieldns fills).
#[derive(Clone, PartialEq, prost::Message)]
struct Message {
    /// `Message.Type`: 6 is CLIENT_RESPONSE.
    #[prost(int32, required, tag = "1")]
    kind: i32,
    /// `SocketFamily`: 1 INET, 2 INET6.
    #[prost(int32, optional, tag = "2")]
    socket_family: Option<i32>,
    /// `SocketProtocol`: 1 UDP, 2 TCP, 3 DOT, 4 DOH, 7 DOQ.
    #[prost(int32, optional, tag = "3")]
    socket_protocol: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    query_address: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "6")]
    query_port: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    query_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "9")]
    query_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "10")]
    query_message: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "12")]
    response_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "13")]
    response_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "14")]
    response_message: Option<Vec<u8>>,
}

/// A `Dnstap { type: MESSAGE, message: CLIENT_RESPONSE }` with the query and
/// a response carrying the query section and rcode.
fn message(event: &QueryEvent, client: IpAddr) -> Dnstap {
    let (query_wire, response_wire) = wire_messages(event);
    let (query_sec, query_nsec) = split_time(event.time);
    let (response_sec, response_nsec) = split_time(event.response_time);
    let message = Message {
        kind: 6,
        socket_family: Some(if client.is_ipv4() { 1 } else { 2 }),
        socket_protocol: Some(socket_protocol(event.protocol)),
        query_address: Some(match client {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }),
        query_port: Some(u32::from(event.client.port())),
        query_time_sec: Some(query_sec),
        query_time_nsec: Some(query_nsec),
        query_message: Some(query_wire),
        response_time_sec: Some(response_sec),
        response_time_nsec: Some(response_nsec),
        response_message: Some(response_wire),
    };
    Dnstap {
        identity: Some(b"shieldns".to_vec()),
        version: Some(env!("CARGO_PKG_VERSION").as_bytes().to_vec()),
        message: Some(message),
        kind: 1,
    }
}

/// The Frame Streams content type of dnstap.
const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";
const FSTRM_ACCEPT: u32 = 1;
const FSTRM_START: u32 = 2;
const FSTRM_READY: u32 = 4;
const FSTRM_FIELD_CONTENT_TYPE: u32 = 1;

/// A Frame Streams control frame: escape, length, type, content-type field.
fn control_frame(kind: u32, with_content_type: bool) -> Vec<u8> {
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

/// Writes one event, connecting first when there is no stream.
pub(crate) fn write(
    target: &str,
    stream: &mut Option<Box<dyn ReadWrite>>,
    event: &QueryEvent,
    client: IpAddr,
) -> std::io::Result<()> {
    if stream.is_none() {
        *stream = Some(connect(target)?);
    }
    let payload = message(event, client).encode_to_vec();
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

/// dnstap's `SocketProtocol` for a transport label.
fn socket_protocol(protocol: &str) -> i32 {
    match protocol {
        "udp" => 1,
        "dot" => 3,
        "doh" => 4,
        "doq" => 7,
        _ => 2,
    }
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
    let mut request = DnsMessage::new(event.id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(query.clone());
    let mut response = DnsMessage::new(event.id, MessageType::Response, OpCode::Query);
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
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    #[test]
    fn control_frames_follow_frame_streams() {
        let ready = control_frame(FSTRM_READY, true);
        assert_eq!(&ready[..4], &[0, 0, 0, 0]);
        let length = u32::from_be_bytes([ready[4], ready[5], ready[6], ready[7]]) as usize;
        assert_eq!(length, ready.len() - 8);
        assert_eq!(&ready[8..12], &FSTRM_READY.to_be_bytes());
        assert!(ready.ends_with(CONTENT_TYPE));
    }

    #[test]
    fn a_message_decodes_back_with_its_query() {
        let event = QueryEvent {
            time: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            response_time: UNIX_EPOCH + Duration::new(1_700_000_001, 7),
            client: "192.0.2.7:5353".parse().unwrap(),
            server: None,
            protocol: "tcp",
            client_id: None,
            name: "www.example.com".into(),
            qtype: 28,
            id: 77,
            rcode: 3,
            profile: Arc::from("default"),
            blocked: None,
        };
        let bytes = message(&event, "192.0.2.0".parse().unwrap()).encode_to_vec();
        let decoded = Dnstap::decode(bytes.as_slice()).unwrap();
        assert_eq!((decoded.kind, decoded.identity.as_deref()), (1, Some(&b"shieldns"[..])));
        let message = decoded.message.unwrap();
        assert_eq!(
            (message.kind, message.socket_protocol, message.query_port),
            (6, Some(2), Some(5353))
        );
        assert_eq!(message.query_address.as_deref(), Some(&[192, 0, 2, 0][..]));
        assert_eq!(
            (message.query_time_sec, message.query_time_nsec),
            (Some(1_700_000_000), Some(5))
        );
        let response = DnsMessage::from_vec(&message.response_message.unwrap()).unwrap();
        assert_eq!(response.metadata.id, 77);
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(response.queries[0].name().to_ascii(), "www.example.com.");
    }
}
