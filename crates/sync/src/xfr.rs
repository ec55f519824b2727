//! RPZ feeds by zone transfer (`source = "axfr://host:port/zone"`): an SOA
//! query first, then AXFR for the first copy and IXFR (RFC 1995) when the
//! serial changes, optionally TSIG-signed (RFC 8945), over hickory's DNS
//! client.
//!
//! The zone is kept as text, one record per line in hickory's presentation
//! form, which the RPZ parser reads like any published zone file. An
//! incremental transfer is applied to the cached text; a server that answers
//! IXFR with a full zone (RFC 1995 allows it; NSD does) is handled as an
//! AXFR. From there on a transfer goes through the same checks as a
//! download: size cap, parse, shrink guard, atomic cache write.

use futures_util::StreamExt as _;
use hickory_net::DnsMultiplexer;
use hickory_net::client::{Client, ClientHandle as _};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

use crate::fetch::{self, Fetched};
use crate::{SyncConfig, SyncError, Transfer};

/// TSIG fudge: the clock difference tolerated between us and the server.
const TSIG_FUDGE_SECONDS: u16 = 300;

/// Runs a transfer with the download settings' timeout and retries.
/// `zone` is the version in force: its SOA serial and its text.
pub(crate) async fn get(
    config: &SyncConfig,
    list: &str,
    source: &str,
    transfer: &Transfer,
    max_bytes: u64,
    zone: Option<(u32, Vec<u8>)>,
) -> Result<Fetched, SyncError> {
    let request = Request {
        list,
        source,
        transfer,
        max_bytes,
        zone: zone.as_ref().map(|(serial, text)| (*serial, text.as_slice())),
    };
    let mut attempt = 0;
    loop {
        let result = match tokio::time::timeout(config.timeout, request.once(config)).await {
            Ok(result) => result,
            Err(_) => Err(SyncError::Timeout {
                list: list.to_owned(),
                url: source.to_owned(),
                after: config.timeout,
            }),
        };
        match result {
            Err(error) if attempt < config.retries && fetch::retryable(&error) => {
                let wait = fetch::backoff(config.retry_backoff, attempt);
                tracing::warn!(list, attempt = attempt + 1, "zone transfer failed, retrying: {error}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

struct Request<'a> {
    list: &'a str,
    source: &'a str,
    transfer: &'a Transfer,
    max_bytes: u64,
    zone: Option<(u32, &'a [u8])>,
}

/// Aborts the client's background task when the transfer ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Request<'_> {
    fn transport(&self, reason: impl std::fmt::Display) -> SyncError {
        SyncError::Transport {
            list: self.list.to_owned(),
            url: self.source.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, reason: impl Into<String>) -> SyncError {
        SyncError::Transfer {
            list: self.list.to_owned(),
            server: self.source.to_owned(),
            reason: reason.into(),
        }
    }

    async fn once(&self, config: &SyncConfig) -> Result<Fetched, SyncError> {
        let transfer = self.transfer;
        let address = tokio::net::lookup_host((transfer.host.as_str(), transfer.port))
            .await
            .map_err(|e| self.transport(format!("cannot resolve {}: {e}", transfer.host)))?
            .next()
            .ok_or_else(|| self.transport(format!("{} has no address", transfer.host)))?;
        let (connect, handle) =
            TcpClientStream::new(address, None, Some(config.connect_timeout), TokioRuntimeProvider::new());
        let stream = connect.await.map_err(|e| self.transport(e))?;
        let mut multiplexer = DnsMultiplexer::new(stream, handle).with_timeout(config.timeout);
        if let Some(key) = &transfer.tsig {
            let bad_key = |e: &dyn std::fmt::Display| self.refused(format!("tsig key `{}`: {e}", key.name));
            let name = Name::from_ascii(&key.name).map_err(|e| bad_key(&e))?;
            let algorithm = TsigAlgorithm::from_name(Name::from_ascii(&key.algorithm).map_err(|e| bad_key(&e))?);
            let signer =
                TSigner::new(key.secret.clone(), algorithm, name, TSIG_FUDGE_SECONDS).map_err(|e| bad_key(&e))?;
            multiplexer = multiplexer.with_signer(signer);
        }
        let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
        let _background = AbortOnDrop(tokio::spawn(async move {
            let _ = background.await;
        }));
        let origin = Name::from_ascii(&transfer.zone).map_err(|e| self.refused(format!("bad zone name: {e}")))?;

        // The SOA tells whether anything changed, without a transfer.
        let response = client
            .query(origin.clone(), DNSClass::IN, RecordType::SOA)
            .await
            .map_err(|e| self.transport(e))?;
        if response.metadata.response_code != ResponseCode::NoError {
            return Err(self.refused(format!(
                "the SOA query was answered {}",
                response.metadata.response_code
            )));
        }
        let soa = response
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                self.refused(format!(
                    "no SOA for {}: is the server authoritative for it?",
                    transfer.zone
                ))
            })?;
        if self.zone.is_some_and(|(serial, _)| serial == soa.serial) {
            return Ok(Fetched::NotModified);
        }

        // IXFR from the serial in force, or AXFR for a first copy.
        let since = self.zone.map(|(serial, _)| {
            let mut old = soa.clone();
            old.serial = serial;
            // hickory names the IXFR query's SOA record after MNAME and
            // asserts MNAME is the zone; servers read only the serial, and
            // RFC 1995 wants the record owned by the zone, so make it so.
            old.mname = origin.clone();
            old
        });
        let mut responses = client.zone_transfer(origin.clone(), since);
        let mut records = Vec::new();
        let mut size: u64 = 0;
        while let Some(response) = responses.next().await {
            let response = response.map_err(|e| {
                // A server that refuses our key answers NOTAUTH with an
                // unsigned (BADSIG/BADKEY) TSIG record, which hickory reports
                // as a verification error: say what it means.
                let text = e.to_string();
                let lower = text.to_ascii_lowercase();
                match &transfer.tsig {
                    Some(key) if lower.contains("tsig") || lower.contains("hmac") => self.refused(format!(
                        "TSIG verification failed (does the server have key `{}` with this secret?): {text}",
                        key.name
                    )),
                    _ => self.transport(text),
                }
            })?;
            if response.metadata.response_code != ResponseCode::NoError {
                return Err(self.refused(format!("the server answered {}", response.metadata.response_code)));
            }
            for record in &response.answers {
                size += u64::try_from(record.to_string().len() + 1).unwrap_or(u64::MAX);
                if size > self.max_bytes {
                    return Err(SyncError::TooLarge {
                        list: self.list.to_owned(),
                        url: self.source.to_owned(),
                        max_bytes: self.max_bytes,
                    });
                }
                records.push(record.clone());
            }
        }
        let applied = apply(&origin, &records, self.zone).map_err(|reason| self.refused(reason))?;
        Ok(match applied {
            Applied::Current => Fetched::NotModified,
            Applied::Zone { text, serial } => Fetched::Body {
                bytes: text.into_bytes(),
                etag: None,
                last_modified: None,
                soa_serial: Some(serial),
            },
        })
    }
}

/// The result of applying a transfer.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// The server says the zone in force is current.
    Current,
    /// The new zone text and its SOA serial.
    Zone { text: String, serial: u32 },
}

fn soa_serial(record: &Record) -> Option<u32> {
    match &record.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    }
}

/// A record's identity for IXFR deletions: everything but the TTL (RFC
/// 1995 deletes by name, class, type and data), case-folded.
fn identity(line: &str) -> String {
    let mut fields = line.split_whitespace();
    let owner = fields.next().unwrap_or_default();
    let _ttl = fields.next();
    let rest: Vec<&str> = fields.collect();
    format!("{} {}", owner, rest.join(" ")).to_ascii_lowercase()
}

fn is_soa_line(line: &str) -> bool {
    line.split_whitespace()
        .nth(3)
        .is_some_and(|t| t.eq_ignore_ascii_case("SOA"))
}

/// Turns a transfer's records into the new zone text: a full zone (AXFR,
/// or IXFR answered in full) replaces the old one; an incremental answer
/// is applied to `current`.
fn apply(origin: &Name, records: &[Record], current: Option<(u32, &[u8])>) -> Result<Applied, String> {
    let first = records.first().ok_or("the transfer is empty")?;
    let serial = soa_serial(first).ok_or("the transfer does not start with the zone's SOA")?;
    if records.len() == 1 {
        // An IXFR answer of one SOA: the client is up to date.
        return match current {
            Some((ours, _)) if ours == serial => Ok(Applied::Current),
            _ => Err("the transfer holds only an SOA".into()),
        };
    }
    let last = records.last().and_then(soa_serial);
    if last != Some(serial) {
        return Err("the transfer does not end with the zone's SOA (truncated?)".into());
    }
    let incremental = match current {
        Some((ours, _)) => ours != serial && records.get(1).and_then(soa_serial) == Some(ours),
        None => false,
    };
    let mut lines: Vec<String> = if incremental {
        let text = current
            .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
            .unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('$') && !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        let end = records.len() - 1;
        let mut i = 1;
        while i < end {
            // One difference sequence: old SOA, deletions, new SOA, additions.
            i += 1;
            while i < end && soa_serial(&records[i]).is_none() {
                let gone = identity(&records[i].to_string());
                lines.retain(|l| identity(l) != gone);
                i += 1;
            }
            if i >= end {
                return Err("malformed IXFR: deletions without the new version's SOA".into());
            }
            i += 1;
            while i < end && soa_serial(&records[i]).is_none() {
                lines.push(records[i].to_string());
                i += 1;
            }
        }
        lines.retain(|l| !is_soa_line(l));
        lines.insert(0, first.to_string());
        lines
    } else {
        records[..records.len() - 1].iter().map(ToString::to_string).collect()
    };
    lines.insert(0, format!("$ORIGIN {origin}"));
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(Applied::Zone { text, serial })
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::rdata::{CNAME, SOA};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn soa(serial: u32) -> Record {
        let rdata = SOA::new(
            name("ns.rpz.test."),
            name("admin.rpz.test."),
            serial,
            3600,
            600,
            86400,
            60,
        );
        Record::from_rdata(name("rpz.test."), 60, RData::SOA(rdata))
    }

    fn block(owner: &str) -> Record {
        Record::from_rdata(
            name(&format!("{owner}.rpz.test.")),
            60,
            RData::CNAME(CNAME(Name::root())),
        )
    }

    fn zone(applied: Applied) -> (String, u32) {
        match applied {
            Applied::Zone { text, serial } => (text, serial),
            Applied::Current => panic!("expected a zone"),
        }
    }

    #[test]
    fn a_full_transfer_becomes_zone_text_the_rpz_parser_reads() {
        let origin = name("rpz.test.");
        let records = [soa(1), block("a.example"), block("b.example"), soa(1)];
        let (text, serial) = zone(apply(&origin, &records, None).unwrap());
        assert_eq!(serial, 1);
        assert_eq!(
            text,
            "$ORIGIN rpz.test.\nrpz.test. 60 IN SOA ns.rpz.test. admin.rpz.test. 1 3600 600 86400 60\n\
             a.example.rpz.test. 60 IN CNAME .\nb.example.rpz.test. 60 IN CNAME .\n"
        );
        let mut sink = shieldns_index::format::CountingSink::default();
        shieldns_index::parse(shieldns_index::ListFormat::Rpz, text.as_bytes(), &mut sink);
        assert_eq!((sink.counts.rules, sink.counts.rejected), (2, 0));
    }

    #[test]
    fn an_incremental_transfer_is_applied_to_the_zone_in_force() {
        let origin = name("rpz.test.");
        let (v1, _) = zone(apply(&origin, &[soa(1), block("a.example"), block("b.example"), soa(1)], None).unwrap());
        // 1 → 2 deletes b, adds c; 2 → 3 adds d.
        let records = [
            soa(3),
            soa(1),
            block("b.example"),
            soa(2),
            block("c.example"),
            soa(2),
            soa(3),
            block("d.example"),
            soa(3),
        ];
        let (v3, serial) = zone(apply(&origin, &records, Some((1, v1.as_bytes()))).unwrap());
        assert_eq!(serial, 3);
        assert_eq!(
            v3,
            "$ORIGIN rpz.test.\nrpz.test. 60 IN SOA ns.rpz.test. admin.rpz.test. 3 3600 600 86400 60\n\
             a.example.rpz.test. 60 IN CNAME .\nc.example.rpz.test. 60 IN CNAME .\n\
             d.example.rpz.test. 60 IN CNAME .\n"
        );
        // A lone SOA with our serial: current.
        assert_eq!(
            apply(&origin, &[soa(3)], Some((3, v3.as_bytes()))),
            Ok(Applied::Current)
        );
        // An IXFR answered in full replaces the zone.
        let (full, _) = zone(apply(&origin, &[soa(4), block("e.example"), soa(4)], Some((3, v3.as_bytes()))).unwrap());
        assert!(full.contains("e.example") && !full.contains("a.example"), "{full}");
    }

    #[test]
    fn malformed_transfers_are_refused() {
        let origin = name("rpz.test.");
        assert!(apply(&origin, &[], None).is_err());
        assert!(apply(&origin, &[block("a.example"), soa(1)], None).is_err());
        let truncated = apply(&origin, &[soa(2), block("a.example")], None).unwrap_err();
        assert!(truncated.contains("truncated"), "{truncated}");
        let v1 = "$ORIGIN rpz.test.\nrpz.test. 60 IN SOA ns. admin. 1 1 1 1 1\n";
        let broken = apply(
            &origin,
            &[soa(2), soa(1), block("a.example"), soa(2)],
            Some((1, v1.as_bytes())),
        );
        assert!(broken.is_err(), "{broken:?}");
    }
}
