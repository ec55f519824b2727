//! The request path as a whole, fuzzed: mutated real queries (the seed
//! corpus in `fuzz/seeds/queries/`) and noise, sent over UDP from an allowed
//! and a refused source and over TCP, to a running `shieldns run`. Every
//! reply must be a response no larger than the rules allow, and the daemon
//! must still be alive and answering at the end.
//!
//! `SHIELDNS_FUZZ_ITERATIONS` sets the number of inputs (default 20,000, the
//! smoke run `cargo test` does; the figures in `benches/RESULTS.md` come
//! from long runs with it raised).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, repo_root, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/fuzz_request_path.toml");

/// xorshift64: the mutations need to be cheap and reproducible, not good.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

/// One input: a seed with a few mutations (bit flips, byte writes, count
/// and label-length changes, cuts, repeats, random tails), or noise.
fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(20) == 0 {
        let len = rng.below(700);
        return (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
    }
    let mut packet = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let len = packet.len().max(1);
        match rng.below(7) {
            0 => {
                let at = rng.below(len);
                if let Some(byte) = packet.get_mut(at) {
                    *byte ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(len);
                if let Some(byte) = packet.get_mut(at) {
                    *byte = rng.next().to_le_bytes()[0];
                }
            }
            // A section count (header bytes 4..12).
            2 => {
                let at = 4 + rng.below(8);
                if let Some(byte) = packet.get_mut(at) {
                    *byte = [0, 1, 2, 0xff][rng.below(4)];
                }
            }
            // A label length or pointer inside the question.
            3 => {
                let at = 12 + rng.below(len.saturating_sub(12).max(1));
                if let Some(byte) = packet.get_mut(at) {
                    *byte = [0, 63, 64, 0xc0, 0xff][rng.below(5)];
                }
            }
            4 => packet.truncate(rng.below(len + 1)),
            5 => {
                let from = rng.below(len);
                let chunk: Vec<u8> = packet.get(from..).unwrap_or_default().to_vec();
                packet.extend_from_slice(&chunk);
            }
            _ => {
                for _ in 0..rng.below(40) {
                    packet.push(rng.next().to_le_bytes()[0]);
                }
            }
        }
    }
    packet.truncate(4096);
    packet
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = repo_root().join("fuzz/seeds/queries");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "the seed corpus in {}", dir.display());
    seeds
}

fn udp_from(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Reads every reply waiting on `socket`, checking each; returns how many.
fn drain(socket: &UdpSocket, refused_source: bool, sent: &std::collections::HashMap<u16, usize>) -> usize {
    let mut buffer = [0u8; 65_536];
    let mut count = 0;
    while let Ok((len, _)) = socket.recv_from(&mut buffer) {
        let reply = &buffer[..len];
        assert!(len >= 12, "a reply without a header: {reply:?}");
        assert_eq!(reply[2] & 0x80, 0x80, "a reply that is not a response: {reply:?}");
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        if refused_source {
            assert_eq!(reply[3] & 0x0f, 5, "a refused source got more than REFUSED: {reply:?}");
            if let Some(&asked) = sent.get(&id) {
                assert!(len <= asked, "REFUSED ({len} bytes) larger than the query ({asked})");
            }
        } else {
            assert!(len <= 1232, "a UDP reply over the payload limit: {len}");
        }
        count += 1;
    }
    count
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nonblocking(true).unwrap();
    stream
}

#[test]
fn the_request_path_takes_any_input() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let iterations: usize = std::env::var("SHIELDNS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let mut daemon = Daemon::start(
        &CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string()),
        &[("adult.txt", "blocked.example.test\n")],
    );
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::try_from(iterations).unwrap());
    let (insider, outsider) = (udp_from("127.0.0.1"), udp_from("127.0.0.200"));
    let mut sent_out = std::collections::HashMap::new();
    let mut tcp = connect(daemon.addr);
    let (mut replies, mut tcp_inputs, mut tcp_bytes) = (0, 0, 0usize);
    let started = Instant::now();
    for i in 0..iterations {
        let packet = input(&mut rng, &seeds);
        match i % 16 {
            // Over TCP, framed (sometimes with a wrong length).
            0 => {
                let length = if rng.below(10) == 0 {
                    u16::try_from(rng.below(70_000) % 65_536).unwrap()
                } else {
                    u16::try_from(packet.len()).unwrap()
                };
                let mut framed = length.to_be_bytes().to_vec();
                framed.extend_from_slice(&packet);
                tcp_inputs += 1;
                if tcp.write_all(&framed).is_err() {
                    // The server closed it (a bad frame): a new connection.
                    tcp = connect(daemon.addr);
                }
                let mut buffer = [0u8; 65_536];
                while let Ok(read) = tcp.read(&mut buffer) {
                    if read == 0 {
                        tcp = connect(daemon.addr);
                        break;
                    }
                    tcp_bytes += read;
                }
            }
            1..=4 => {
                // A fresh ID per input, so each REFUSED is matched with its
                // own query's size.
                let mut packet = packet;
                let id = u16::try_from(i % 65_536).unwrap();
                if packet.len() >= 2 {
                    packet[..2].copy_from_slice(&id.to_be_bytes());
                    sent_out.insert(id, packet.len());
                }
                let _ = outsider.send_to(&packet, daemon.addr);
            }
            _ => {
                let _ = insider.send_to(&packet, daemon.addr);
            }
        }
        // Keep the socket buffers from overflowing and check as we go.
        if i % 64 == 63 {
            replies += drain(&insider, false, &sent_out) + drain(&outsider, true, &sent_out);
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    replies += drain(&insider, false, &sent_out) + drain(&outsider, true, &sent_out);
    let elapsed = started.elapsed();
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon died:\n{}",
        daemon.log_text()
    );
    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "still answering after the inputs: {out}");
    let out = daemon.dig(&["+tcp", "blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "TCP still answering: {out}");
    eprintln!(
        "{iterations} inputs ({tcp_inputs} over TCP) in {elapsed:?}: {replies} UDP replies checked, \
         {tcp_bytes} TCP bytes back, no crash"
    );
}
