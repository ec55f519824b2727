//! A fake upstream DNS server for forward-mode tests: answers a fixed zone
//! over UDP and TCP on loopback, and can be switched off to test failover
//! and serve-stale.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A running fake upstream.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    answering: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub queries: Arc<AtomicUsize>,
}

type Zone = HashMap<(String, RecordType), Vec<Record>>;

fn zone(ttl: u32) -> Zone {
    let mut zone: Zone = HashMap::new();
    let mut add = |name: &str, rdata: RData| {
        let owner = Name::from_ascii(name).expect("test name");
        let rtype = rdata.record_type();
        zone.entry((name.to_owned(), rtype))
            .or_default()
            .push(Record::from_rdata(owner, ttl, rdata));
    };
    for name in [
        "www.example.test.",
        "allowed.example.test.",
        "blocked.example.test.",
        "sub.blocked.example.test.",
        "mandatory.example.test.",
        "global.example.test.",
        "reload.example.test.",
        "stale.example.test.",
    ] {
        add(name, RData::A(A::new(192, 0, 2, 10)));
        add(name, RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)));
    }
    add("bad-ip.example.test.", RData::A(A::new(198, 51, 100, 66)));
    // Policy fixtures: a cloaked tracker, rebinding, an IPv4-only name,
    // scheduled and safe-search names (targets as the engines document).
    add(
        "cloaked.example.test.",
        RData::CNAME(hickory_proto::rr::rdata::CNAME(
            Name::from_ascii("tracker.adnet.test.").expect("name"),
        )),
    );
    add("tracker.adnet.test.", RData::A(A::new(192, 0, 2, 77)));
    add("rebind.example.test.", RData::A(A::new(10, 0, 0, 1)));
    add("nas.home.arpa.", RData::A(A::new(192, 168, 1, 10)));
    add("v4only.example.test.", RData::A(A::new(192, 0, 2, 33)));
    add("games.example.test.", RData::A(A::new(192, 0, 2, 90)));
    add("forcesafesearch.google.com.", RData::A(A::new(216, 239, 38, 120)));
    add("restrictmoderate.youtube.com.", RData::A(A::new(216, 239, 38, 119)));
    add("strict.bing.com.", RData::A(A::new(204, 79, 197, 220)));
    let chunk = "x".repeat(200);
    for i in 0..12 {
        add(
            "big.example.test.",
            RData::TXT(TXT::new(vec![format!("{i:02}{chunk}")])),
        );
    }
    zone
}

impl FakeUpstream {
    /// Starts answering on `addr` (port 0 picks one; UDP and TCP share it).
    pub fn start(ip: &str, ttl: u32) -> Self {
        // UDP picks the port; TCP on the same number can be taken (another
        // test's outgoing connection may hold it), so try a few UDP ports.
        let (udp, tcp) = (0..32)
            .find_map(|_| {
                let udp = UdpSocket::bind(format!("{ip}:0")).expect("bind fake upstream");
                let addr = udp.local_addr().expect("local addr");
                TcpListener::bind(addr).ok().map(|tcp| (udp, tcp))
            })
            .expect("no port free for both UDP and TCP in 32 tries");
        let addr = udp.local_addr().expect("local addr");
        udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        let answering = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let zone = Arc::new(zone(ttl));
        {
            let (answering, stop, queries, zone) = (answering.clone(), stop.clone(), queries.clone(), zone.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, peer)) = udp.recv_from(&mut buffer) {
                        queries.fetch_add(1, Ordering::Relaxed);
                        if !answering.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Some(reply) = answer(&zone, &buffer[..len], Some(1232)) {
                            let _ = udp.send_to(&reply, peer);
                        }
                    }
                }
            });
        }
        {
            let (answering, stop, zone) = (answering.clone(), stop.clone(), zone.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut stream, _)) => {
                            if !answering.load(Ordering::Relaxed) {
                                continue;
                            }
                            stream.set_nonblocking(false).ok();
                            stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                            let mut length = [0u8; 2];
                            while stream.read_exact(&mut length).is_ok() {
                                let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                                if stream.read_exact(&mut query).is_err() {
                                    break;
                                }
                                if let Some(reply) = answer(&zone, &query, None) {
                                    let mut framed = u16::try_from(reply.len()).expect("fits").to_be_bytes().to_vec();
                                    framed.extend_from_slice(&reply);
                                    if stream.write_all(&framed).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        Self {
            addr,
            answering,
            stop,
            queries,
        }
    }

    /// Stops or resumes answering (queries are still received and dropped).
    pub fn set_answering(&self, on: bool) {
        self.answering.store(on, Ordering::Relaxed);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(zone: &Zone, query: &[u8], udp_limit: Option<usize>) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let key = (question.name().to_ascii().to_ascii_lowercase(), question.query_type());
    // Like a recursive upstream, follow one CNAME to the target's records.
    let via_cname = zone
        .get(&(key.0.clone(), RecordType::CNAME))
        .filter(|_| key.1 != RecordType::CNAME);
    match (zone.get(&key), via_cname) {
        (Some(records), _) => {
            response.add_answers(records.iter().cloned());
        }
        (None, Some(cnames)) => {
            response.add_answers(cnames.iter().cloned());
            for cname in cnames {
                if let RData::CNAME(target) = &cname.data {
                    let target_key = (target.0.to_ascii().to_ascii_lowercase(), key.1);
                    response.add_answers(zone.get(&target_key).into_iter().flatten().cloned());
                }
            }
        }
        (None, None) => {
            let exists = zone.keys().any(|(name, _)| *name == key.0);
            response.metadata.response_code = if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            let soa = SOA::new(
                Name::from_ascii("ns.example.test.").ok()?,
                Name::from_ascii("hostmaster.example.test.").ok()?,
                1,
                3600,
                600,
                86400,
                300,
            );
            response.add_authority(Record::from_rdata(
                Name::from_ascii("example.test.").ok()?,
                300,
                RData::SOA(soa),
            ));
        }
    }
    let bytes = response.to_vec().ok()?;
    match udp_limit {
        Some(limit) if bytes.len() > limit => {
            let mut truncated = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
            truncated.add_query(question);
            truncated.metadata.truncation = true;
            truncated.to_vec().ok()
        }
        _ => Some(bytes),
    }
}
