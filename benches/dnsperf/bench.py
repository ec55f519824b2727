#!/usr/bin/env python3
"""Throughput, latency percentiles, CPU per query, memory and load time of
shieldns side by side with Unbound and a ceiling responder, driven by dnsperf
on loopback.

    python3 benches/dnsperf/bench.py --names 1000000 --seconds 8 --threads 1,2 --json results.jsonl

Starts, all on 127.0.30.0/24 and torn down at the end:
  * nsd on 127.0.30.1:53 serving `bench.test` (allowed names of the `cached`
    workload) and, when ../shared is present, a root zone `.` whose wildcard
    answers every other name (the allowed names of the `zipf` workload), so
    every upstream query ends at this nsd;
  * the ceiling responder (echo.c: flips QR, parses nothing) on 127.0.30.2;
  * shieldns (release build) on 127.0.30.3, forward mode to the nsd;
  * Unbound (Debian package) on 127.0.30.4 (`unbound.py` writes its config:
    the same list as an RPZ zone, `respip iterator`, everything forwarded
    to the nsd, no validator or trust-anchor traffic);
  * dnsperf and the load probe send from 127.0.30.9.
Both servers get the same list: N synthetic names plus, for `zipf`, 5 % of the
Umbrella top-100k names. Each thread count in `--threads` restarts both servers
with that many workers (shieldns `udp_sockets` + TOKIO_WORKER_THREADS, Unbound
`num-threads` + `so-reuseport`).

Workloads: `blocked` (listed names and subdomains of them), `cached` (allowed
names of bench.test, warmed first) and `zipf` (Zipf s=1 over
../shared/data/ranking/umbrella-top-100k.txt, 95 % allowed names warmed first,
5 % listed ones; skipped with a message when ../shared is absent). Per
workload, `--rounds` times (default 3): the ceiling, shieldns, Unbound at
saturation (dnsperf -c 8 -q 500; the ceiling is measured in every round
because this machine's speed drifts over minutes): queries/s, lost %, mean
latency and the
server's CPU µs per answered query (utime+stime of all its threads /
completed queries); then, `--rounds` times again, each at a fixed offered
rate (`--rate`, default 20k q/s) with dnsperf -v, whose per-response
latencies give p50/p99/p99.9. Summary: the median of the saturation rounds
and of the fixed-rate rounds' p50 and p99, the ratios
shieldns/Unbound, and each server's ratio to the ceiling as the median of
its per-round ratios (each to the ceiling of its own round). The ceiling
runs as many SO_REUSEPORT threads as the servers have workers (the same
socket layout, so the same kernel cost per query). Also each server's list load time (start
until a listed name answers NXDOMAIN) and RSS after load and after the runs.
With one worker thread every server (and the ceiling) is pinned to the last
core and dnsperf to the first (`--no-pin` turns that off). `--load-sizes
1000000,10000000` then starts shieldns alone with lists of those sizes and
reports load time, RSS when the list is in force, 3 s later and at its peak.
`--json FILE` appends one JSON line per measurement.

Needs: dnsperf, nsd, gcc, unbound (apt-get install dnsperf nsd gcc unbound,
with a policy-rc.d that keeps the packages' own services from starting). Run as
root (nsd binds port 53).
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, HERE)
import unbound  # noqa: E402  (benches/dnsperf/unbound.py)
import workloads  # noqa: E402  (benches/dnsperf/workloads.py)

NSD_IP, ECHO_IP, SHIELD_IP, UNBOUND_IP, CLIENT_IP = "127.0.30.1", "127.0.30.2", "127.0.30.3", "127.0.30.4", "127.0.30.9"
PORT = 5300
RANKING = os.path.join(ROOT, "..", "shared", "data", "ranking", "umbrella-top-100k.txt")
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


class Record:
    """Prints nothing; appends JSON lines (command, date, run id, figures)."""

    def __init__(self, path, args):
        self.file = open(path, "a") if path else None
        self.base = {"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                     "run": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                     "names": args.names, "seconds": args.seconds}

    def __call__(self, **figures):
        if self.file:
            line = dict(self.base, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            line.update(figures)
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()


def cpu_seconds(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid, field="VmRSS"):
    """Resident memory now (VmRSS) or at its peak so far (VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe_rcode(server, port, name, timeout=0.2):
    """One A query from CLIENT_IP; the rcode, or None without an answer."""
    qid = random.randrange(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CLIENT_IP, 0))
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (server, port))
            while True:
                data = sock.recv(4096)
                if len(data) >= 4 and struct.unpack(">H", data[:2])[0] == qid:
                    return data[3] & 0x0F
        except OSError:  # timeout, or ICMP port unreachable before the server binds
            return None


