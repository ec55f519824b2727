#!/usr/bin/env python3
"""Blocked and cached answers over DoT and DoH, with 1 and 2 worker
threads: shieldns's own listeners against Unbound 1.17's and against
dnsdist 1.7 terminating TLS in front of shieldns's UDP port, same
certificate, driven by `dnsperf -m dot|doh` on loopback; then idle DoT
connections held open with the RSS they cost and UDP answered beside them.

    python3 benches/dnsperf/encrypted.py --names 100000 --seconds 6 --threads 1,2 --idle 10000

Blocked: 10,000 names of a `--names` list (NXDOMAIN from the list; Unbound:
one always_nxdomain local zone). Cached: 10,000 other names, which shieldns
forwards to Unbound's UDP port (local data there) and answers from its cache
after a warm-up pass; Unbound answers them from its local data; dnsdist
passes them to shieldns. With 1 thread the servers are pinned to the last
core and dnsperf to the first.

Starts, all on 127.0.31.0/24 and torn down at the end: shieldns (release
build; UDP 127.0.31.3:5300, DoT :8853, DoH :8443), Unbound 1.17 (its own
DoT and DoH listeners on 127.0.31.4, the blocked names as one local zone,
as many threads as shieldns) and dnsdist (DoT 127.0.31.5:8853, DoH :8443, backend shieldns
UDP), a test CA and leaf made with openssl. Per transport and server: queries/s, lost %, mean latency and
the server's CPU µs per answered query (utime+stime of all its threads /
completed queries; for dnsdist its own CPU plus shieldns's behind it).

Needs: dnsperf (with DoT/DoH), unbound, dnsdist, openssl; run as root for the
descriptor limit of `--idle`.
"""

import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import bench  # noqa: E402  (cpu_seconds, rss_mib, probe_rcode, parse, pin, PIN)

SHIELD_IP, UNBOUND_IP, DNSDIST_IP, CLIENT_IP = "127.0.31.3", "127.0.31.4", "127.0.31.5", "127.0.31.9"
UDP_PORT, DOT_PORT, DOH_PORT = 5300, 8853, 8443


def certificates(work):
    """A CA and a leaf for 127.0.0.1-style addresses and dns.test."""
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{work}/server.key", "-out", f"{work}/server.csr", "-subj", "/CN=dns.test")
    with open(f"{work}/ext.cnf", "w") as f:
        f.write(f"subjectAltName=DNS:dns.test,IP:{SHIELD_IP},IP:{UNBOUND_IP},IP:{DNSDIST_IP}\n")
    run("openssl", "x509", "-req", "-in", f"{work}/server.csr", "-CA", f"{work}/ca.pem", "-CAkey", f"{work}/ca.key",
        "-CAcreateserial", "-out", f"{work}/leaf.pem", "-days", "2", "-extfile", f"{work}/ext.cnf")
    with open(f"{work}/server.pem", "w") as f:
        f.write(open(f"{work}/leaf.pem").read() + open(f"{work}/ca.pem").read())


CACHED = 10000


