//! End-to-end tests of the query log: JSON lines with anonymized clients
//! and `blocked_only`, and dnstap over a Frame Streams unix socket read back
//! by the real `dnstap-read` (Debian bind9-utils).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/querylog_e2e.toml");

const FILES: &[(&str, &str)] = &[("adult.txt", "blocked.example.test\n")];

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_log_is_anonymized_and_honours_blocked_only() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let config = format!(
        "{}format = \"json\"\nblocked_only = true\ndir = \"@DIR@/log\"\n",
        CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string())
    );
    let daemon = Daemon::start(&config, FILES);
    assert_eq!(
        status(&daemon.dig(&["+tcp", "-b", "127.0.0.77", "www.example.test", "A"])),
        "NOERROR"
    );
    assert_eq!(
        status(&daemon.dig(&["+tcp", "-b", "127.0.0.77", "blocked.example.test", "A"])),
        "NXDOMAIN"
    );
    let dir = daemon.path("log");
    let read = || {
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    wait_for("the blocked query in the log", || {
        read().contains("blocked.example.test")
    });
    let text = read();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "blocked_only logs only the block:\n{text}");
    let line = &lines[0];
    assert_eq!(line["client"], "127.0.0.0", "IPv4 truncated to /24: {line}");
    assert_eq!(line["name"], "blocked.example.test");
    assert_eq!(line["qtype"], "A");
    assert_eq!(line["rcode"], "NXDOMAIN");
    assert_eq!(line["profile"], "kids");
    assert_eq!(line["blocked"]["list"], "adult");
    assert_eq!(line["blocked"]["ede"], 17);
    assert!(!text.contains("127.0.0.77"), "{text}");
}

/// A Frame Streams control frame (escape, length, type, content type).
fn control(kind: u32) -> Vec<u8> {
    let content = b"protobuf:dnstap.Dnstap";
    let mut body = kind.to_be_bytes().to_vec();
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&(content.len() as u32).to_be_bytes());
    body.extend_from_slice(content);
    let mut frame = vec![0, 0, 0, 0];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn read_u32(stream: &mut impl Read) -> u32 {
    let mut word = [0u8; 4];
    stream.read_exact(&mut word).unwrap();
    u32::from_be_bytes(word)
}

#[test]
fn dnstap_stream_is_read_by_dnstap_read() {
    if !require(&[("dig", "bind9-dnsutils"), ("dnstap-read", "bind9-utils")]) {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dnstap.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // The collector: the receiving side of the bidirectional handshake
    // (READY → ACCEPT, START), then data frames, saved as a Frame Streams
    // file (START, frames, STOP) for dnstap-read.
    let collector = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_u32(&mut stream), 0);
        let length = read_u32(&mut stream) as usize;
        let mut ready = vec![0u8; length];
        stream.read_exact(&mut ready).unwrap();
        assert_eq!(&ready[..4], &4u32.to_be_bytes(), "READY first");
        stream.write_all(&control(1)).unwrap(); // ACCEPT
        assert_eq!(read_u32(&mut stream), 0);
        let length = read_u32(&mut stream) as usize;
        let mut start = vec![0u8; length];
        stream.read_exact(&mut start).unwrap();
        assert_eq!(&start[..4], &2u32.to_be_bytes(), "then START");
        let mut file = control(2);
        for _ in 0..2 {
            let length = read_u32(&mut stream);
            let mut frame = vec![0u8; length as usize];
            stream.read_exact(&mut frame).unwrap();
            file.extend_from_slice(&length.to_be_bytes());
            file.extend_from_slice(&frame);
        }
        // STOP carries no content type.
        file.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3]);
        file
    });
    let config = format!(
        "{}format = \"dnstap\"\ndnstap = \"unix:{}\"\n",
        CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string()),
        socket.display()
    );
    let daemon = Daemon::start(&config, FILES);
    assert_eq!(
        status(&daemon.dig(&["+tcp", "-b", "127.0.0.77", "www.example.test", "A"])),
        "NOERROR"
    );
    assert_eq!(
        status(&daemon.dig(&["+tcp", "-b", "127.0.0.77", "blocked.example.test", "AAAA"])),
        "NXDOMAIN"
    );
    let file = collector.join().unwrap();
    let path = daemon.path("capture.fstrm");
    std::fs::write(&path, file).unwrap();
    let output = Command::new("dnstap-read").arg("-y").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("www.example.test"), "{text}");
    assert!(text.contains("blocked.example.test"), "{text}");
    assert!(text.contains("type: CLIENT_RESPONSE"), "{text}");
    assert!(text.contains("query_address: \"127.0.0.0\""), "anonymized: {text}");
    assert!(!text.contains("127.0.0.77"), "{text}");
    assert!(text.contains("NXDOMAIN"), "{text}");
}
