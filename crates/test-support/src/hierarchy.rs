//! A fake DNS hierarchy on loopback, for recursion tests.
//!
//! Each server is a Debian `nsd` process on its own loopback address at port 53 (hickory's
//! recursor only ever queries port 53). With `instance = X` the servers are:
//!
//! | server    | address       | zones                          | DNSSEC                              |
//! |-----------|---------------|--------------------------------|-------------------------------------|
//! | `root`    | 127.53.X.1    | `.`                            | signed, trust anchor = its KSK      |
//! | `tld`     | 127.53.X.2    | `test.`                        | signed, DS in `.`                   |
//! | `example` | 127.53.X.3    | `example.test.`, `other.test.` | unsigned (insecure delegations)     |
//! | `signed`  | 127.53.X.4    | `signed.test.`                 | signed, DS in `test.`: secure       |
//! | `bogus`   | 127.53.X.5    | `bogus.test.`                  | signed, but `test.` has a DS for a key `bogus.test.` never publishes: bogus |
//!
//! Failure zones, all unsigned and served by `example` (127.53.X.3), each with a
//! second, broken server listed first and last in turn by resolvers' random choice:
//!
//! | zone             | its NS                                   | what goes wrong                               |
//! |------------------|------------------------------------------|-----------------------------------------------|
//! | `lame.test.`     | `ns1.bogus.test.`, `ns1.example.test.`   | `bogus` is not authoritative: REFUSED (lame)  |
//! | `retry.test.`    | `ns1.signed.test.`, `ns1.example.test.`  | `signed` has a broken zone file: SERVFAIL     |
//! | `glueless.test.` | `ns.other.test.` only                    | no glue anywhere: the NS name must be resolved |
//!
//! Zone data (default TTL 3600, SOA minimum / negative TTL 300; anything absent is NXDOMAIN):
//!
//! ```text
//! .             NS ns1.root.          ns1.root. A 127.53.X.1
//! test.         NS ns1.nic.test.      ns1.nic.test. A 127.53.X.2 (glue)     + DS
//! example.test. NS ns1.example.test.  ns1.example.test. A 127.53.X.3 (glue)
//! other.test.   NS ns1.example.test.  (same server as example.test.)
//! signed.test.  NS ns1.signed.test.   ns1.signed.test. A 127.53.X.4 (glue)  + DS
//! bogus.test.   NS ns1.bogus.test.    ns1.bogus.test. A 127.53.X.5 (glue)   + DS (of an unpublished key)
//!
//! www.example.test.              A     192.0.2.10
//! www.example.test.              AAAA  2001:db8::10
//! alias.example.test.            CNAME www.other.test.          (cross-zone CNAME)
//! blocked.example.test.          A     192.0.2.66
//! sub.blocked.example.test.      A     192.0.2.67
//! ads.example.test.              A     192.0.2.70
//! cname-to-blocked.example.test. CNAME blocked.example.test.
//! rebind.example.test.           A     10.0.0.1
//! ttl1.example.test.        60   A     192.0.2.11
//! mx.example.test.               MX    10 mail.example.test.
//! mail.example.test.             A     192.0.2.25
//! big.example.test.              TXT   x10, 200 characters each (> 2000 bytes: TC over UDP at 1232)
//! www.other.test.                A     192.0.2.20
//! www.signed.test.               A     192.0.2.30
//! www.signed.test.               AAAA  2001:db8::30
//! www.bogus.test.                A     192.0.2.40
//! dangling.example.test.         CNAME nothing.other.test.      (target NXDOMAIN)
//! www.lame.test.                 A     192.0.2.50
//! www.retry.test.                A     192.0.2.51
//! www.glueless.test.             A     192.0.2.52
//! ns.other.test.                 A     127.53.X.3
//! ```
//!
//! Signing uses `ldns-keygen` / `ldns-signzone` (ECDSAP256SHA256, a KSK and a ZSK per signed
//! zone, NSEC, signatures valid from one hour ago to 30 days ahead). When those tools are
//! missing the hierarchy is served unsigned (same names, no DS/RRSIG) and
//! [`Hierarchy::trust_anchor_file`] returns `None`.
//!
//! API:
//!
//! ```ignore
//! let Some(h) = Hierarchy::start(7) else { return }; // prints "SKIP: ..." when impossible
//! h.root;                        // IpAddr 127.53.7.1
//! h.addr(Server::Example);       // IpAddr 127.53.7.3 (also h.server_addr("example"))
//! h.root_hints_file();           // ". NS ns1.root." + "ns1.root. A 127.53.7.1"
//! h.trust_anchor_file();         // Some(path): ". 3600 IN DNSKEY 257 3 13 <base64>" (hickory format)
//! h.root_dnskey(); h.root_ds();  // the same anchor as text (DNSKEY / DS)
//! h.stop_server("example");      // kill one server (returns once it stopped answering)
//! ```
//!
//! Resolver configuration notes: hickory's recursor refuses to query 127.0.0.0/8 by default
//! (`deny_server`), so recursion tests must allow `127.53.0.0/16` (`allow_server`).
//!
//! Cleanup: servers are killed when the [`Hierarchy`] is dropped. A watchdog `sh` holds a pipe
//! from the test process; when the test process exits without dropping (a `static`, a
//! `process::exit`, a SIGKILL) the pipe closes and the watchdog kills the servers and removes
//! the temporary directory.
//!
//! Environment: `SHIELDNS_HIERARCHY_KEEP=1` keeps the directory (zones, keys, each server's
//! `nsd.conf` and `nsd.log`) for debugging, its path is printed at start;
//! `SHIELDNS_HIERARCHY_UNSIGNED=1` serves every zone unsigned.
//!
//! Required packages (Debian): `nsd`, `ldnsutils` (signing); the self-test also uses
//! `bind9-dnsutils` (`dig`) and `ldnsutils` (`drill`).
use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the servers may take to answer after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Number of TXT records at `big.example.test.` and the length of each.
pub const BIG_TXT_COUNT: usize = 10;
pub const BIG_TXT_LEN: usize = 200;