def start_shieldns(work, names, threads):
    with open(f"{work}/blocked.txt", "w") as f:
        f.writelines(f"b{i}.blocked.test\n" for i in range(names))
    with open(f"{work}/shieldns.toml", "w") as f:
        f.write(f'''[server]
listen = ["{SHIELD_IP}:{UDP_PORT}"]
udp_sockets = {threads}
allow = ["127.0.0.0/8"]
tcp_max_connections = 20000
tcp_max_connections_per_client = 20000
tcp_idle_timeout = 600

[[server.listener]]
protocol = "dot"
address = "{SHIELD_IP}:{DOT_PORT}"
certificate = "{work}/server.pem"
key = "{work}/server.key"
# Every bench connection comes from one loopback prefix.
max_connections_per_prefix = 20000

[[server.listener]]
protocol = "doh"
address = "{SHIELD_IP}:{DOH_PORT}"
certificate = "{work}/server.pem"
key = "{work}/server.key"

[upstream]
mode = "forward"
forward = ["{UNBOUND_IP}:{UDP_PORT}"]
dnssec = false
resolve_local_zones = ["test."]

[[list]]
name = "bench"
category = "adult"
format = "domains"
path = "{work}/blocked.txt"

[[profile]]
name = "all"
clients = ["0.0.0.0/0"]
block = ["adult"]

[sync]
cache_dir = "{work}/kept"
''')
    log = open(f"{work}/shieldns.log", "w")
    env = dict(os.environ, RUST_LOG="warn,shieldns=info", TOKIO_WORKER_THREADS=str(threads))
    proc = subprocess.Popen(bench.PIN["server"] + [f"{ROOT}/target/release/shieldns", "run", "--config", f"{work}/shieldns.toml"],
                            stderr=log, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and bench.probe_rcode(SHIELD_IP, UDP_PORT, "b1.blocked.test") != 3:
        time.sleep(0.1)
    return proc


def start_dnsdist(work):
    with open(f"{work}/dnsdist.conf", "w") as f:
        f.write(f'''setSecurityPollSuffix('')
setACL({{'127.0.0.0/8'}})
setMaxTCPConnectionsPerClient(20000)
addTLSLocal('{DNSDIST_IP}:{DOT_PORT}', '{work}/server.pem', '{work}/server.key')
addDOHLocal('{DNSDIST_IP}:{DOH_PORT}', '{work}/server.pem', '{work}/server.key', '/dns-query')
newServer({{address='{SHIELD_IP}:{UDP_PORT}', checkName='b1.blocked.test.'}})
''')
    log = open(f"{work}/dnsdist.log", "w")
    proc = subprocess.Popen(bench.PIN["server"] + ["dnsdist", "--supervised", "--disable-syslog", "-C", f"{work}/dnsdist.conf"],
                            stdout=subprocess.DEVNULL, stderr=log)
    time.sleep(3)
    return proc


def start_unbound(work, threads):
    """Unbound 1.17 with its own DoT and DoH listeners, the blocked names as
    one local zone (NXDOMAIN), the cached names as local data, as many
    threads as shieldns."""
    with open(f"{work}/cached.conf", "w") as f:
        f.writelines(f'    local-data: "c{i}.cached.test. 3600 IN A 192.0.2.{i % 250 + 1}"\n' for i in range(CACHED))
    with open(f"{work}/unbound.conf", "w") as f:
        f.write(f"""server:
    interface: {UNBOUND_IP}@{UDP_PORT}
    interface: {UNBOUND_IP}@{DOT_PORT}
    interface: {UNBOUND_IP}@{DOH_PORT}
    tls-port: {DOT_PORT}
    https-port: {DOH_PORT}
    tls-service-key: "{work}/server.key"
    tls-service-pem: "{work}/server.pem"
    num-threads: {threads}
    so-reuseport: yes
    incoming-num-tcp: 2000
    http-max-streams: 100
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: "{work}/unbound.log"
    module-config: "iterator"
    local-zone: "blocked.test." always_nxdomain
    local-zone: "cached.test." static
    include: "{work}/cached.conf"
""")
    log = open(f"{work}/unbound.stderr", "w")
    proc = subprocess.Popen(bench.PIN["server"] + ["unbound", "-d", "-c", f"{work}/unbound.conf"], stdout=log, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline and bench.probe_rcode(UNBOUND_IP, UDP_PORT, "b1.blocked.test") != 3:
        time.sleep(0.1)
    return proc


def run(server_ip, mode, port, queries, seconds, pids, outstanding=200):
    before = sum(bench.cpu_seconds(pid) for pid in pids)
    command = bench.PIN["client"] + ["dnsperf", "-m", mode, "-s", server_ip, "-p", str(port), "-a", CLIENT_IP, "-d", queries,
               "-c", "8", "-q", str(outstanding), "-l", str(seconds)]
    if mode == "doh":
        command += ["-O", f"doh-uri=https://{server_ip}:{port}/dns-query"]
    out = subprocess.run(command, capture_output=True, text=True).stdout
    cpu = sum(bench.cpu_seconds(pid) for pid in pids) - before
    try:
        result = bench.parse(out)
    except AttributeError:
        print(out, file=sys.stderr)
        return None
    result["cpu_us"] = cpu / max(result["completed"], 1) * 1e6
    return result


def idle_connections(count, work):
    """Opens `count` DoT connections to shieldns (handshake done, nothing
    sent) and keeps them open; returns them."""
    context = ssl.create_default_context(cafile=f"{work}/ca.pem")
    context.set_alpn_protocols(["dot"])
    held = []
    for _ in range(count):
        raw = socket.create_connection((SHIELD_IP, DOT_PORT), timeout=10)
        held.append(context.wrap_socket(raw, server_hostname="dns.test"))
    return held


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100000)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--idle", type=int, default=10000, help="idle DoT connections to hold (0: none)")
    parser.add_argument("--threads", default="1,2", help="worker threads, a comma list such as 1,2")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="shieldns-encrypted-")
    certificates(work)
    queries = {"blocked": f"{work}/blocked-q.txt", "cached": f"{work}/cached-q.txt"}
    with open(queries["blocked"], "w") as f:
        f.writelines(f"b{i}.blocked.test A\n" for i in range(0, args.names, max(args.names // 10000, 1)))
    with open(queries["cached"], "w") as f:
        f.writelines(f"c{i}.cached.test A\n" for i in range(CACHED))
    counts = [int(t) for t in args.threads.split(",") if t]
    print(f"{'threads':7} {'transport':9} {'answers':7} {'server':16} {'q/s':>9} {'lost %':>7} {'mean ms':>8} "
          f"{'µs CPU/q':>9}")
    for threads in counts:
        bench.pin(threads)
        unbound = start_unbound(work, threads)
        shieldns = start_shieldns(work, args.names, threads)
        dnsdist = start_dnsdist(work)
        try:
            # Warm shieldns's cache with the cached names.
            run(SHIELD_IP, "udp", UDP_PORT, queries["cached"], 2, [shieldns.pid])
            for mode, port in (("dot", DOT_PORT), ("doh", DOH_PORT)):
                for kind in ("blocked", "cached"):
                    for label, ip, pids in (("shieldns", SHIELD_IP, [shieldns.pid]),
                                            ("unbound", UNBOUND_IP, [unbound.pid]),
                                            ("dnsdist+shieldns", DNSDIST_IP, [dnsdist.pid, shieldns.pid])):
                        # At most 100 streams per HTTP/2 connection (the
                        # servers' defaults): 8 connections, 64 in flight.
                        outstanding = 64 if mode == "doh" else 200
                        result = run(ip, mode, port, queries[kind], args.seconds, pids, outstanding)
                        head = f"{threads:7} {mode:9} {kind:7} {label:16}"
                        if result is None:
                            print(f"{head} (dnsperf failed)")
                            continue
                        print(f"{head} {result['qps']:9.0f} {result['lost_pct']:7.2f} "
                              f"{result['latency_ms']:8.3f} {result['cpu_us']:9.1f}", flush=True)
            if args.idle and threads == counts[-1]:
                # UDP before and beside the idle connections, in one run.
                result = run(SHIELD_IP, "udp", UDP_PORT, queries["blocked"], args.seconds, [shieldns.pid])
                print(f"UDP before them: {result['qps']:.0f} q/s, lost {result['lost_pct']:.2f} %, "
                      f"{result['cpu_us']:.1f} µs CPU/q", flush=True)
                rss_before = bench.rss_mib(shieldns.pid)
                started = time.time()
                held = idle_connections(args.idle, work)
                print(f"idle DoT connections: {len(held)} open in {time.time() - started:.1f} s; shieldns RSS "
                      f"{rss_before:.1f} → {bench.rss_mib(shieldns.pid):.1f} MiB", flush=True)
                result = run(SHIELD_IP, "udp", UDP_PORT, queries["blocked"], args.seconds, [shieldns.pid])
                print(f"UDP beside them: {result['qps']:.0f} q/s, lost {result['lost_pct']:.2f} %, "
                      f"{result['cpu_us']:.1f} µs CPU/q")
                for connection in held:
                    connection.close()
        finally:
            for proc in (dnsdist, shieldns, unbound):
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
