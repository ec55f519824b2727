//! The PROXY protocol through a real dnsdist (`useProxyProtocol=true`) in
//! front of shieldns: two clients behind it get their own profiles over UDP
//! and TCP, and a PROXY header from a source not in `trusted_proxies` is
//! dropped and counted.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, dig_at, free_port, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/proxied.toml");
const DNSDIST: &str = include_str!("fixtures/dnsdist.conf");

/// dnsdist, stopped (by its PID) when dropped.
struct Dnsdist(Child);

impl Drop for Dnsdist {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn clients_behind_dnsdist_get_their_own_profiles() {
    if !require(&[("dig", "bind9-dnsutils"), ("dnsdist", "dnsdist")]) {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = Daemon::start(
        &CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string()),
        &[("adult.txt", "blocked.example.test\n")],
    );
    let front = free_port("127.0.0.2");
    let conf = daemon.path("dnsdist.conf");
    std::fs::write(
        &conf,
        DNSDIST
            .replace("@FRONT@", &front.to_string())
            .replace("@BACKEND@", &daemon.addr.port().to_string()),
    )
    .unwrap();
    let log = std::fs::File::create(daemon.path("dnsdist.log")).unwrap();
    let _dnsdist = Dnsdist(
        Command::new("dnsdist")
            .args(["--supervised", "--disable-syslog", "-C"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dnsdist"),
    );
    let front = SocketAddr::from(([127, 0, 0, 2], front));
    // dnsdist answers once its backend's first health check passed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = dig_at(front, &["-b", "127.0.0.12", "allowed.example.test", "A"]);
        if status(&out) == "NOERROR" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dnsdist never answered: {out}\n{}",
            std::fs::read_to_string(daemon.path("dnsdist.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for transport in [&[][..], &["+tcp"][..]] {
        let ask = |client: &str| {
            let mut args = vec!["-b", client];
            args.extend_from_slice(transport);
            args.extend(["blocked.example.test", "A"]);
            dig_at(front, &args)
        };
        // The kids' address is blocked, the other client is not: shieldns
        // sees each client, not dnsdist.
        let out = ask("127.0.0.11");
        assert_eq!(status(&out), "NXDOMAIN", "{transport:?}: {out}");
        assert!(out.contains("list=adult category=adult"), "{out}");
        let out = ask("127.0.0.12");
        assert_eq!(status(&out), "NOERROR", "{transport:?}: {out}");
    }
    // A PROXY header claiming the kids' address from an untrusted source
    // gets no answer at all.
    let socket = UdpSocket::bind("127.0.0.20:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut datagram = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    datagram.extend([0x21, 0x12, 0, 12, 127, 0, 0, 11, 127, 0, 0, 1, 0x30, 0x39, 0, 53]);
    datagram.extend([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    datagram.extend(b"\x07allowed\x07example\x04test\x00\x00\x01\x00\x01");
    socket.send_to(&datagram, daemon.addr).unwrap();
    let mut answer = [0u8; 512];
    assert!(
        socket.recv_from(&mut answer).is_err(),
        "an untrusted PROXY header was answered"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains("reason=\"untrusted_proxy\"")
        && !daemon.log_text().contains("reason=untrusted_proxy")
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}