def wait_blocked(name, proc, server, probe, limit=600):
    """Seconds from now until `probe` answers NXDOMAIN (the list is in force)."""
    started = time.time()
    while time.time() - started < limit:
        if proc.poll() is not None:
            return None
        if probe_rcode(server, PORT, probe) == 3:
            return time.time() - started
        time.sleep(0.05)
    return None


# With one worker thread on a machine of two or more cores, `--pin` puts
# every server on the last core and dnsperf on the first, so a server and
# its client never fight over one core and runs vary less.
PIN = {"server": [], "client": []}  # command prefixes; callgrind.py puts valgrind here


def pin(threads, allowed=True):
    """With one worker thread (and two cores, taskset, `allowed`), pins the
    servers to the last core and dnsperf to the first through PIN; returns
    the servers' core, or None when nothing is pinned."""
    cores = os.cpu_count() or 1
    pinned = threads == 1 and cores >= 2 and allowed and shutil.which("taskset")
    PIN["server"] = ["taskset", "-c", str(cores - 1)] if pinned else []
    PIN["client"] = ["taskset", "-c", "0"] if pinned else []
    return cores - 1 if pinned else None


def dnsperf(server, queries, extra):
    command = PIN["client"] + ["dnsperf", "-s", server, "-p", str(PORT), "-a", CLIENT_IP, "-d", queries, "-c", "8"] + extra
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def parse(out):
    number = lambda label: float(re.search(label + r":\s+([0-9.]+)", out).group(1))
    codes = re.search(r"Response codes:\s+(.*)", out)
    return {
        "completed": number("Queries completed"),
        "qps": number("Queries per second"),
        "lost_pct": float(re.search(r"Queries lost:\s+\d+ \(([0-9.]+)%\)", out).group(1)),
        "latency_ms": number(r"Average Latency \(s\)") * 1000,
        "rcodes": dict((code, int(count)) for code, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1)))
        if codes else {},
    }


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.999999) - 1))]


class Server:
    def __init__(self, name, proc, ip):
        self.name, self.proc, self.ip = name, proc, ip

    def measure(self, queries, extra, latencies=False):
        before = cpu_seconds(self.proc.pid)
        out = dnsperf(self.ip, queries, extra)
        used = cpu_seconds(self.proc.pid) - before
        result = parse(out)
        result["cpu_us_per_query"] = used / max(result["completed"], 1) * 1e6
        if latencies:
            values = sorted(float(line.split()[-1]) * 1000 for line in out.splitlines()
                            if line.startswith("> ") and line.split()[1] != "T")
            result.update(p50_ms=percentile(values, 0.50), p99_ms=percentile(values, 0.99),
                          p999_ms=percentile(values, 0.999), max_ms=values[-1] if values else float("nan"))
        return result


def row(label, r):
    extra = ""
    if "p50_ms" in r:
        extra = f"  p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f}  p99.9 {r['p999_ms']:.3f} ms"
    odd = {code: n for code, n in r["rcodes"].items() if code not in ("NOERROR", "NXDOMAIN")}
    return (f"  {label:12} {r['qps']:>9.0f} q/s  lost {r['lost_pct']:5.2f} %  mean {r['latency_ms']:.3f} ms  "
            f"{r['cpu_us_per_query']:5.1f} µs CPU/query{extra}" + (f"  rcodes {odd}" if odd else ""))


