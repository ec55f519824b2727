//! Runs the real `shieldns` binary as a child process and queries it with
//! the real `dig`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether a tool is on PATH; tests print `SKIP:` and return when not.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether every tool is installed; prints a `SKIP:` line naming the
/// Debian packages when one is missing, so a skipped test says why.
pub fn require(tools: &[(&str, &str)]) -> bool {
    for (tool, package) in tools {
        if !have(tool) {
            eprintln!("SKIP: {tool} is not installed (apt-get install {package})");
            return false;
        }
    }
    true
}

/// A port free on `ip` for both UDP and TCP right now.
pub fn free_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind(format!("{ip}:0")).expect("bind probe");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(format!("{ip}:{port}")).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A running `shieldns run`.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    /// Writes `config` (with `@PORT@` and `@DIR@` replaced) and starts the
    /// daemon on 127.0.0.1, waiting until it answers.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config, files)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, files: &[(&str, &str)]) -> Self {
        Self::start_with_env(dir, config, files, &[])
    }

    /// Like [`Daemon::start_in`], with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Self {
        let port = free_port("127.0.0.1");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write fixture");
        }
        let config = with_cache_dir(config)
            .replace("@PORT@", &port.to_string())
            .replace("@DIR@", &dir.path().display().to_string());
        let config_path = dir.path().join("shieldns.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("shieldns.log");
        let child = Command::new(crate::shieldns())
            .args(["run", "--config"])
            .arg(&config_path)
            .env(
                "RUST_LOG",
                "info,hickory_server=warn,hickory_resolver=warn,hickory_proto=warn,hickory_net=warn",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start shieldns");
        let daemon = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log_text().contains("shieldns ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("shieldns did not start:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs dig against the daemon with extra arguments; returns stdout.
    pub fn dig(&self, args: &[&str]) -> String {
        dig_at(self.addr, args)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Sends SIGHUP and waits for the reload's outcome to be logged.
    pub fn reload(&self) -> bool {
        let before_ok = self.log_text().matches("reload complete").count();
        let before_failed = self.log_text().matches("reload failed").count();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.log_text();
            if log.matches("reload complete").count() > before_ok {
                return true;
            }
            if log.matches("reload failed").count() > before_failed {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("reload did not finish:\n{}", self.log_text());
    }

    /// SIGHUP, then wait for the list sync pass it starts to finish;
    /// returns the pass's summary line.
    pub fn sync_pass(&self) -> String {
        let pattern = "sync pass complete";
        let before = self.log_text().matches(pattern).count();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.log_text();
            if log.matches(pattern).count() > before {
                return log
                    .lines()
                    .rfind(|l| l.contains(pattern))
                    .unwrap_or_default()
                    .to_owned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no sync pass finished:\n{}", self.log_text());
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same port,
    /// directory and configuration file, as an operator's restart would.
    pub fn restart(mut self) -> Self {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "shieldns did not stop:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log file");
        std::io::Write::write_all(&mut log, b"--- restart ---\n").expect("log file");
        self.child = Command::new(crate::shieldns())
            .args(["run", "--config"])
            .arg(self.dir.path().join("shieldns.toml"))
            .env(
                "RUST_LOG",
                "info,hickory_server=warn,hickory_resolver=warn,hickory_proto=warn,hickory_net=warn",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shieldns");
        let ready = self.log_text().matches("shieldns ready").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches("shieldns ready").count() == ready {
            assert!(
                Instant::now() < deadline,
                "shieldns did not restart:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dig_at(addr: SocketAddr, args: &[&str]) -> String {
    let output: Output = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The status word of a dig answer (`NOERROR`, `NXDOMAIN`, …).
pub fn status(dig_output: &str) -> &str {
    dig_output
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("NO-ANSWER")
}

/// The answer section's records, as `name ttl class type data` lines.
pub fn answers(dig_output: &str) -> Vec<String> {
    let mut in_answer = false;
    let mut out = Vec::new();
    for line in dig_output.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                break;
            }
            out.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

/// The EDE line dig prints, if any.
pub fn ede(dig_output: &str) -> Option<String> {
    dig_output
        .lines()
        .find(|l| l.starts_with("; EDE:"))
        .map(|l| l.trim().to_owned())
}

pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The metrics endpoint's text on `port` of 127.0.0.1.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("read the scrape");
    body
}

/// The daemon keeps every accepted list in `sync.cache_dir`: a config that
/// does not set it gets one in its own directory, never the shared
/// default (`/var/lib/shieldns/lists`), which tests running side by side
/// would share.
pub fn with_cache_dir(config: &str) -> String {
    if config.contains("cache_dir") {
        return config.to_owned();
    }
    match config.find("[sync]\n") {
        Some(at) => {
            let (head, tail) = config.split_at(at + "[sync]\n".len());
            format!("{head}cache_dir = \"@DIR@/kept\"\n{tail}")
        }
        None => format!("{config}\n[sync]\ncache_dir = \"@DIR@/kept\"\n"),
    }
}
