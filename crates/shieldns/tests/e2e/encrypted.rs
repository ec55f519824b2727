//! DNS over TLS and over HTTPS against the running daemon with a test CA,
//! queried with the real `kdig` (`+tls`, `+https`, `+https-get`): the same
//! policy as UDP (a blocked name's EDE), the profile a client ID selects
//! (DoT server name, DoH path), an unknown ID on a listener that refuses
//! it, DDR's SVCB answers naming the listeners, and a certificate
//! replaced on SIGHUP.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use shieldns_test_support::daemon::{Daemon, answers, free_port, require, status};
use shieldns_test_support::tls::TestCa;
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/encrypted.toml");

/// The daemon, its DoT and DoH addresses, and the CA's file.
struct Setup {
    daemon: Daemon,
    dot: SocketAddr,
    doh: SocketAddr,
    doh_strict: SocketAddr,
    doq: SocketAddr,
    dot_capped: SocketAddr,
    metrics: u16,
    ca_pem: String,
    _upstream: FakeUpstream,
}

fn start() -> Option<Setup> {
    if !require(&[("kdig", "knot-dnsutils")]) {
        return None;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let ca = TestCa::new("shieldns test CA");
    let leaf = ca.leaf(&["dns.test", "*.dns.test", "127.0.0.1"]);
    let (dot, doh, doh_strict) = (free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1"));
    let (dot_capped, metrics) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    // A UDP port for DoQ.
    let doq = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = CONFIG
        .replace("@UPSTREAM@", &upstream.addr.to_string())
        .replace("@DOT@", &dot.to_string())
        .replace("@DOHSTRICT@", &doh_strict.to_string())
        .replace("@DOQ@", &doq.to_string())
        .replace("@DOTCAPPED@", &dot_capped.to_string())
        .replace("@METRICS@", &metrics.to_string())
        .replace("@DOH@", &doh.to_string());
    let daemon = Daemon::start(
        &config,
        &[
            ("adult.txt", "blocked.example.test\n"),
            ("server.pem", &leaf.chain_pem),
            ("server.key", &leaf.key_pem),
            ("ca.pem", &ca.pem.clone()),
        ],
    );
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Some(Setup {
        daemon,
        dot: at(dot),
        doh: at(doh),
        doh_strict: at(doh_strict),
        doq: at(doq),
        dot_capped: at(dot_capped),
        metrics,
        ca_pem: ca.pem,
        _upstream: upstream,
    })
}

/// `kdig` against `at` with `transport` options (e.g. `+tls`), trusting
/// the CA in `ca`.
fn kdig(at: SocketAddr, ca: &Path, transport: &[&str], name: &str) -> String {
    let output = Command::new("kdig")
        .arg(format!("@{}", at.ip()))
        .args(["-p", &at.port().to_string()])
        .arg(format!("+tls-ca={}", ca.display()))
        .args(transport)
        .args(["+timeout=3", "+retry=0", name, "A"])
        .output()
        .expect("run kdig");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kdig +tls` for `allowed.example.test` at `at` as `dns.test`.
fn dot_allowed(at: SocketAddr, ca: &Path) -> String {
    kdig(at, ca, &["+tls", "+tls-hostname=dns.test"], "allowed.example.test")
}

/// kdig's status word (`NOERROR`, `NXDOMAIN`, ...) from its header line
/// (`;; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 1`).
fn kdig_status(out: &str) -> &str {
    out.lines()
        .find(|line| line.contains("->>HEADER<<-"))
        .and_then(|line| line.split("status: ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or("")
}

#[test]
fn dot_answers_with_the_policy_and_the_profile_of_its_server_name() {
    let Some(setup) = start() else { return };
    let ca = setup.daemon.path("ca.pem");
    let hostname = |name: &str| format!("+tls-hostname={name}");
    // No ID: the address's profile, which blocks nothing.
    let out = kdig(setup.dot, &ca, &["+tls", &hostname("dns.test")], "blocked.example.test");
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    assert!(out.contains("192.0.2.10"), "{out}");
    // The ID in the server name selects the kids' profile, which does.
    let as_name = |sni: &str| {
        kdig(
            setup.dot,
            &ca,
            &["+tls", &hostname(sni), &format!("+tls-sni={sni}")],
            "blocked.example.test",
        )
    };
    let out = as_name("kid-tablet.dns.test");
    assert_eq!(kdig_status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("list=adult category=adult"), "EDE text over DoT: {out}");
    // An unknown ID on this listener gets the address's profile.
    let out = as_name("stranger.dns.test");
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    // A client that does not trust the CA gets no answer.
    let out = kdig(
        setup.dot,
        &setup.daemon.path("server.key"),
        &["+tls", &hostname("dns.test")],
        "allowed.example.test",
    );
    assert!(!out.contains("status: NOERROR"), "{out}");
}

#[test]
fn doh_answers_get_and_post_with_the_profile_of_its_path() {
    let Some(setup) = start() else { return };
    let ca = setup.daemon.path("ca.pem");
    for method in [&["+https"][..], &["+https", "+https-get"][..]] {
        let out = kdig(setup.doh, &ca, method, "blocked.example.test");
        assert_eq!(kdig_status(&out), "NOERROR", "{method:?}: {out}");
        let mut with_id = method.to_vec();
        with_id[0] = "+https=/dns-query/kid-tablet";
        let out = kdig(setup.doh, &ca, &with_id, "blocked.example.test");
        assert_eq!(kdig_status(&out), "NXDOMAIN", "{method:?}: {out}");
        assert!(out.contains("list=adult category=adult"), "{out}");
        let out = kdig(setup.doh, &ca, &with_id, "allowed.example.test");
        assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    }
    // On the listener that refuses unknown IDs: a known one is answered,
    // an unknown one REFUSED, none the address's profile.
    let out = kdig(
        setup.doh_strict,
        &ca,
        &["+https=/dns-query/kid-tablet"],
        "blocked.example.test",
    );
    assert_eq!(kdig_status(&out), "NXDOMAIN", "{out}");
    let out = kdig(
        setup.doh_strict,
        &ca,
        &["+https=/dns-query/stranger"],
        "allowed.example.test",
    );
    assert_eq!(kdig_status(&out), "REFUSED", "{out}");
    let out = kdig(setup.doh_strict, &ca, &["+https"], "allowed.example.test");
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    // UDP is unchanged beside them.
    assert_eq!(status(&setup.daemon.dig(&["blocked.example.test", "A"])), "NOERROR");
}

/// A client that keeps ten queries in flight on one HTTP/2 connection and
/// reads one TLS record per socket event (dnsperf 2.x) gets every answer:
/// no record holds more than one response. Before that, it lost two
/// thirds of its queries.
#[test]
fn doh_answers_every_query_of_a_pipelining_client() {
    if !require(&[("dnsperf", "dnsperf")]) {
        return;
    }
    let Some(setup) = start() else { return };
    let queries = setup.daemon.path("queries.txt");
    std::fs::write(&queries, "blocked.example.test A\n".repeat(100)).unwrap();
    let output = Command::new("dnsperf")
        .args(["-m", "doh", "-s", "127.0.0.1", "-p", &setup.doh.port().to_string()])
        .args(["-c", "1", "-q", "10", "-l", "2", "-t", "1", "-d"])
        .arg(&queries)
        .args([
            "-O",
            &format!("doh-uri=https://127.0.0.1:{}/dns-query/kid-tablet", setup.doh.port()),
        ])
        .output()
        .expect("run dnsperf");
    let out = String::from_utf8_lossy(&output.stdout);
    let count = |label: &str| -> u64 {
        out.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in dnsperf's output: {out}"))
    };
    assert_eq!(count("Queries lost:"), 0, "{out}");
    assert!(count("Queries completed:") >= 100, "{out}");
    assert!(
        out.contains("NXDOMAIN"),
        "the kid-tablet profile blocks the name: {out}"
    );
}

#[test]
fn a_certificate_replaced_and_sighup_serves_new_handshakes_with_it() {
    let Some(setup) = start() else { return };
    let ca = setup.daemon.path("ca.pem");
    let out = dot_allowed(setup.dot, &ca);
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    // A new CA and leaf: the old CA no longer verifies after SIGHUP.
    let new_ca = TestCa::new("shieldns second CA");
    let leaf = new_ca.leaf(&["dns.test", "*.dns.test", "127.0.0.1"]);
    std::fs::write(setup.daemon.path("server.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(setup.daemon.path("server.key"), &leaf.key_pem).unwrap();
    std::fs::write(setup.daemon.path("new-ca.pem"), &new_ca.pem).unwrap();
    assert!(setup.daemon.reload(), "{}", setup.daemon.log_text());
    let new_path = setup.daemon.path("new-ca.pem");
    let out = dot_allowed(setup.dot, &new_path);
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    let out = kdig(setup.doh, &new_path, &["+https"], "allowed.example.test");
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    let out = dot_allowed(setup.dot, &ca);
    assert!(
        !out.contains("status: NOERROR"),
        "the old CA must not verify the new certificate: {out}"
    );
    // A broken key on the next SIGHUP keeps the certificate in use.
    std::fs::write(setup.daemon.path("server.key"), "not a key").unwrap();
    setup.daemon.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !setup.daemon.log_text().contains("certificate reload failed") {
        assert!(std::time::Instant::now() < deadline, "{}", setup.daemon.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = dot_allowed(setup.dot, &new_path);
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
}

#[test]
fn ddr_names_the_encrypted_listeners() {
    let Some(setup) = start() else { return };
    // RFC 9462: the designated resolvers, even for a profile that answers
    // other resolvers' discovery with NODATA (bypass protection).
    let out = setup.daemon.dig(&["_dns.resolver.arpa", "SVCB"]);
    let records = answers(&out);
    assert_eq!(records.len(), 2, "the two named listeners: {out}");
    let dot = format!("1 dns.test. alpn=\"dot\" port={}", setup.dot.port());
    assert!(records.iter().any(|r| r.contains(&dot)), "{out}");
    let doh = format!("2 dns.test. alpn=\"h2,http/1.1\" port={}", setup.doh.port());
    assert!(records.iter().any(|r| r.contains(&doh)), "{out}");
    assert!(out.contains("/dns-query{?dns}"), "the DoH path template: {out}");
    // The resolver's own name answers the same.
    let out = setup.daemon.dig(&["_dns.dns.test", "SVCB"]);
    assert_eq!(answers(&out).len(), 2, "{out}");
    // Other resolvers' DDR names stay answered by bypass protection.
    let out = setup.daemon.dig(&["_dns.other.resolver.arpa", "SVCB"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "{out}");
}

#[test]
fn doh_over_http1_answers_and_refuses_what_is_not_a_query() {
    let Some(setup) = start() else { return };
    if !require(&[("curl", "curl")]) {
        return;
    }
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut query = Message::query();
    query.metadata.id = 7;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii("blocked.example.test.").unwrap(),
        RecordType::A,
    ));
    let body = setup.daemon.path("query.bin");
    std::fs::write(&body, query.to_vec().unwrap()).unwrap();
    let port = setup.doh.port();
    let curl = |path: &str, extra: &[&str]| {
        let output = Command::new("curl")
            .args(["-s", "--http1.1", "--max-time", "5", "-o"])
            .arg(setup.daemon.path("answer.bin"))
            .args(["-w", "%{http_code} %{content_type}"])
            .arg("--cacert")
            .arg(setup.daemon.path("ca.pem"))
            .args(["--resolve", &format!("dns.test:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://dns.test:{port}{path}"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let post = ["-H", "content-type: application/dns-message", "--data-binary"];
    let data = format!("@{}", body.display());
    // POST for the kids' ID over HTTP/1.1: the blocked answer, EDE and all.
    let out = curl("/dns-query/kid-tablet", &[post[0], post[1], post[2], &data]);
    assert_eq!(out, "200 application/dns-message", "{out}");
    let answer = Message::from_vec(&std::fs::read(setup.daemon.path("answer.bin")).unwrap()).unwrap();
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(answer.metadata.response_code, hickory_proto::op::ResponseCode::NXDomain);
    // Not a DNS query: each gets its HTTP error, none an answer.
    assert!(curl("/other", &[post[0], post[1], post[2], &data]).starts_with("404"));
    assert!(curl("/dns-query", &["--data-binary", &data]).starts_with("415"));
    assert!(curl("/dns-query?dns=%%%", &[]).starts_with("400"));
    assert!(curl("/dns-query", &["-X", "PUT", "--data-binary", &data]).starts_with("405"));
    assert!(curl("/dns-query/a/b", &[]).starts_with("404"));
}

#[test]
fn doq_answers_with_the_profile_of_its_server_name() {
    let Some(setup) = start() else { return };
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let mut query = Message::query();
    // RFC 9250 §4.2.1: the message ID is 0 over QUIC.
    query.metadata.id = 0;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii("blocked.example.test.").unwrap(),
        RecordType::A,
    ));
    let bytes = query.to_vec().unwrap();
    let ask = |server_name: &str| {
        let answer = shieldns_test_support::doq::query(setup.doq, server_name, &setup.ca_pem, &bytes)
            .unwrap_or_else(|e| panic!("DoQ as {server_name}: {e}\n{}", setup.daemon.log_text()));
        Message::from_vec(&answer).unwrap()
    };
    assert_eq!(ask("dns.test").metadata.response_code, ResponseCode::NoError);
    let answer = ask("kid-tablet.dns.test");
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.metadata.id, 0);
    // Several queries, each its own stream, on one endpoint after another.
    for _ in 0..3 {
        assert_eq!(
            ask("kid-tablet.dns.test").metadata.response_code,
            ResponseCode::NXDomain
        );
    }
}

/// `shieldns_resolver_discarded_total{reason}` from the metrics endpoint.
fn discarded(metrics: u16, reason: &str) -> u64 {
    let prefix = format!("shieldns_resolver_discarded_total{{reason=\"{reason}\"}} ");
    shieldns_test_support::daemon::scrape(metrics)
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

/// Asks `ask` until it answers NOERROR, for at most five seconds.
fn answers_again(ask: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = ask();
        if kdig_status(&out) == "NOERROR" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never answered again: {out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_listener_caps_its_handshakes_and_connections_per_client_prefix() {
    let Some(setup) = start() else { return };
    let ca = setup.daemon.path("ca.pem");
    let ask = || dot_allowed(setup.dot_capped, &ca);
    let out = ask();
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    // Two connections that never send a ClientHello hold the /24's two
    // handshake places (until the handshake timeout): a third client of the
    // prefix is closed at accept and counted; the other listeners are not
    // affected.
    let silent: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(setup.dot_capped).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = ask();
    assert_ne!(kdig_status(&out), "NOERROR", "{out}");
    assert!(discarded(setup.metrics, "prefix_handshake_limit") >= 1);
    let out = dot_allowed(setup.dot, &ca);
    assert_eq!(kdig_status(&out), "NOERROR", "{out}");
    // Closed, they give their places back.
    drop(silent);
    answers_again(ask);
    // Three open connections, handshakes done, hold the prefix's three
    // connection places.
    let mut message = hickory_proto::op::Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("allowed.example.test.").unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    let query = message.to_vec().unwrap();
    let mut open: Vec<_> = (0..3)
        .map(|_| shieldns_test_support::tls::DotClient::connect(setup.dot_capped, "dns.test", &setup.ca_pem))
        .collect();
    for client in &mut open {
        client.query(&query).expect("an admitted connection answers");
    }
    let out = ask();
    assert_ne!(kdig_status(&out), "NOERROR", "{out}");
    assert!(discarded(setup.metrics, "prefix_connection_limit") >= 1);
    // The open ones keep answering; one closed frees a place.
    open[0].query(&query).expect("still answered");
    open.pop();
    answers_again(ask);
}