def median(results, key):
    return statistics.median(r[key] for r in results)


def start_shieldns(work, threads, lists):
    with open(f"{work}/shieldns.toml", "w") as f:
        f.write(f'[server]\nlisten = ["{SHIELD_IP}:{PORT}"]\nallow = ["127.0.0.0/8"]\nudp_sockets = {threads}\n'
                f'[upstream]\nmode = "forward"\nforward = ["{NSD_IP}:53"]\n'
                # nsd is authoritative for unsigned bench.test.: nothing to
                # validate, and test. is not answered locally.
                f'dnssec = false\nresolve_local_zones = ["test."]\n[cache]\nmax_entries = 400000\n')
        for index, path in enumerate(lists):
            f.write(f'[[list]]\nname = "bench{index}"\ncategory = "adult"\nformat = "domains"\npath = "{path}"\n')
        f.write('[[profile]]\nname = "all"\nclients = ["0.0.0.0/0"]\nblock = ["adult"]\n')
        # `path` lists are kept in sync.cache_dir: a fresh one per start, so a
        # smaller list after a bigger one is not refused as a shrink.
        f.write(f'[sync]\ncache_dir = "{work}/kept-{len(os.listdir(work))}"\n')
    log = open(f"{work}/shieldns.log", "w")
    env = dict(os.environ, RUST_LOG="warn,shieldns=info", TOKIO_WORKER_THREADS=str(threads))
    proc = subprocess.Popen(PIN["server"] + [f"{ROOT}/target/release/shieldns", "run", "--config",
                                             f"{work}/shieldns.toml"], stderr=log, env=env)
    return Server("shieldns", proc, SHIELD_IP), f"{work}/shieldns.log"


def start_unbound(work, threads, rpz):
    conf = unbound.write_config(work, UNBOUND_IP, PORT, threads, rpz, NSD_IP)
    log = open(f"{work}/unbound.stderr", "w")
    proc = subprocess.Popen(PIN["server"] + ["unbound", "-d", "-c", conf], stdout=log, stderr=log)
    return Server("unbound", proc, UNBOUND_IP), f"{work}/unbound.log"


def start_nsd(work, data):
    """Starts the loopback authoritative server for the workloads' allowed
    names (`workloads.generate` wrote its zones) and waits until it answers."""
    with open(f"{work}/nsd.conf", "w") as f:
        f.write(f'server:\n  ip-address: {NSD_IP}@53\n  username: ""\n  chroot: ""\n  zonesdir: "{work}"\n'
                f'  pidfile: "{work}/nsd.pid"\n  database: ""\n  zonelistfile: "{work}/zone.list"\n'
                f'  xfrdfile: "{work}/xfrd.state"\n  do-ip6: no\n  verbosity: 0\n'
                f'zone:\n  name: bench.test\n  zonefile: bench.test.zone\n')
        if data["root_zone"]:
            f.write("zone:\n  name: .\n  zonefile: root.zone\n")
    nsd = subprocess.Popen(["nsd", "-d", "-c", f"{work}/nsd.conf"], stderr=subprocess.DEVNULL)
    for _ in range(100):
        if probe_rcode(NSD_IP, 53, "h0.bench.test") == 0:
            return nsd
        time.sleep(0.05)
    nsd.kill()
    sys.exit(f"nsd did not answer on {NSD_IP}:53")