/// The zone-file key of the file nsd cannot load.
const BROKEN_ZONE: &str = "broken";

/// One of the fake servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The root, 127.53.X.1.
    Root,
    /// `test.`, 127.53.X.2.
    Tld,
    /// `example.test.` and `other.test.`, 127.53.X.3 (unsigned).
    Example,
    /// `signed.test.`, 127.53.X.4 (secure).
    Signed,
    /// `bogus.test.`, 127.53.X.5 (bogus).
    Bogus,
}

impl Server {
    pub const ALL: [Self; 5] = [Self::Root, Self::Tld, Self::Example, Self::Signed, Self::Bogus];

    /// Last octet of the server's address.
    pub fn host(self) -> u8 {
        match self {
            Self::Root => 1,
            Self::Tld => 2,
            Self::Example => 3,
            Self::Signed => 4,
            Self::Bogus => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Tld => "tld",
            Self::Example => "example",
            Self::Signed => "signed",
            Self::Bogus => "bogus",
        }
    }

    /// Accepts the server name, or a zone it serves ("test", "other", "example.test." ...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim_end_matches('.') {
            "root" | "" => Some(Self::Root),
            "tld" | "test" => Some(Self::Tld),
            "example" | "other" | "example.test" | "other.test" => Some(Self::Example),
            "signed" | "signed.test" => Some(Self::Signed),
            "bogus" | "bogus.test" => Some(Self::Bogus),
            _ => None,
        }
    }

    /// The zones this server is authoritative for.
    pub fn zones(self) -> &'static [&'static str] {
        match self {
            Self::Root => &["."],
            Self::Tld => &["test."],
            Self::Example => &[
                "example.test.",
                "other.test.",
                "lame.test.",
                "retry.test.",
                "glueless.test.",
            ],
            Self::Signed => &["signed.test.", "retry.test."],
            Self::Bogus => &["bogus.test."],
        }
    }
}

/// A running fake hierarchy; see the module documentation.
#[derive(Debug)]
pub struct Hierarchy {
    /// Address of the fake root server (127.53.X.1).
    pub root: IpAddr,
    instance: u8,
    dir: PathBuf,
    /// Owns `dir` (None when kept for debugging).
    tempdir: Option<tempfile::TempDir>,
    servers: Vec<(Server, Child)>,
    stopped: Vec<Server>,
    watchdog: Option<Child>,
    anchor: Option<Anchor>,
}

#[derive(Debug)]
struct Anchor {
    dnskey: String,
    ds: String,
    file: PathBuf,
}

