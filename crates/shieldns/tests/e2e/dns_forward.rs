//! End-to-end tests of `shieldns run` in forward mode: the real binary on
//! loopback, a fake upstream, and the real `dig`.

use std::net::UdpSocket;
use std::time::Duration;

use shieldns_test_support::daemon::{Daemon, answers, ede, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/dns_forward.toml");

const FILES: &[(&str, &str)] = &[
    ("csam.txt", "# national list\nmandatory.example.test\n"),
    ("adult.txt", "blocked.example.test\nallowed.example.test\n"),
    ("global.txt", "global.example.test\n"),
    ("allow.txt", "allowed.example.test\nmandatory.example.test\n"),
];

fn start(upstreams: &[&FakeUpstream]) -> Daemon {
    let list = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect::<Vec<_>>()
        .join(", ");
    Daemon::start(&CONFIG.replace("@UPSTREAMS@", &list), FILES)
}

/// The config forwarding to `upstream`, with a metrics endpoint on a free
/// port of 127.0.0.1, and that port.
fn with_metrics(upstream: &FakeUpstream) -> (String, u16) {
    let port = shieldns_test_support::daemon::free_port("127.0.0.1");
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        CONFIG.replace("@UPSTREAMS@", &format!("\"{}\"", upstream.addr))
    );
    (config, port)
}

fn skip() -> bool {
    !require(&[("dig", "bind9-dnsutils")])
}