def restart_echo(echo, work, threads=1):
    """(Re)starts the ceiling responder with the current pinning and one
    SO_REUSEPORT socket per thread, the servers' layout at that count."""
    if echo.proc is not None:
        stop(echo.proc)
    echo.proc = subprocess.Popen(PIN["server"] + [f"{work}/echo", ECHO_IP, str(PORT), str(threads)])
    for _ in range(100):
        if probe_rcode(ECHO_IP, PORT, "probe.test") is not None:
            return
        time.sleep(0.02)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000, help="synthetic listed names")
    parser.add_argument("--seconds", type=int, default=10, help="length of each saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds per workload (ceiling, servers)")
    parser.add_argument("--threads", default="1", help="worker threads, a comma list such as 1,2")
    parser.add_argument("--peers", default="shieldns,unbound", help="servers besides the ceiling")
    parser.add_argument("--peer", action="append", default=[], help="add a peer (e.g. --peer unbound)")
    parser.add_argument("--workloads", default="blocked,cached,zipf")
    parser.add_argument("--rate", type=int, default=20_000, help="offered q/s of the latency runs")
    parser.add_argument("--rate-seconds", type=int, default=5, help="length of each latency run")
    parser.add_argument("--json", help="append one JSON line per measurement to this file")
    parser.add_argument("--no-build", action="store_true", help="use target/release/shieldns as it is")
    parser.add_argument("--no-pin", action="store_true", help="do not pin 1-thread servers and dnsperf to cores")
    parser.add_argument("--load-sizes", default="",
                        help="after the runs, load lists of these sizes (e.g. 1000000,10000000) into shieldns "
                             "alone and report load time and RSS")
    args = parser.parse_args()
    peers = [p for p in dict.fromkeys(args.peers.split(",") + args.peer) if p]
    unknown = set(peers) - {"shieldns", "unbound"}
    if unknown:
        sys.exit(f"unknown peer(s): {', '.join(sorted(unknown))} (known: shieldns, unbound)")
    thread_counts = [int(t) for t in args.threads.split(",") if t]
    wanted = args.workloads.split(",")
    tools = ["dnsperf", "nsd", "gcc"] + (["unbound"] if "unbound" in peers else [])
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install {' '.join(tools)})")
    if "zipf" in wanted and not os.path.exists(RANKING):
        print(f"zipf workload skipped: {os.path.normpath(RANKING)} is absent (../shared not mounted)", flush=True)
        wanted.remove("zipf")
    if "shieldns" in peers and not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shieldns"], cwd=ROOT, check=True)
    record = Record(args.json, args)
    work = tempfile.mkdtemp(prefix="shieldns-bench-")
    children = []
    try:
        data = workloads.generate(work, args.names, NSD_IP, RANKING if "zipf" in wanted else None)
        print(f"list: {args.names} synthetic names + {data['zipf_listed']} Umbrella names "
              f"({data['zipf_listed_share']:.1%} of zipf queries hit them); RPZ {data['rpz_records']} records",
              flush=True)
        children.append(start_nsd(work, data))
        subprocess.run(["gcc", "-O2", "-pthread", "-o", f"{work}/echo", f"{HERE}/echo.c"], check=True)
        echo = Server("ceiling", None, ECHO_IP)
        children.append(echo)

        summary = []
        for threads in thread_counts:
            print(f"\n=== {threads} worker thread(s) ===", flush=True)
            core = pin(threads, not args.no_pin)
            restart_echo(echo, work, threads)
            if core is not None:
                print(f"servers pinned to core {core}, dnsperf to core 0", flush=True)
            servers = []
            for peer in peers:
                started = time.time()
                if peer == "shieldns":
                    server, log = start_shieldns(work, threads, [data["list"]])
                else:
                    server, log = start_unbound(work, threads, data["rpz"])
                children.append(server.proc)
                waited = wait_blocked(peer, server.proc, server.ip, data["probe"])
                if waited is None:
                    logs = "".join(open(p).read()[-3000:] for p in (log, f"{work}/unbound.stderr") if os.path.exists(p))
                    sys.exit(f"{peer} did not block {data['probe']}:\n{logs}")
                load_s, rss = time.time() - started, rss_mib(server.proc.pid)
                time.sleep(3)  # freed build memory goes back to the system (jemalloc decays pages in 1 s)
                settled = rss_mib(server.proc.pid)
                print(f"{peer:9} list in force {load_s:6.2f} s after start, RSS {rss:7.1f} MiB then, "
                      f"{settled:7.1f} MiB 3 s later", flush=True)
                record(kind="load", server=peer, threads=threads, load_s=round(load_s, 3), rss_mib=round(rss, 1),
                       rss_settled_mib=round(settled, 1), listed=data["listed"])
                servers.append(server)
            for server in servers:  # warm the caches: two passes, few outstanding, so none is dropped
                for workload in ("cached", "zipf"):
                    if workload in wanted:
                        for _ in range(2):
                            dnsperf(server.ip, data[workload], ["-n", "1", "-q", "100"])
            for workload in wanted:
                queries = data[workload]
                print(f"{workload} (saturation, -c 8 -q 500, {args.seconds} s each; {args.rounds} rounds of "
                      f"ceiling A B):", flush=True)
                saturate = ["-l", str(args.seconds), "-q", "500"]
                runs = {s.name: [] for s in [echo] + servers}
                for repeat in range(1, args.rounds + 1):
                    # The ceiling in every round: this machine's speed drifts
                    # over minutes, so each round's ratios share one ceiling.
                    for server in [echo] + servers:
                        r = server.measure(queries, saturate)
                        runs[server.name].append(r)
                        print(row(f"{server.name} #{repeat}", r), flush=True)
                        record(kind="saturation", workload=workload, server=server.name, threads=threads,
                               repeat=repeat, **r)
                print(f"{workload} (fixed rate {args.rate} q/s, {args.rate_seconds} s each; {args.rounds} rounds "
                      f"of ceiling A B):", flush=True)
                # Latency rounds too: at a fixed rate the servers' p99s sit a
                # few microseconds apart, within one run's noise here.
                latency_runs = {s.name: [] for s in [echo] + servers}
                for repeat in range(1, args.rounds + 1):
                    for server in [echo] + servers:
                        r = server.measure(queries, ["-l", str(args.rate_seconds), "-Q", str(args.rate), "-q", "2000",
                                                     "-v"], latencies=True)
                        latency_runs[server.name].append(r)
                        print(row(f"{server.name} #{repeat}", r), flush=True)
                        record(kind="fixed_rate", workload=workload, server=server.name, threads=threads,
                               offered_qps=args.rate, repeat=repeat, **r)
                fixed = {name: {key: median(results, key) for key in ("p50_ms", "p99_ms")}
                         for name, results in latency_runs.items()}
                ceiling = {key: median(runs["ceiling"], key) for key in ("qps", "lost_pct", "latency_ms",
                                                                         "cpu_us_per_query")}
                for name, results in runs.items():
                    if name == "ceiling":
                        continue
                    # Each round's ratio is to the ceiling of the same round,
                    # then the median over rounds: a slow minute of the
                    # machine moves both sides of a ratio together.
                    qps_ratios = [r["qps"] / c["qps"] for r, c in zip(results, runs["ceiling"])]
                    cpu_ratios = [r["cpu_us_per_query"] / max(c["cpu_us_per_query"], 0.01)
                                  for r, c in zip(results, runs["ceiling"])]
                    entry = {"threads": threads, "workload": workload, "server": name,
                             "qps": median(results, "qps"), "lost_pct": median(results, "lost_pct"),
                             "latency_ms": median(results, "latency_ms"),
                             "cpu_us_per_query": median(results, "cpu_us_per_query"),
                             "p50_ms": fixed[name]["p50_ms"], "p99_ms": fixed[name]["p99_ms"],
                             "qps_vs_ceiling": statistics.median(qps_ratios),
                             "cpu_vs_ceiling": statistics.median(cpu_ratios)}
                    summary.append(entry)
                summary.append({"threads": threads, "workload": workload, "server": "ceiling",
                                "qps": ceiling["qps"], "lost_pct": ceiling["lost_pct"],
                                "latency_ms": ceiling["latency_ms"], "cpu_us_per_query": ceiling["cpu_us_per_query"],
                                "p50_ms": fixed["ceiling"]["p50_ms"], "p99_ms": fixed["ceiling"]["p99_ms"],
                                "qps_vs_ceiling": 1.0, "cpu_vs_ceiling": 1.0})
            for server in servers:
                rss = rss_mib(server.proc.pid)
                print(f"{server.name:9} RSS after the runs {rss:7.1f} MiB", flush=True)
                record(kind="rss_after_runs", server=server.name, threads=threads, rss_mib=round(rss, 1))
                stop(server.proc)
                children.remove(server.proc)

        for size in [int(n) for n in args.load_sizes.split(",") if n]:
            # shieldns alone: Unbound needs ~1.2 GiB and ~25 s per million
            # RPZ names here, so 10M is out of its reach on this machine.
            PIN["server"] = []
            path = f"{work}/load-{size}.txt"
            probe = workloads.write_names(path, size)
            started = time.time()
            server, log = start_shieldns(work, 1, [path])
            waited = wait_blocked("shieldns", server.proc, server.ip, probe)
            if waited is None:
                sys.exit(f"shieldns did not block {probe} with {size} names:\n{open(log).read()[-3000:]}")
            load_s, rss = time.time() - started, rss_mib(server.proc.pid)
            time.sleep(3)
            settled, peak = rss_mib(server.proc.pid), rss_mib(server.proc.pid, "VmHWM")
            print(f"load {size:>9} names: in force {load_s:6.2f} s after start, RSS {rss:7.1f} MiB then, "
                  f"{settled:7.1f} MiB 3 s later, peak {peak:7.1f} MiB", flush=True)
            record(kind="load_size", server="shieldns", names=size, load_s=round(load_s, 3), rss_mib=round(rss, 1),
                   rss_settled_mib=round(settled, 1), rss_peak_mib=round(peak, 1))
            stop(server.proc)
            os.remove(path)

        print("\nSummary (saturation figures: median over the rounds, ratios the median of each round's ratio to "
              "its ceiling; p50/p99: medians over the fixed-rate rounds):")
        print(f"  {'thr':>3} {'workload':8} {'server':9} {'q/s':>9} {'lost %':>7} {'mean ms':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'µs/q':>6} {'q/s÷ceil':>9} {'µs÷ceil':>8}")
        for e in summary:
            print(f"  {e['threads']:>3} {e['workload']:8} {e['server']:9} {e['qps']:>9.0f} {e['lost_pct']:>7.2f} "
                  f"{e['latency_ms']:>8.3f} {e['p50_ms']:>7.3f} {e['p99_ms']:>7.3f} {e['cpu_us_per_query']:>6.1f} "
                  f"{e['qps_vs_ceiling']:>9.2f} {e['cpu_vs_ceiling']:>8.2f}")
        if {"shieldns", "unbound"} <= set(peers):
            print("\nshieldns ÷ Unbound:")
            for threads in thread_counts:
                for workload in wanted:
                    pick = {e["server"]: e for e in summary if e["threads"] == threads and e["workload"] == workload}
                    s, u = pick["shieldns"], pick["unbound"]
                    ratios = {"qps": s["qps"] / u["qps"], "cpu_us_per_query": s["cpu_us_per_query"] / u["cpu_us_per_query"],
                              "p50": s["p50_ms"] / u["p50_ms"], "p99": s["p99_ms"] / u["p99_ms"]}
                    print(f"  {threads} thr {workload:8} q/s {ratios['qps']:.2f}x  CPU/query {ratios['cpu_us_per_query']:.2f}x  "
                          f"p50 {ratios['p50']:.2f}x  p99 {ratios['p99']:.2f}x")
                    record(kind="ratio_shieldns_unbound", workload=workload, threads=threads,
                           **{k: round(v, 3) for k, v in ratios.items()})
        for e in summary:
            record(kind="summary", **e)
    finally:
        children = [c.proc if isinstance(c, Server) else c for c in children]
        children = [c for c in children if c is not None]
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