impl Hierarchy {
    /// Starts the hierarchy on 127.53.`instance`.1-5, port 53.
    ///
    /// Returns `None` (after printing `SKIP: ...`) when `nsd` is not installed or port 53 cannot
    /// be bound on those addresses. Panics on real failures (an address already in use, a zone
    /// nsd rejects, a server that does not come up).
    pub fn start(instance: u8) -> Option<Self> {
        let started = Instant::now();
        let Some(nsd) = find_tool("nsd") else {
            eprintln!("SKIP: nsd is not installed (Debian package `nsd`)");
            return None;
        };
        for server in Server::ALL {
            let addr = SocketAddr::from((v4(instance, server), 53));
            match UdpSocket::bind(addr) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::AddrInUse => panic!(
                    "{addr} is already in use: another Hierarchy with instance {instance} is running, \
                     or a stale nsd survived (see `ss -lunp | grep 127.53.{instance}.`)"
                ),
                Err(e) => {
                    eprintln!("SKIP: cannot bind {addr} ({e}); the fake hierarchy needs root or CAP_NET_BIND_SERVICE");
                    return None;
                }
            }
        }

        let keep = env_flag("SHIELDNS_HIERARCHY_KEEP");
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("shieldns-hierarchy-{instance}-"))
            .tempdir()
            .expect("create a temporary directory for the hierarchy");
        let dir = tempdir.path().to_path_buf();
        let tempdir = if keep {
            eprintln!("hierarchy {instance}: keeping {}", dir.display());
            let _kept = tempdir.keep();
            None
        } else {
            Some(tempdir)
        };

        let zones_dir = dir.join("zones");
        mkdir(&zones_dir);
        let signer = if env_flag("SHIELDNS_HIERARCHY_UNSIGNED") {
            None
        } else {
            Signer::new(&dir)
        };
        if signer.is_none() && !env_flag("SHIELDNS_HIERARCHY_UNSIGNED") {
            eprintln!("NOTE: ldns-keygen/ldns-signzone not found (Debian package `ldnsutils`): serving unsigned zones");
        }
        let (zone_files, anchor) = write_zones(instance, &zones_dir, signer.as_ref(), &dir);

        fs::write(
            dir.join("root.hints"),
            format!(
                ".         3600000 IN NS ns1.root.\nns1.root. 3600000 IN A  {}\n",
                v4(instance, Server::Root)
            ),
        )
        .expect("write root.hints");

        let mut hierarchy = Self {
            root: IpAddr::V4(v4(instance, Server::Root)),
            instance,
            dir,
            tempdir,
            servers: Vec::new(),
            stopped: Vec::new(),
            watchdog: None,
            anchor,
        };
        for server in Server::ALL {
            let child = hierarchy.spawn_nsd(&nsd, server, &zone_files);
            hierarchy.servers.push((server, child));
        }
        hierarchy.spawn_watchdog();
        hierarchy.wait_ready();
        eprintln!(
            "hierarchy {instance}: 127.53.{instance}.1-5 up in {} ms ({})",
            started.elapsed().as_millis(),
            if hierarchy.anchor.is_some() {
                "signed"
            } else {
                "unsigned"
            }
        );
        Some(hierarchy)
    }

    /// The `X` of 127.53.X.0/24.
    pub fn instance(&self) -> u8 {
        self.instance
    }

    /// Address of one server.
    pub fn addr(&self, server: Server) -> IpAddr {
        IpAddr::V4(v4(self.instance, server))
    }

    /// Address of a server by name (see [`Server::from_name`]); panics on an unknown name.
    pub fn server_addr(&self, which: &str) -> IpAddr {
        self.addr(parse_server(which))
    }

    /// The temporary directory holding zones, keys and each server's `nsd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A root hints file naming the fake root only (`. NS ns1.root.`, `ns1.root. A 127.53.X.1`).
    pub fn root_hints_file(&self) -> PathBuf {
        self.dir.join("root.hints")
    }

    /// A file with the fake root's KSK as one line `. 3600 IN DNSKEY 257 3 13 <base64>`
    /// (the format of hickory's `TrustAnchors::from_file`), or `None` when unsigned.
    pub fn trust_anchor_file(&self) -> Option<PathBuf> {
        self.anchor.as_ref().map(|a| a.file.clone())
    }

    /// The root KSK as a DNSKEY record in zone-file text (same line as the trust anchor file).
    pub fn root_dnskey(&self) -> Option<&str> {
        self.anchor.as_ref().map(|a| a.dnskey.as_str())
    }

    /// The root KSK as a DS record (`. IN DS <tag> 13 2 <sha256>`).
    pub fn root_ds(&self) -> Option<&str> {
        self.anchor.as_ref().map(|a| a.ds.as_str())
    }

    /// Whether the zones were signed (the signing tools were available).
    pub fn is_signed(&self) -> bool {
        self.anchor.is_some()
    }

    /// Kills one server (by name, see [`Server::from_name`]); returns once it no longer answers.
    pub fn stop_server(&mut self, which: &str) {
        self.stop(parse_server(which));
    }

    /// Kills one server; returns once it no longer answers. Stopping twice is a no-op.
    pub fn stop(&mut self, server: Server) {
        if self.stopped.contains(&server) {
            return;
        }
        let (_, child) = self
            .servers
            .iter_mut()
            .find(|(s, _)| *s == server)
            .expect("every server is spawned at start");
        // SIGKILL to nsd's main process: its server and xfrd children exit on their own. The
        // child is reaped only on drop, so its pid cannot be reused while the watchdog knows it.
        let _ = child.kill();
        self.stopped.push(server);
        let addr = v4(self.instance, server);
        let zone = server.zones()[0];
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe_soa(addr, zone, Duration::from_millis(200)) {
            assert!(
                Instant::now() < deadline,
                "{} server {addr} still answers 5 s after being killed",
                server.name()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_nsd(&self, nsd: &Path, server: Server, zone_files: &[(&'static str, PathBuf)]) -> Child {
        let sdir = self.dir.join(server.name());
        mkdir(&sdir);
        let d = |f: &str| sdir.join(f).display().to_string();
        let mut conf = String::new();
        let _ = write!(
            conf,
            "server:\n  ip-address: {addr}@53\n  port: 53\n  do-ip4: yes\n  do-ip6: no\n  username: \"\"\n  \
             chroot: \"\"\n  zonesdir: \"{zonesdir}\"\n  pidfile: \"{pid}\"\n  database: \"\"\n  zonelistfile: \
             \"{zonelist}\"\n  xfrdfile: \"{xfrd}\"\n  xfrdir: \"{sdir}\"\n  logfile: \"{log}\"\n  verbosity: 1\n  \
             server-count: 1\n  hide-version: yes\nremote-control:\n  control-enable: no\n",
            addr = v4(self.instance, server),
            zonesdir = self.dir.join("zones").display(),
            pid = d("nsd.pid"),
            zonelist = d("zone.list"),
            xfrd = d("xfrd.state"),
            sdir = sdir.display(),
            log = d("nsd.log"),
        );
        for zone in server.zones() {
            // `signed` serves `retry.test.` from a file nsd cannot load, so it
            // answers SERVFAIL for that zone.
            let broken = (server == Server::Signed && *zone == "retry.test.").then_some(BROKEN_ZONE);
            let (_, file) = zone_files
                .iter()
                .find(|(z, _)| *z == broken.unwrap_or(zone))
                .expect("a zone file for every served zone");
            let _ = write!(conf, "zone:\n  name: \"{zone}\"\n  zonefile: \"{}\"\n", file.display());
        }
        let conf_path = sdir.join("nsd.conf");
        fs::write(&conf_path, conf).expect("write nsd.conf");
        let stderr = fs::File::create(sdir.join("stderr")).expect("create nsd stderr file");
        Command::new(nsd)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} for {}: {e}", nsd.display(), server.name()))
    }

    /// A `sh` that waits for EOF on a pipe only this process holds, then kills the servers and
    /// removes the directory: cleanup when the test process ends without running `Drop`.
    fn spawn_watchdog(&mut self) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("read -r line; dir=$1; shift; kill -9 \"$@\" 2>/dev/null; sleep 1; [ -z \"$dir\" ] || rm -rf -- \"$dir\"")
            .arg("shieldns-hierarchy-watchdog")
            .arg(if self.tempdir.is_some() { self.dir.as_os_str() } else { std::ffi::OsStr::new("") });
        for (_, child) in &self.servers {
            cmd.arg(child.id().to_string());
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the hierarchy watchdog (sh)");
        self.watchdog = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<(Server, &'static str)> = Server::ALL
            .iter()
            .flat_map(|s| s.zones().iter().map(move |z| (*s, *z)))
            // The broken zone never answers its SOA; its server's other zone does.
            .filter(|&(server, zone)| !(server == Server::Signed && zone == "retry.test."))
            .collect();
        loop {
            for (server, child) in &mut self.servers {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nsd for {} exited during startup ({status}):\n{}",
                        server.name(),
                        server_logs(&self.dir, *server)
                    );
                }
                let logs = server_logs(&self.dir, *server);
                // The broken zone's own errors are the point of it.
                let unexpected = logs
                    .lines()
                    .filter(|line| line.contains("error:"))
                    .any(|line| !line.contains(BROKEN_ZONE) && !line.contains("retry.test."));
                if unexpected {
                    panic!("nsd for {} reported an error:\n{logs}", server.name());
                }
            }
            let instance = self.instance;
            pending.retain(|(server, zone)| !probe_soa(v4(instance, *server), zone, Duration::from_millis(200)));
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let mut msg = String::new();
                for (server, zone) in &pending {
                    let _ = writeln!(msg, "{zone} on {} does not answer; logs:", v4(instance, *server));
                    msg.push_str(&server_logs(&self.dir, *server));
                }
                panic!("fake hierarchy not ready after {READY_TIMEOUT:?}:\n{msg}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        // The watchdog first (SIGKILL: it must not run its own kill), then the servers.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        for (_, child) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether an environment variable is set to something other than "" or "0".
fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn parse_server(which: &str) -> Server {
    Server::from_name(which).unwrap_or_else(|| {
        panic!("unknown hierarchy server {which:?}; expected root, tld, example, other, signed or bogus")
    })
}

fn v4(instance: u8, server: Server) -> Ipv4Addr {
    Ipv4Addr::new(127, 53, instance, server.host())
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

fn server_logs(dir: &Path, server: Server) -> String {
    let sdir = dir.join(server.name());
    let mut out = String::new();
    for f in ["nsd.log", "stderr"] {
        if let Ok(text) = fs::read_to_string(sdir.join(f)) {
            out.push_str(&text);
        }
    }
    out
}

/// Finds an executable in `PATH` or the sbin directories (nsd lives in /usr/sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Sends `zone SOA` without RD and reports whether an authoritative NOERROR answer came back.
fn probe_soa(addr: Ipv4Addr, zone: &str, timeout: Duration) -> bool {
    const ID: u16 = 0x5e1f;
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&ID.to_be_bytes());
    query.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // no flags, QDCOUNT 1
    for label in zone.split('.').filter(|l| !l.is_empty()) {
        query.push(u8::try_from(label.len()).expect("label length"));
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]); // root label, SOA, IN
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    if sock.set_read_timeout(Some(timeout)).is_err() || sock.send_to(&query, (addr, 53)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            return false;
        };
        if n < 12 || from.ip() != IpAddr::V4(addr) || buf[..2] != ID.to_be_bytes() {
            continue;
        }
        let qr = buf[2] & 0x80 != 0;
        let aa = buf[2] & 0x04 != 0;
        let rcode = buf[3] & 0x0f;
        let ancount = u16::from_be_bytes([buf[6], buf[7]]);
        return qr && aa && rcode == 0 && ancount >= 1;
    }
    false
}

/// Key generation and zone signing with ldnsutils.
struct Signer {
    keygen: PathBuf,
    signzone: PathBuf,
    keys: PathBuf,
}

/// A generated key: its base name (`K<zone>+013+<tag>`) in the keys directory.
struct Key {
    base: String,
}

impl Signer {
    fn new(dir: &Path) -> Option<Self> {
        let keygen = find_tool("ldns-keygen")?;
        let signzone = find_tool("ldns-signzone")?;
        let keys = dir.join("keys");
        mkdir(&keys);
        Some(Self { keygen, signzone, keys })
    }

    fn keygen(&self, zone: &str, ksk: bool) -> Key {
        let mut cmd = Command::new(&self.keygen);
        cmd.current_dir(&self.keys)
            .args(["-a", "ECDSAP256SHA256", "-r", "/dev/urandom"]);
        if ksk {
            cmd.arg("-k");
        }
        let out = cmd.arg(zone).output().expect("run ldns-keygen");
        assert!(
            out.status.success(),
            "ldns-keygen for {zone} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let base = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!base.is_empty(), "ldns-keygen printed no key name");
        Key { base }
    }

    /// The key's DNSKEY record without the trailing `;{id = ...}` comment.
    fn dnskey(&self, key: &Key) -> String {
        self.read_record(key, "key")
    }

    /// The DS record of a KSK (ldns-keygen writes it next to the key).
    fn ds(&self, key: &Key) -> String {
        self.read_record(key, "ds")
    }

    fn read_record(&self, key: &Key, ext: &str) -> String {
        let path = self.keys.join(format!("{}.{ext}", key.base));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let line = text.lines().find(|l| !l.trim().is_empty() && !l.starts_with(';'));
        let line = line.unwrap_or_else(|| panic!("{} holds no record", path.display()));
        line.split(';')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Signs `zonefile` with a ZSK and a KSK; returns the signed file.
    fn sign(&self, zonefile: &Path, origin: &str, zsk: &Key, ksk: &Key) -> PathBuf {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let signed = zonefile.with_extension("zone.signed");
        let out = Command::new(&self.signzone)
            .current_dir(&self.keys)
            .args(["-i", &(now - 3600).to_string(), "-e", &(now + 30 * 86400).to_string()])
            .args(["-o", origin])
            .arg("-f")
            .arg(&signed)
            .arg(zonefile)
            .args([&zsk.base, &ksk.base])
            .output()
            .expect("run ldns-signzone");
        assert!(
            out.status.success(),
            "ldns-signzone {} failed: {}{}",
            zonefile.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        signed
    }
}

fn soa(origin: &str, mname: &str) -> String {
    format!("$ORIGIN {origin}\n$TTL 3600\n{origin} IN SOA {mname} hostmaster.{origin} 1 3600 600 86400 300\n")
        .replace("hostmaster..", "hostmaster.")
}

/// Writes (and signs) every zone; returns `(zone, file to serve)` pairs and the root anchor.
fn write_zones(
    x: u8,
    zones_dir: &Path,
    signer: Option<&Signer>,
    dir: &Path,
) -> (Vec<(&'static str, PathBuf)>, Option<Anchor>) {
    let ip = |s: Server| v4(x, s);
    let write = |name: &str, text: &str| {
        let path = zones_dir.join(format!("{name}.zone"));
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    };
    let mut files = Vec::new();

    // example.test. and other.test.: unsigned.
    let mut example = soa("example.test.", "ns1.example.test.");
    let _ = write!(
        example,
        "example.test. NS ns1.example.test.\n\
         ns1.example.test. A {ns}\n\
         www.example.test. A 192.0.2.10\n\
         www.example.test. AAAA 2001:db8::10\n\
         alias.example.test. CNAME www.other.test.\n\
         blocked.example.test. A 192.0.2.66\n\
         sub.blocked.example.test. A 192.0.2.67\n\
         ads.example.test. A 192.0.2.70\n\
         cname-to-blocked.example.test. CNAME blocked.example.test.\n\
         rebind.example.test. A 10.0.0.1\n\
         ttl1.example.test. 60 A 192.0.2.11\n\
         dangling.example.test. CNAME nothing.other.test.\n\
         mx.example.test. MX 10 mail.example.test.\n\
         mail.example.test. A 192.0.2.25\n",
        ns = ip(Server::Example)
    );
    for i in 0..BIG_TXT_COUNT {
        let prefix = format!("big-{i:02}-");
        let _ = writeln!(
            example,
            "big.example.test. TXT \"{prefix}{}\"",
            "x".repeat(BIG_TXT_LEN - prefix.len())
        );
    }
    files.push(("example.test.", write("example.test", &example)));
    let mut other = soa("other.test.", "ns1.example.test.");
    let _ = write!(
        other,
        "other.test. NS ns1.example.test.\nwww.other.test. A 192.0.2.20\nns.other.test. A {}\n",
        ip(Server::Example)
    );
    files.push(("other.test.", write("other.test", &other)));
    for (zone, ns, address) in [
        ("lame.test.", "ns1.example.test.", "192.0.2.50"),
        ("retry.test.", "ns1.example.test.", "192.0.2.51"),
        ("glueless.test.", "ns.other.test.", "192.0.2.52"),
    ] {
        let mut text = soa(zone, ns);
        let _ = writeln!(text, "{zone} NS {ns}\nwww.{zone} A {address}");
        files.push((zone, write(zone.trim_end_matches('.'), &text)));
    }
    files.push((BROKEN_ZONE, write(BROKEN_ZONE, "this is not a zone file !\n")));

    let mut signed = soa("signed.test.", "ns1.signed.test.");
    let _ = write!(
        signed,
        "signed.test. NS ns1.signed.test.\nns1.signed.test. A {}\n\
         www.signed.test. A 192.0.2.30\nwww.signed.test. AAAA 2001:db8::30\n",
        ip(Server::Signed)
    );
    let mut bogus = soa("bogus.test.", "ns1.bogus.test.");
    let _ = write!(
        bogus,
        "bogus.test. NS ns1.bogus.test.\nns1.bogus.test. A {}\nwww.bogus.test. A 192.0.2.40\n",
        ip(Server::Bogus)
    );
    let mut tld = soa("test.", "ns1.nic.test.");
    let _ = write!(
        tld,
        "test. NS ns1.nic.test.\nns1.nic.test. A {tld}\n\
         example.test. NS ns1.example.test.\nns1.example.test. A {example}\n\
         other.test. NS ns1.example.test.\n\
         signed.test. NS ns1.signed.test.\nns1.signed.test. A {signed}\n\
         bogus.test. NS ns1.bogus.test.\nns1.bogus.test. A {bogus}\n\
         lame.test. NS ns1.bogus.test.\nlame.test. NS ns1.example.test.\n\
         retry.test. NS ns1.signed.test.\nretry.test. NS ns1.example.test.\n\
         glueless.test. NS ns.other.test.\n",
        tld = ip(Server::Tld),
        example = ip(Server::Example),
        signed = ip(Server::Signed),
        bogus = ip(Server::Bogus),
    );
    let mut root = soa(".", "ns1.root.");
    let _ = write!(
        root,
        ". NS ns1.root.\nns1.root. A {root}\ntest. NS ns1.nic.test.\nns1.nic.test. A {tld}\n",
        root = ip(Server::Root),
        tld = ip(Server::Tld),
    );

    let Some(signer) = signer else {
        files.push(("signed.test.", write("signed.test", &signed)));
        files.push(("bogus.test.", write("bogus.test", &bogus)));
        files.push(("test.", write("test", &tld)));
        files.push((".", write("root", &root)));
        return (files, None);
    };

    // Children first: their DS records go into the parent before the parent is signed.
    let mut sign = |name: &'static str, file: &str, text: &str| {
        let ksk = signer.keygen(name, true);
        let zsk = signer.keygen(name, false);
        let path = write(file, text);
        let signed = signer.sign(&path, name, &zsk, &ksk);
        files.push((name, signed));
        ksk
    };
    let signed_ksk = sign("signed.test.", "signed.test", &signed);
    sign("bogus.test.", "bogus.test", &bogus);
    // bogus.test.: the parent's DS names a key the child never publishes.
    let unpublished = signer.keygen("bogus.test.", true);
    let _ = write!(tld, "{}\n{}\n", signer.ds(&signed_ksk), signer.ds(&unpublished));
    let tld_ksk = sign("test.", "test", &tld);
    let _ = writeln!(root, "{}", signer.ds(&tld_ksk));
    let root_ksk = sign(".", "root", &root);

    // "." IN DNSKEY 257 3 13 <b64>  ->  ". 3600 IN DNSKEY 257 3 13 <b64>" (hickory's format).
    let dnskey = signer.dnskey(&root_ksk);
    let rdata = dnskey
        .split_once(" DNSKEY ")
        .map(|(_, rdata)| rdata)
        .unwrap_or_else(|| panic!("unexpected DNSKEY line {dnskey:?}"));
    let dnskey = format!(". 3600 IN DNSKEY {rdata}");
    let file = dir.join("root.key");
    fs::write(&file, format!("{dnskey}\n")).expect("write root.key");
    let anchor = Anchor {
        dnskey,
        ds: signer.ds(&root_ksk),
        file,
    };
    (files, Some(anchor))
}