#[test]
fn answers_allowed_and_blocked_names() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);

    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(answers(&out), ["www.example.test. 300 IN A 192.0.2.10"], "{out}");

    // A category block: NXDOMAIN, SOA with block_ttl, EDE 17 naming the list.
    let out = daemon.dig(&["blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 17 (Filtered): (list=adult category=adult)"),
        "{out}"
    );
    assert!(out.contains("blocked.example.test.\t42\tIN\tSOA"), "{out}");

    // Subdomains of a blocked name are blocked.
    let out = daemon.dig(&["deep.sub.blocked.example.test", "AAAA"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    // The allowlist beats a category list…
    let out = daemon.dig(&["allowed.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(answers(&out).len(), 1, "{out}");

    // …but never a mandatory list: EDE 16 Censored.
    let out = daemon.dig(&["mandatory.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 16 (Censored): (list=national-csam category=csam)"),
        "{out}"
    );

    // A list without a category applies to everyone: EDE 15 Blocked.
    let out = daemon.dig(&["global.example.test", "A"]);
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 15 (Blocked): (list=global)"),
        "{out}"
    );

    // Over TCP too.
    let out = daemon.dig(&["+tcp", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some(), "{out}");

    // Without EDNS there is no OPT record, so no EDE, but still the block.
    let out = daemon.dig(&["+noedns", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_none() && !out.contains("OPT PSEUDOSECTION"), "{out}");
}

#[test]
fn each_block_response_per_profile() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);

    let out = daemon.dig(&["-b", "127.0.0.2", "blocked.example.test", "A"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "nodata: {out}");
    assert!(out.contains("IN\tSOA") && ede(&out).is_some(), "nodata: {out}");

    let out = daemon.dig(&["-b", "127.0.0.3", "blocked.example.test", "A"]);
    assert_eq!(answers(&out), ["blocked.example.test. 60 IN A 0.0.0.0"], "null: {out}");
    let out = daemon.dig(&["-b", "127.0.0.3", "blocked.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["blocked.example.test. 60 IN AAAA ::"], "null: {out}");
    // Never an address record of the wrong type.
    let out = daemon.dig(&["-b", "127.0.0.3", "blocked.example.test", "MX"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "null MX: {out}");

    let out = daemon.dig(&["-b", "127.0.0.4", "blocked.example.test", "A"]);
    assert_eq!(
        answers(&out),
        ["blocked.example.test. 60 IN A 192.0.2.80"],
        "sinkhole: {out}"
    );
    let out = daemon.dig(&["-b", "127.0.0.4", "blocked.example.test", "AAAA"]);
    assert_eq!(
        answers(&out),
        ["blocked.example.test. 60 IN AAAA 2001:db8::80"],
        "sinkhole: {out}"
    );

    let out = daemon.dig(&["-b", "127.0.0.5", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "REFUSED", "refused: {out}");
    assert!(ede(&out).is_some_and(|e| e.contains("17")), "refused: {out}");

    // A profile without categories still gets the mandatory list.
    let out = daemon.dig(&["-b", "127.0.0.6", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "open: {out}");
    let out = daemon.dig(&["-b", "127.0.0.6", "mandatory.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "open, mandatory: {out}");

    // Outside server.allow: REFUSED, whatever the name.
    let out = daemon.dig(&["-b", "127.0.0.200", "www.example.test", "A"]);
    assert_eq!(status(&out), "REFUSED", "acl: {out}");
}

#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    let out = daemon.dig(&["+ignore", "+bufsize=1232", "big.example.test", "TXT"]);
    assert!(out.contains("flags: qr tc"), "expected TC=1 over UDP: {out}");
    // dig retries over TCP on TC=1 and gets all twelve records.
    let out = daemon.dig(&["big.example.test", "TXT"]);
    assert_eq!(answers(&out).len(), 12, "{out}");
}

#[test]
fn fails_over_to_the_next_forwarder() {
    if skip() {
        return;
    }
    let dead = FakeUpstream::start("127.0.0.1", 300);
    dead.set_answering(false);
    let live = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&dead, &live]);
    for name in ["www.example.test", "allowed.example.test", "stale.example.test"] {
        let out = daemon.dig(&[name, "A"]);
        assert_eq!(status(&out), "NOERROR", "{name}: {out}");
    }
}

#[test]
fn serves_stale_answers_when_the_upstream_fails() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 1);
    let daemon = start(&[&upstream]);
    let out = daemon.dig(&["stale.example.test", "A"]);
    assert_eq!(answers(&out), ["stale.example.test. 1 IN A 192.0.2.10"], "{out}");
    upstream.set_answering(false);
    std::thread::sleep(Duration::from_millis(2200));
    let out = daemon.dig(&["+time=5", "stale.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(answers(&out), ["stale.example.test. 30 IN A 192.0.2.10"], "{out}");
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 3 (Stale Answer)")),
        "{out}\n{}",
        daemon.log_text()
    );
    // A name never cached fails cleanly, saying why, and the log says so
    // (once a minute at most, with a count).
    let out = daemon.dig(&["+time=5", "www.example.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 22 (No Reachable Authority)")),
        "{out}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("upstream: 1 queries answered SERVFAIL: no reachable authority or forwarder"),
        "{log}"
    );
}

#[test]
fn reload_swaps_verdicts_and_a_broken_list_keeps_the_old_ones() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    // Cached before it is listed…
    let out = daemon.dig(&["reload.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    std::fs::write(daemon.path("adult.txt"), "blocked.example.test\nreload.example.test\n").unwrap();
    assert!(daemon.reload(), "{}", daemon.log_text());
    // …and blocked right after the reload.
    let out = daemon.dig(&["reload.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    // A list whose every line is invalid fails the reload; nothing changes.
    std::fs::write(daemon.path("adult.txt"), "not a name\n!!!\n").unwrap();
    assert!(!daemon.reload(), "a broken list must not load");
    assert!(
        daemon.log_text().contains("adult.txt"),
        "the error names the file: {}",
        daemon.log_text()
    );
    let out = daemon.dig(&["reload.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "old verdict kept: {out}");
    // An emptied or comments-only list would switch its category off: it
    // fails the reload too, and a mandatory one (the CSAM list) says so.
    for (file, text) in [
        ("adult.txt", ""),
        ("adult.txt", "# all gone\n\n"),
        ("csam.txt", "# national list\n"),
    ] {
        let before = std::fs::read_to_string(daemon.path(file)).unwrap();
        std::fs::write(daemon.path(file), text).unwrap();
        assert!(!daemon.reload(), "an empty {file} must not load");
        std::fs::write(daemon.path(file), before).unwrap();
    }
    let log = daemon.log_text();
    assert!(
        log.contains("no rules (the file is empty or holds only comments)"),
        "{log}"
    );
    assert!(log.contains("a mandatory list is never enforced empty"), "{log}");
    let out = daemon.dig(&["reload.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "old verdict kept: {out}");
    assert_eq!(status(&daemon.dig(&["mandatory.example.test", "A"])), "NXDOMAIN");
    // So does a missing file, and a broken configuration.
    std::fs::remove_file(daemon.path("adult.txt")).unwrap();
    assert!(!daemon.reload());
    std::fs::write(daemon.path("adult.txt"), "blocked.example.test\n").unwrap();
    let config = std::fs::read_to_string(daemon.path("shieldns.toml")).unwrap();
    std::fs::write(daemon.path("shieldns.toml"), format!("{config}\nbogus_key = 1\n")).unwrap();
    assert!(!daemon.reload());
    assert!(daemon.log_text().contains("bogus_key"), "{}", daemon.log_text());
    let out = daemon.dig(&["reload.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "old verdict kept: {out}");
}

#[test]
fn malformed_packets_never_crash_the_server() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let valid_header = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        valid_header[..7].to_vec(),
        // A question whose name is a pointer to itself.
        [&valid_header[..], &[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]].concat(),
        // A pointer past the end.
        [&valid_header[..], &[0xc0, 0xff, 0x00, 0x01, 0x00, 0x01]].concat(),
        // Huge counts with no records.
        vec![0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        // A label length running past the end.
        [&valid_header[..], &[0x3f, b'a', b'b']].concat(),
        // Two questions.
        [
            &[0x12, 0x34, 0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0][..],
            &[1, b'a', 0, 0, 1, 0, 1],
            &[1, b'b', 0, 0, 1, 0, 1],
        ]
        .concat(),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..200 {
        let len = usize::try_from(seed % 80).unwrap();
        let mut packet = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            packet.push(seed.to_le_bytes()[0]);
        }
        packets.push(packet);
    }
    let mut formerr = 0;
    for packet in &packets {
        socket.send_to(packet, daemon.addr).unwrap();
        let mut buffer = [0u8; 1500];
        if let Ok((len, _)) = socket.recv_from(&mut buffer) {
            // Whatever comes back is a response, and for our two-question
            // packet it is FORMERR.
            assert!(
                len >= 12 && buffer[2] & 0x80 != 0,
                "not a response: {:?}",
                &buffer[..len]
            );
            if buffer[3] & 0x0f == 1 {
                formerr += 1;
            }
        }
    }
    assert!(formerr >= 1, "the two-question query must get FORMERR");
    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "still answering: {out}");
}

#[test]
fn sigterm_exits_cleanly() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    assert_eq!(status(&daemon.dig(&["www.example.test", "A"])), "NOERROR");
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn caches_negative_answers_and_listens_on_ipv6() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let config = CONFIG
        .replace("@UPSTREAMS@", &format!("\"{}\"", upstream.addr))
        .replace(
            "listen = [\"127.0.0.1:@PORT@\"]",
            "listen = [\"127.0.0.1:@PORT@\", \"[::1]:@PORT@\"]",
        );
    let daemon = Daemon::start(&config, FILES);
    let before = upstream.queries.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        let out = daemon.dig(&["missing.example.test", "A"]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(ede(&out).is_none(), "an upstream NXDOMAIN is not a block: {out}");
    }
    let asked = upstream.queries.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(asked, 1, "NXDOMAIN is cached (RFC 2308)");
    // The same over TCP, which the stream transports' packet cache answers
    // after the handler's first (from its engine).
    for _ in 0..3 {
        let out = daemon.dig(&["+tcp", "also-missing.example.test", "A"]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
    }
    let asked = upstream.queries.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(asked, 2, "the handler caches NXDOMAIN too");

    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, daemon.addr.port()));
    let out = shieldns_test_support::daemon::dig_at(v6, &["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 300 IN AAAA 2001:db8::10"], "{out}");
    let out = shieldns_test_support::daemon::dig_at(v6, &["+tcp", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
}

#[test]
fn stream_repeats_come_from_the_stream_cache_and_blocks_from_the_wire_bytes() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let (config, metrics_port) = with_metrics(&upstream);
    // `cloaked.example.test` is a CNAME to `tracker.adnet.test`, which the
    // adult list blocks here: the lists let the name through, the answer
    // check blocks it.
    let mut files = FILES.to_vec();
    files[1] = ("adult.txt", "blocked.example.test\nallowed.example.test\nadnet.test\n");
    let daemon = Daemon::start(&config, &files);
    let hits = || {
        let body = shieldns_test_support::daemon::scrape(metrics_port);
        body.lines()
            .find_map(|l| l.strip_prefix("shieldns_cache_lookups_total{result=\"hit\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let out = daemon.dig(&["+tcp", "www.example.test", "A"]);
    assert_eq!(answers(&out), ["www.example.test. 300 IN A 192.0.2.10"], "{out}");
    assert_eq!(hits(), 0, "a first question is the handler's");
    // Repeats, in another case and with another ID (dig checks both): the
    // cached bytes carry the question as asked.
    let out = daemon.dig(&["+tcp", "WwW.Example.TEST", "A"]);
    assert!(out.contains("\n;WwW.Example.TEST.\t\tIN\tA\n"), "{out}");
    let answer = answers(&out);
    assert_eq!(answer.len(), 1, "{out}");
    assert!(answer[0].ends_with(" IN A 192.0.2.10"), "{out}");
    daemon.dig(&["+tcp", "www.example.test", "A"]);
    assert_eq!(hits(), 2, "repeats over TCP are stream-cache hits");
    // Asked without EDNS, a block the answer check earned has no EDE to
    // tell it by: it must still be blocked and counted every time, over
    // TCP and over UDP, never served as a cached answer.
    for transport in ["+tcp", "+notcp"] {
        for _ in 0..3 {
            let out = daemon.dig(&[transport, "+noedns", "cloaked.example.test", "A"]);
            assert_eq!(status(&out), "NXDOMAIN", "{out}");
        }
    }
    // A listed name over TCP is answered from its wire bytes, as over UDP:
    // the handler's block, EDE and all, counted as a block every time.
    for case in ["blocked.example.test", "Blocked.EXAMPLE.test", "blocked.example.test"] {
        let out = daemon.dig(&["+tcp", case, "A"]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(out.contains("EDE: 17 (Filtered)"), "{out}");
        assert!(out.contains(&format!("\n;{case}.\t\tIN\tA\n")), "{out}");
    }
    let body = shieldns_test_support::daemon::scrape(metrics_port);
    for line in [
        r#"shieldns_policy_list_blocks_total{category="adult",ede="17",list="adult",profile="default"} 9"#,
        r#"shieldns_resolver_queries_total{profile="default",protocol="tcp",rcode="NXDOMAIN"} 6"#,
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}` in:\n{body}");
    }
    assert_eq!(hits(), 2, "no block was a cache hit");
}

#[test]
fn prefetches_popular_answers_before_they_expire() {
    if skip() {
        return;
    }
    // Over TCP, the stream transports' packet cache answers repeats until
    // the last tenth of the TTL, then leaves them to the handler, whose
    // answer cache prefetches. Prefetch is the hickory engine's: libunbound
    // answers a refresh from its own cache, whose copy expires with ours
    // (see `cache.prefetch`).
    let upstream = FakeUpstream::start("127.0.0.1", 10);
    let list = format!("\"{}\"", upstream.addr);
    let config = CONFIG
        .replace("@UPSTREAMS@", &list)
        .replace("mode = \"forward\"", "engine = \"hickory\"\nmode = \"forward\"");
    let daemon = Daemon::start(&config, FILES);
    let count = || upstream.queries.load(std::sync::atomic::Ordering::Relaxed);
    let before = count();
    assert_eq!(status(&daemon.dig(&["+tcp", "www.example.test", "A"])), "NOERROR");
    std::thread::sleep(Duration::from_millis(8000));
    // A first hit, outside the last tenth of the TTL: no prefetch yet.
    assert_eq!(status(&daemon.dig(&["+tcp", "www.example.test", "A"])), "NOERROR");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        count() - before,
        1,
        "no upstream query before the last tenth of the TTL"
    );
    // A second hit in the last tenth: answered from cache, and refreshed in
    // the background before the answer expires.
    assert_eq!(status(&daemon.dig(&["+tcp", "www.example.test", "A"])), "NOERROR");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count() - before,
        2,
        "the popular answer was prefetched before it expired"
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Past the original expiry: answered from the prefetched copy without
    // asking upstream again.
    let out = daemon.dig(&["+tcp", "www.example.test", "A"]);
    let ttl: u32 = answers(&out)[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert!((7..=9).contains(&ttl), "prefetched answer, aged: {out}");
    assert_eq!(count() - before, 2, "no refetch after the original expiry");
}

#[test]
fn answers_pipelined_tcp_queries_on_one_connection() {
    use std::io::{Read, Write};
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    let mut stream = std::net::TcpStream::connect(daemon.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let names: [&[u8]; 3] = [
        b"\x03www\x07example\x04test\x00",
        b"\x07blocked\x07example\x04test\x00",
        b"\x07allowed\x07example\x04test\x00",
    ];
    let mut frames = Vec::new();
    for (id, name) in names.iter().enumerate() {
        let mut query = vec![0, u8::try_from(id).unwrap(), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(name);
        query.extend_from_slice(&[0, 1, 0, 1]);
        frames.extend_from_slice(&u16::try_from(query.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(&query);
    }
    // All three queries in one write, before reading any answer.
    stream.write_all(&frames).unwrap();
    let mut rcodes = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).unwrap();
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut response).unwrap();
        rcodes.insert(response[1], response[3] & 0x0f);
    }
    assert_eq!(
        rcodes.into_iter().collect::<Vec<_>>(),
        [(0, 0), (1, 3), (2, 0)],
        "NOERROR, NXDOMAIN, NOERROR"
    );
}

#[test]
fn rpz_actions_local_data_and_answer_ip_rules() {
    if skip() {
        return;
    }
    const RPZ: &str = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 300\n  NS localhost.\n\
        nodata.example.test CNAME *.\n\
        drop.example.test CNAME rpz-drop.\n\
        local.example.test A 192.0.2.99\n\
        safe.example.test CNAME www.example.test.\n\
        24.0.100.51.198.rpz-ip CNAME .\n";
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let config = format!(
        "{}\n[[list]]\nname = \"policy-zone\"\nformat = \"rpz\"\npath = \"@DIR@/policy.rpz\"\n",
        CONFIG.replace("@UPSTREAMS@", &format!("\"{}\"", upstream.addr))
    );
    let mut files = FILES.to_vec();
    files.push(("policy.rpz", RPZ));
    let daemon = Daemon::start(&config, &files);

    let out = daemon.dig(&["nodata.example.test", "A"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 15 (Blocked): (list=policy-zone)"),
        "{out}"
    );

    let out = daemon.dig(&["drop.example.test", "A"]);
    assert!(
        out.contains("timed out") && !out.contains("status:"),
        "rpz-drop sends nothing: {out}"
    );

    let out = daemon.dig(&["local.example.test", "A"]);
    assert_eq!(answers(&out), ["local.example.test. 42 IN A 192.0.2.99"], "{out}");

    // A CNAME rewrite is followed to the target's records.
    let out = daemon.dig(&["safe.example.test", "A"]);
    assert_eq!(
        answers(&out),
        [
            "safe.example.test. 42 IN CNAME www.example.test.",
            "www.example.test. 300 IN A 192.0.2.10"
        ],
        "{out}"
    );

    // An answer whose address is in a blocked prefix is blocked; the EDE names it.
    let out = daemon.dig(&["bad-ip.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 15 (Blocked): (list=policy-zone ip=198.51.100.66)"),
        "{out}"
    );
    // And still after it was cached.
    let out = daemon.dig(&["bad-ip.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
}

#[test]
fn exports_counters_on_the_metrics_endpoint() {
    use std::io::{Read, Write};
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let (config, metrics_port) = with_metrics(&upstream);
    let daemon = Daemon::start(&config, FILES);
    for _ in 0..2 {
        daemon.dig(&["blocked.example.test", "A"]);
        daemon.dig(&["mandatory.example.test", "A"]);
        daemon.dig(&["www.example.test", "A"]);
    }
    daemon.dig(&["-b", "127.0.0.200", "www.example.test", "A"]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for line in [
        "shieldns_policy_blocked_total{ede=\"17\"} 2",
        "shieldns_policy_blocked_total{ede=\"16\"} 2",
        "shieldns_resolver_responses_total{rcode=\"NOERROR\"} 2",
        "shieldns_cache_lookups_total{result=\"hit\"} 1",
        "shieldns_cache_lookups_total{result=\"miss\"} 1",
        "shieldns_acl_refused_total 1",
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}` in:\n{body}");
    }
}

#[test]
fn overload_drops_slow_queries_but_keeps_answering_blocked_ones() {
    use std::io::{Read, Write};
    if skip() {
        return;
    }
    // An upstream that never answers keeps every allowed query in flight.
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    upstream.set_answering(false);
    let metrics_port = shieldns_test_support::daemon::free_port("127.0.0.1");
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        CONFIG
            .replace("@UPSTREAMS@", &format!("\"{}\"", upstream.addr))
            .replace("timeout_ms = 400", "timeout_ms = 3000")
            .replace(
                "allow = [\"127.0.0.0/25\", \"::1/128\"]",
                "allow = [\"127.0.0.0/25\", \"::1/128\"]\nmax_in_flight = 4"
            )
    );
    let daemon = Daemon::start(&config, FILES);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..40u8 {
        let mut query = vec![0, i, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5];
        query.extend_from_slice(format!("slow{:01}", i % 10).as_bytes());
        query.extend_from_slice(&[7]);
        query.extend_from_slice(b"example");
        query.extend_from_slice(&[4]);
        query.extend_from_slice(b"test");
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&query, daemon.addr).unwrap();
    }
    // The fast path still answers blocks at once while the handler is full.
    let out = daemon.dig(&["blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    let drops: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("shieldns_resolver_overload_drops_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        drops >= 30,
        "at most 4 of 40 slow queries are admitted, dropped {drops}:\n{body}"
    );
}

/// Queries a filtering resolver answers without resolving: other classes
/// and zone transfers REFUSED, other opcodes NOTIMP echoing only RD, RD=0
/// from the cache only (REFUSED with EDE 20 when not cached), and a
/// response (QR=1) never answered.
#[test]
fn odd_queries_get_the_rfc_answers() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&[&upstream]);
    let before = upstream.queries.load(std::sync::atomic::Ordering::Relaxed);

    let out = daemon.dig(&["version.bind", "TXT", "CH"]);
    assert_eq!(status(&out), "REFUSED", "{out}");
    let out = daemon.dig(&["www.example.test", "A", "HS"]);
    assert_eq!(status(&out), "REFUSED", "{out}");
    let out = daemon.dig(&["+notcp", "+cd", "+opcode=notify", "www.example.test", "SOA"]);
    assert_eq!(status(&out), "NOTIMP", "{out}");
    assert!(out.contains(";; flags: qr rd;"), "only RD echoed: {out}");

    let out = daemon.dig(&["+norec", "www.example.test", "A"]);
    assert_eq!(status(&out), "REFUSED", "not cached, no recursion: {out}");
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 20 (Not Authoritative)")),
        "{out}"
    );
    assert_eq!(
        upstream.queries.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "none of these reached the upstream"
    );
    // Once answered, RD=0 is answered from the (UDP packet) cache.
    assert_eq!(status(&daemon.dig(&["www.example.test", "A"])), "NOERROR");
    let out = daemon.dig(&["+norec", "www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "RD=0 answered from the cache: {out}");
    assert_eq!(answers(&out), ["www.example.test. 300 IN A 192.0.2.10"], "{out}");

    // A response is never answered (no reflection, no loops).
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let response = [
        &[0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0, 0, 0, 0, 0, 0][..],
        &[
            3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0,
        ],
        &[0, 1, 0, 1],
    ]
    .concat();
    socket.send_to(&response, daemon.addr).unwrap();
    let mut buffer = [0u8; 512];
    assert!(socket.recv_from(&mut buffer).is_err(), "a QR=1 datagram got an answer");
}
