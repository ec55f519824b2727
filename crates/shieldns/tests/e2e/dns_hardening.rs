//! End-to-end tests of hostile and odd input against `shieldns run`: what a
//! refused source gets, responses that must never be answered (not even
//! between two instances), and DNS over TCP's caps and pipelining.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, free_port, require, scrape, status};
use shieldns_test_support::upstream::FakeUpstream;

/// Forward mode to a fake upstream; only 127.0.0.0/25 is allowed, so
/// 127.0.0.200 is a refused source.
const CONFIG: &str = include_str!("fixtures/dns_hardening.toml");

const FILES: &[(&str, &str)] = &[("adult.txt", "blocked.example.test\n")];

struct Setup {
    daemon: Daemon,
    upstream: FakeUpstream,
    metrics: u16,
}

fn start(udp_sockets: usize) -> Setup {
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let metrics = free_port("127.0.0.1");
    let config = CONFIG
        .replace("@UPSTREAM@", &upstream.addr.to_string())
        .replace("@METRICS@", &metrics.to_string())
        .replace("@UDP_SOCKETS@", &udp_sockets.to_string());
    Setup {
        daemon: Daemon::start(&config, FILES),
        upstream,
        metrics,
    }
}

fn skip() -> bool {
    !require(&[("dig", "bind9-dnsutils")])
}

/// A query for `name` (dotted, no trailing dot) with `id`, RD set, with an
/// EDNS OPT record when `edns`.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.') {
        packet.push(u8::try_from(label.len()).unwrap());
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    if edns {
        packet.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    packet
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn udp_from(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    socket
}

fn reply(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 4096];
    socket
        .recv_from(&mut buffer)
        .ok()
        .map(|(len, _)| buffer[..len].to_vec())
}

#[test]
fn refused_sources_get_a_small_refused_or_nothing() {
    if skip() {
        return;
    }
    let setup = start(1);
    let daemon = &setup.daemon;
    let outsider = udp_from("127.0.0.200");

    // A readable query: REFUSED, its question echoed, no EDNS, never larger
    // than the query, and nothing asked upstream.
    let asked = query(0x4242, "www.example.test", 1, true);
    outsider.send_to(&asked, daemon.addr).unwrap();
    let answer = reply(&outsider).expect("a readable query from a refused source gets REFUSED");
    assert_eq!(&answer[..2], &[0x42, 0x42]);
    assert_eq!(answer[2] & 0x80, 0x80, "a response");
    assert_eq!(answer[3] & 0x0f, 5, "REFUSED");
    assert!(answer.len() <= asked.len(), "{} > {}", answer.len(), asked.len());
    assert_eq!(&answer[6..12], &[0, 0, 0, 0, 0, 0], "no records, no OPT");
    // The same for the odd opcodes and flags that used to tell more
    // (NOTIFY, EDNS version 1, garbage): nothing.
    let mut notify = query(1, "www.example.test", 6, false);
    notify[2] = 0x20;
    let mut badvers = query(2, "www.example.test", 1, true);
    let opt = badvers.len() - 11;
    badvers[opt + 6] = 1;
    let garbage: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37) | 0x40).collect();
    for packet in [notify, garbage, vec![0x12, 0x34, 0x01]] {
        outsider.send_to(&packet, daemon.addr).unwrap();
        assert_eq!(reply(&outsider), None, "answered {packet:?}");
    }
    // BADVERS from a refused source is just REFUSED.
    outsider.send_to(&badvers, daemon.addr).unwrap();
    assert_eq!(reply(&outsider).map(|a| a[3] & 0x0f), Some(5));

    // Over TCP, a refused source's connection is closed before it is read.
    let mut stream = tcp_from("127.0.0.200", daemon.addr);
    let mut byte = [0u8; 1];
    assert!(
        matches!(stream.read(&mut byte), Ok(0) | Err(_)),
        "a refused source's TCP connection stays open"
    );

    // An allowed client's malformed query is answered FORMERR; one without a
    // whole header is not answered.
    let insider = udp_from("127.0.0.1");
    let mut two_questions = query(7, "a.test", 1, false);
    two_questions[5] = 2;
    insider.send_to(&two_questions, daemon.addr).unwrap();
    assert_eq!(reply(&insider).map(|a| a[3] & 0x0f), Some(1), "FORMERR");
    insider.send_to(&[0x12, 0x34, 0x01, 0x00], daemon.addr).unwrap();
    assert_eq!(reply(&insider), None);

    assert_eq!(
        setup.upstream.queries.load(Ordering::Relaxed),
        0,
        "nothing reached the upstream"
    );
    let text = scrape(setup.metrics);
    assert_eq!(metric(&text, "shieldns_acl_refused_total"), 2, "{text}");
    for (reason, count) in [("not_allowed", 2), ("malformed", 3), ("tcp_not_allowed", 1)] {
        let name = format!("shieldns_resolver_discarded_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &name), count, "{name} in:\n{text}");
    }
    // The metrics endpoint serves only the sources `metrics.allow` lists.
    let mut scraper = tcp_from("127.0.0.100", SocketAddr::from(([127, 0, 0, 1], setup.metrics)));
    let _ = scraper.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = scraper.read_to_string(&mut body);
    assert_eq!(body, "", "metrics.allow excludes 127.0.0.100");
    // Logged once per kind, with a count, not once per packet.
    let log = daemon.log_text();
    assert_eq!(log.matches("malformed queries:").count(), 1, "{log}");
    assert_eq!(status(&daemon.dig(&["www.example.test", "A"])), "NOERROR");
}

