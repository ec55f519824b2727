#!/usr/bin/env python3
"""Throughput, CPU per query, memory and load time of shieldns next to a
ceiling responder, driven by dnsperf on loopback.

    python3 benches/dnsperf/bench.py [--names 1000000] [--seconds 10] [--threads 1]

Starts, all on 127.0.30.0/24 and torn down at the end:
  * nsd on 127.0.30.1:53 serving `bench.test` (the upstream for allowed names);
  * the ceiling responder (echo.c: flips QR, parses nothing) on 127.0.30.2;
  * shieldns (release build) on 127.0.30.3, forward mode to the nsd, with a
    synthetic N-name blocklist.
Workloads: `blocked` (listed names and subdomains of them) and `cached`
(allowed names, warmed first). For each: queries/s, lost %, mean latency and
the server's CPU µs per answered query (utime+stime of all its threads /
completed queries, which does not depend on which side saturated), plus the
ratios to the ceiling. Also the list load time and RSS after load.
Unbound side-by-side runs are left to the performance issue (issue 7).
Needs: dnsperf, nsd, gcc (apt-get install dnsperf nsd gcc). Run as root
(nsd binds port 53).
"""

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
NSD_IP, ECHO_IP, SHIELD_IP = "127.0.30.1", "127.0.30.2", "127.0.30.3"
PORT = 5300
ALLOWED = 20_000
TLDS = ["com", "net", "org", "vn", "xyz", "info", "ru", "io"]


def synthetic_names(n, seed=7):
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "zen", "tor", "bex", "qua", "ri", "don", "vel", "sa", "nu"]
    for i in range(n):
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        yield f"{word}{i:x}.{TLDS[i % len(TLDS)]}"


def cpu_seconds(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dnsperf(server, port, queries, seconds):
    out = subprocess.run(
        ["dnsperf", "-s", server, "-p", str(port), "-d", queries, "-l", str(seconds), "-c", "8", "-q", "500"],
        capture_output=True, text=True, check=True).stdout
    number = lambda label: float(re.search(label + r":\s+([0-9.]+)", out).group(1))
    return {
        "completed": number("Queries completed"),
        "qps": number("Queries per second"),
        "lost_pct": float(re.search(r"Queries lost:\s+\d+ \(([0-9.]+)%\)", out).group(1)),
        "latency_ms": number(r"Average Latency \(s\)") * 1000,
        "servfail": "SERVFAIL" in out,
    }


def measure(name, pid, server, port, queries, seconds):
    before = cpu_seconds(pid)
    result = dnsperf(server, port, queries, seconds)
    used = cpu_seconds(pid) - before
    result["cpu_us_per_query"] = used / max(result["completed"], 1) * 1e6
    print(f"  {name:8} {result['qps']:>9.0f} q/s  lost {result['lost_pct']:.2f} %  "
          f"mean {result['latency_ms']:.3f} ms  {result['cpu_us_per_query']:.1f} µs CPU/query", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for tool in ["dnsperf", "nsd", "gcc"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install dnsperf nsd gcc)")
    subprocess.run(["cargo", "build", "--release", "-p", "shieldns"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="shieldns-bench-")
    children = []
    try:
        # The blocklist, the allowed zone and the query files.
        names = list(synthetic_names(args.names))
        with open(f"{work}/blocked.txt", "w") as f:
            f.write("\n".join(names) + "\n")
        with open(f"{work}/bench.test.zone", "w") as f:
            f.write("$TTL 86400\n@ SOA ns.bench.test. h.bench.test. 1 3600 600 86400 300\n@ NS ns.bench.test.\n"
                    f"ns A {NSD_IP}\n")
            for i in range(ALLOWED):
                f.write(f"h{i} A 192.0.2.{i % 250 + 1}\n")
        rng = random.Random(11)
        with open(f"{work}/q-blocked.txt", "w") as f:
            for _ in range(100_000):
                name = rng.choice(names)
                f.write(f"{'www.' if rng.random() < 0.5 else ''}{name} A\n")
        with open(f"{work}/q-cached.txt", "w") as f:
            for _ in range(100_000):
                f.write(f"h{rng.randrange(ALLOWED)}.bench.test A\n")
        with open(f"{work}/nsd.conf", "w") as f:
            f.write(f'server:\n  ip-address: {NSD_IP}@53\n  username: ""\n  chroot: ""\n  zonesdir: "{work}"\n'
                    f'  pidfile: "{work}/nsd.pid"\n  database: ""\n  zonelistfile: "{work}/zone.list"\n'
                    f'  xfrdfile: "{work}/xfrd.state"\n  do-ip6: no\n  verbosity: 0\n'
                    f'zone:\n  name: bench.test\n  zonefile: bench.test.zone\n')
        children.append(subprocess.Popen(["nsd", "-d", "-c", f"{work}/nsd.conf"], stderr=subprocess.DEVNULL))
        subprocess.run(["gcc", "-O2", "-o", f"{work}/echo", f"{HERE}/echo.c"], check=True)
        echo = subprocess.Popen([f"{work}/echo", ECHO_IP, str(PORT)])
        children.append(echo)
        with open(f"{work}/shieldns.toml", "w") as f:
            f.write(f'[server]\nlisten = ["{SHIELD_IP}:{PORT}"]\nallow = ["127.0.0.0/8"]\nudp_sockets = {args.threads}\n'
                    f'[upstream]\nmode = "forward"\nforward = ["{NSD_IP}:53"]\n[cache]\nmax_entries = 100000\n'
                    f'[[list]]\nname = "bench"\ncategory = "adult"\nformat = "domains"\npath = "{work}/blocked.txt"\n'
                    f'[[profile]]\nname = "all"\nclients = ["0.0.0.0/0"]\nblock = ["adult"]\n')
        log = open(f"{work}/shieldns.log", "w")
        started = time.time()
        env = dict(os.environ, RUST_LOG="warn,shieldns=info", TOKIO_WORKER_THREADS=str(args.threads))
        shield = subprocess.Popen([f"{ROOT}/target/release/shieldns", "run", "--config", f"{work}/shieldns.toml"],
                                  stderr=log, env=env)
        children.append(shield)
        while "shieldns ready" not in open(f"{work}/shieldns.log").read():
            if shield.poll() is not None:
                sys.exit(open(f"{work}/shieldns.log").read())
            time.sleep(0.02)
        print(f"shieldns: {args.names} names loaded in {time.time() - started:.2f} s, "
              f"RSS {rss_mib(shield.pid):.1f} MiB, {args.threads} worker thread(s)", flush=True)
        # Warm the cache with every allowed name.
        subprocess.run(["dnsperf", "-s", SHIELD_IP, "-p", str(PORT), "-d", f"{work}/q-cached.txt", "-n", "1",
                        "-c", "8", "-q", "200"], capture_output=True, check=True)
        results = {}
        for workload in ["blocked", "cached"]:
            print(f"{workload}:", flush=True)
            queries = f"{work}/q-{workload}.txt"
            ceiling = measure("ceiling", echo.pid, ECHO_IP, PORT, queries, args.seconds)
            ours = measure("shieldns", shield.pid, SHIELD_IP, PORT, queries, args.seconds)
            results[workload] = (ceiling, ours)
            print(f"  ratio    {ours['qps'] / ceiling['qps']:.2f} of the ceiling's q/s, "
                  f"{ours['cpu_us_per_query'] / max(ceiling['cpu_us_per_query'], 0.01):.2f}x its CPU per query",
                  flush=True)
        print(f"shieldns RSS after the runs: {rss_mib(shield.pid):.1f} MiB")
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