fn tcp_from(ip: &str, to: SocketAddr) -> TcpStream {
    try_tcp_from(ip, to).unwrap()
}

fn try_tcp_from(ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: std::net::IpAddr = ip.parse().map_err(std::io::Error::other)?;
    socket.bind(&SocketAddr::from((local, 0)).into())?;
    socket.connect(&to.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(stream)
}

#[test]
fn a_response_sent_between_two_instances_is_never_answered() {
    if skip() {
        return;
    }
    // Two instances; A's UDP port is shared (SO_REUSEPORT) with the test's
    // socket, so a datagram "from A" can be sent to B, as a spoofed one
    // would arrive. Before, B answered it, A answered B's answer, and the
    // two ping-ponged until one was killed.
    let a = start(2);
    let b = start(1);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&a.daemon.addr.into()).unwrap();
    let socket: UdpSocket = socket.into();
    // B's answer to a query "from A" is a response; A must drop it.
    socket
        .send_to(&query(9, "blocked.example.test", 1, false), b.daemon.addr)
        .unwrap();
    // And a response "from A" to B must not be answered at all.
    let mut response = query(10, "www.example.test", 1, false);
    response[2] |= 0x80;
    socket.send_to(&response, b.daemon.addr).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let (a_text, b_text) = (scrape(a.metrics), scrape(b.metrics));
    let answered = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("shieldns_resolver_queries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let responses = "shieldns_resolver_discarded_total{reason=\"response\"}";
    assert_eq!(answered(&b_text), 1, "B answered only the query:\n{b_text}");
    assert_eq!(metric(&b_text, responses), 1, "B dropped the response:\n{b_text}");
    // A saw B's one answer at most (the kernel may hand it to the test's
    // socket instead) and answered nothing.
    assert_eq!(answered(&a_text), 0, "A answered a response:\n{a_text}");
    assert!(metric(&a_text, responses) <= 1, "{a_text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(answered(&scrape(b.metrics)), 1, "no second round");
}

fn frame(packet: &[u8]) -> Vec<u8> {
    let mut framed = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    framed
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).ok()?;
    Some(message)
}

#[test]
fn pipelined_tcp_queries_are_answered_as_each_completes() {
    if skip() {
        return;
    }
    let setup = start(1);
    // The upstream goes silent: `www` waits for the resolution deadline,
    // while the blocked names behind it need no upstream at all.
    setup.upstream.set_answering(false);
    let mut stream = tcp_from("127.0.0.1", setup.daemon.addr);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frames = frame(&query(0, "www.example.test", 1, false));
    for id in 1..=1000u16 {
        frames.extend_from_slice(&frame(&query(id, "blocked.example.test", 1, false)));
    }
    let started = Instant::now();
    stream.write_all(&frames).unwrap();
    let mut order = Vec::new();
    let mut blocked_done = None;
    while order.len() < 1001 {
        let answer = read_frame(&mut stream).expect("every query answered");
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        order.push((id, answer[3] & 0x0f));
        if order.len() == 1000 {
            blocked_done = Some(started.elapsed());
        }
    }
    assert!(
        order[..1000].iter().all(|&(id, rcode)| id != 0 && rcode == 3),
        "the 1000 blocked answers come first, NXDOMAIN"
    );
    assert_eq!(order[1000], (0, 2), "the stuck query last, SERVFAIL");
    eprintln!(
        "1000 pipelined blocked queries behind a stuck one: answered in {:?}",
        blocked_done.unwrap_or_default()
    );
}

#[test]
fn tcp_connections_are_capped_per_client_and_refused_floods_do_not_starve_allowed_clients() {
    if skip() {
        return;
    }
    let setup = start(1);
    let daemon = &setup.daemon;
    // Four connections from one address are the cap; a fifth is closed at
    // once, and once one of the four closes a new one is served.
    let mut held: Vec<TcpStream> = (0..4).map(|_| tcp_from("127.0.0.1", daemon.addr)).collect();
    // Make sure all four were admitted before the fifth arrives.
    for (id, stream) in held.iter_mut().enumerate() {
        stream
            .write_all(&frame(&query(
                u16::try_from(id).unwrap(),
                "blocked.example.test",
                1,
                false,
            )))
            .unwrap();
        assert!(read_frame(stream).is_some());
    }
    let mut fifth = tcp_from("127.0.0.1", daemon.addr);
    let _ = fifth.write_all(&frame(&query(5, "blocked.example.test", 1, false)));
    assert_eq!(read_frame(&mut fifth), None, "a fifth connection from one address");
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = tcp_from("127.0.0.1", daemon.addr);
    again
        .write_all(&frame(&query(6, "blocked.example.test", 1, false)))
        .unwrap();
    assert!(read_frame(&mut again).is_some(), "served once below the cap");
    drop(again);

    // A flood of connections from a refused source, each reset at accept,
    // while an allowed client's UDP and TCP queries keep being answered.
    let flood = std::thread::spawn({
        let addr = daemon.addr;
        move || {
            let mut opened = 0;
            for _ in 0..3000 {
                if let Ok(stream) = try_tcp_from("127.0.0.200", addr) {
                    opened += 1;
                    drop(stream);
                }
            }
            opened
        }
    });
    let mut answered = 0;
    for i in 0..40 {
        let name = if i % 2 == 0 {
            "www.example.test"
        } else {
            "blocked.example.test"
        };
        let args = if i % 4 < 2 {
            vec![name, "A"]
        } else {
            vec!["+tcp", name, "A"]
        };
        if matches!(status(&daemon.dig(&args)), "NOERROR" | "NXDOMAIN") {
            answered += 1;
        }
    }
    let opened = flood.join().unwrap();
    assert_eq!(answered, 40, "allowed queries answered during the flood");
    // The server notices closed connections at its next read.
    std::thread::sleep(Duration::from_millis(300));
    let text = scrape(setup.metrics);
    let closed = metric(&text, "shieldns_resolver_discarded_total{reason=\"tcp_not_allowed\"}");
    // Every refused connection that reached accept is counted (under load
    // the kernel may drop some from a full accept queue before that).
    assert!(opened > 0 && closed >= 1, "{closed} closed of {opened} opened:\n{text}");
    assert_eq!(
        metric(&text, "shieldns_resolver_discarded_total{reason=\"tcp_client_limit\"}"),
        1,
        "{text}"
    );
    // Three still held open by this test.
    assert_eq!(metric(&text, "shieldns_tcp_connections"), 3, "{text}");
}

#[test]
fn a_failure_is_remembered_and_answered_at_once() {
    if skip() {
        return;
    }
    let setup = start(1);
    setup.upstream.set_answering(false);
    let ask = || {
        let started = Instant::now();
        let out = setup.daemon.dig(&["+tries=1", "+time=5", "www.example.test", "A"]);
        (out, started.elapsed())
    };
    let (first, waited) = ask();
    assert_eq!(status(&first), "SERVFAIL", "{first}");
    assert!(
        waited >= Duration::from_millis(1900),
        "the first waits for the deadline: {waited:?}"
    );
    let (second, took) = ask();
    assert_eq!(status(&second), "SERVFAIL", "{second}");
    assert!(
        took < Duration::from_millis(1000),
        "a remembered failure is answered without waiting again: {took:?}"
    );
    let ede_of = |out: &str| shieldns_test_support::daemon::ede(out).unwrap_or_default();
    assert!(ede_of(&first).contains("22 (No Reachable Authority)"), "{first}");
    assert_eq!(ede_of(&first), ede_of(&second), "the same EDE");
    // Another type of the same name is its own question.
    setup.upstream.set_answering(true);
    assert_eq!(status(&setup.daemon.dig(&["www.example.test", "AAAA"])), "NOERROR");
}

#[test]
fn udp_rate_limits_drop_and_slip_and_refusals_have_a_budget() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let metrics = free_port("127.0.0.1");
    let config = CONFIG
        .replace("@UPSTREAM@", &upstream.addr.to_string())
        .replace("@METRICS@", &metrics.to_string())
        .replace("@UDP_SOCKETS@", "1")
        .replace(
            "[upstream]",
            "[server.rate_limit]\nqueries_per_second = 5\nburst = 5\nslip = 2\nexempt = [\"127.0.0.9/32\"]\n\n[upstream]",
        );
    let daemon = Daemon::start(&config, FILES);
    let burst = |from: &str, count: u16| -> (usize, usize) {
        let socket = udp_from(from);
        for id in 0..count {
            socket
                .send_to(&query(id, "blocked.example.test", 1, false), daemon.addr)
                .unwrap();
        }
        let (mut full, mut truncated) = (0, 0);
        while let Some(answer) = reply(&socket) {
            if answer[2] & 0x02 != 0 {
                assert_eq!(&answer[6..12], &[0, 0, 0, 0, 0, 0], "a slip answer is empty");
                truncated += 1;
            } else {
                full += 1;
            }
        }
        (full, truncated)
    };
    let (full, truncated) = burst("127.0.0.1", 40);
    assert!(
        (5..=8).contains(&full),
        "the burst of 5, and what refilled meanwhile: {full}"
    );
    assert!(
        truncated >= 10 && full + truncated < 40,
        "every second drop slips: {truncated}"
    );
    // Another address is its own client (IPv4 /32 by default); an exempt one
    // is never limited.
    assert!(burst("127.0.0.2", 5).0 == 5);
    assert_eq!(burst("127.0.0.9", 40), (40, 0));
    // A refused source's REFUSED answers: 20 at once, then 10 a second.
    let (refused, _) = {
        let socket = udp_from("127.0.0.200");
        for id in 0..60 {
            socket
                .send_to(&query(id, "www.example.test", 1, false), daemon.addr)
                .unwrap();
        }
        let mut count = 0;
        while reply(&socket).is_some() {
            count += 1;
        }
        (count, ())
    };
    assert!((20..=30).contains(&refused), "{refused} REFUSED answers to 60 queries");
    let text = scrape(metrics);
    let dropped = metric(&text, "shieldns_resolver_discarded_total{reason=\"rate_limited\"}");
    assert!(dropped >= 40, "{text}");
    assert_eq!(
        metric(&text, "shieldns_resolver_rate_limit_slips_total"),
        u64::try_from(truncated).unwrap(),
        "{text}"
    );
    // Still answering once the bucket refills.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&daemon.dig(&["blocked.example.test", "A"])), "NXDOMAIN");
}

#[test]
fn truncation_keeps_whole_rrsets_and_two_opts_are_formerr() {
    if skip() {
        return;
    }
    let setup = start(1);
    // Twelve 203-byte TXT records are one RRset: none fits in 512 bytes, so
    // the answer is empty with TC set, never a part of the set.
    let socket = udp_from("127.0.0.1");
    let asked = query(0x5151, "big.example.test", 16, false);
    socket.send_to(&asked, setup.daemon.addr).unwrap();
    let answer = reply(&socket).expect("an answer");
    assert!(answer.len() <= 512);
    assert_eq!(answer[2] & 0x02, 0x02, "TC");
    assert_eq!(&answer[6..8], &[0, 0], "no partial RRset in the answer section");
    // Over TCP the whole set comes.
    let out = setup.daemon.dig(&["+tcp", "big.example.test", "TXT"]);
    assert_eq!(shieldns_test_support::daemon::answers(&out).len(), 12, "{out}");

    // Two OPT records: FORMERR (RFC 6891 §6.1.1).
    let mut two_opts = query(0x5252, "www.example.test", 1, true);
    two_opts[11] = 2;
    two_opts.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    socket.send_to(&two_opts, setup.daemon.addr).unwrap();
    assert_eq!(reply(&socket).map(|a| a[3] & 0x0f), Some(1), "FORMERR");
}

#[test]
fn chaos_names_are_answered_only_when_configured() {
    if skip() {
        return;
    }
    let off = start(1);
    // (dig takes the class after the type; `-c CH NAME TXT` would ask two
    // questions.)
    assert_eq!(status(&off.daemon.dig(&["version.bind", "TXT", "CH"])), "REFUSED");
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let config = CONFIG
        .replace("@UPSTREAM@", &upstream.addr.to_string())
        .replace("@METRICS@", &free_port("127.0.0.1").to_string())
        .replace("@UDP_SOCKETS@", "1")
        .replace(
            "tcp_idle_timeout = 30",
            "tcp_idle_timeout = 30\nchaos_identity = \"node-7\"\nchaos_version = \"shieldns test\"",
        );
    let daemon = Daemon::start(&config, FILES);
    for (name, text) in [
        ("id.server", "node-7"),
        ("hostname.bind", "node-7"),
        ("VERSION.bind", "shieldns test"),
        ("version.server", "shieldns test"),
    ] {
        let out = daemon.dig(&[name, "TXT", "CH"]);
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(out.contains(&format!("CH\tTXT\t\"{text}\"")), "{out}");
        assert!(out.contains(" aa "), "authoritative: {out}");
    }
    assert_eq!(status(&daemon.dig(&["authors.bind", "TXT", "CH"])), "REFUSED");
    assert_eq!(status(&daemon.dig(&["version.bind", "A", "CH"])), "REFUSED");
}
