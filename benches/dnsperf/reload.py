#!/usr/bin/env python3
"""Reload under load: shieldns with an N-name list answers dnsperf at a fixed
rate while the script sends SIGHUP R times, each reload swapping in a list
that moves one name from allowed to blocked.

    python3 benches/dnsperf/reload.py [--names 1000000] [--rate 5000] [--reloads 20] [--gap 2]

Prints queries sent/lost, every rcode dnsperf saw (no SERVFAIL allowed), the
time each reload took, RSS after the first load, the peak RSS during the
reloads (the kernel's VmHWM, reset after the first load) and what it adds to
the RSS after the first load, each reload's own extra memory (VmHWM reset
just before its SIGHUP, over the RSS then; also as a multiple of the index
size the daemon logs), RSS after the last reload, and
checks that a name answered from the cache before it was listed is blocked
right after the reload that lists it. Loopback only (127.0.30.0/24); needs
dnsperf and dig; builds nothing (run bench.py or `cargo build --release`
first). `--source url` makes the big list a `url` list instead of a file:
the script writes its verified cached copy and state file into the sync
cache itself (the URL points at a closed loopback port, so every refresh
fails and the daemon builds from that copy, the path a pulled national or
category list takes).
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import rss_mib, stop  # noqa: E402  (benches/dnsperf/bench.py)
import workloads  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SHIELD_IP, PORT = "127.0.30.3", 5300


def reset_peak(pid):
    """Starts VmHWM afresh from the current RSS (Linux 4.0+; False without the right)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def dig_status(name):
    out = subprocess.run(["dig", f"@{SHIELD_IP}", "-p", str(PORT), name, "A", "+time=2", "+tries=1"],
                         capture_output=True, text=True).stdout
    match = re.search(r"status: (\w+)", out)
    return match.group(1) if match else "NO-ANSWER"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--gap", type=float, default=2.0,
                        help="seconds between one reload's end and the next SIGHUP (0: back to back; the "
                             "allocator returns a replaced index's pages within about a second, so back-to-back "
                             "reloads stack them)")
    parser.add_argument("--source", choices=["file", "url"], default="file",
                        help="the big list as a local file or as a url list's cached copy")
    args = parser.parse_args()
    for tool in ["dnsperf", "dig"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install dnsperf bind9-dnsutils)")
    binary = f"{ROOT}/target/release/shieldns"
    if not os.path.exists(binary):
        sys.exit("build first: cargo build --release -p shieldns")
    work = tempfile.mkdtemp(prefix="shieldns-reload-")
    shield = None
    try:
        names = list(workloads.synthetic_names(args.names))
        base = "\n".join(names) + "\n"

        url = "https://127.0.30.1:9/bench.txt"  # a closed loopback port: refreshes fail at once
        os.makedirs(f"{work}/cache", exist_ok=True)

        def write_list(extra):
            body = (base + extra).encode()
            if args.source == "file":
                with open(f"{work}/list.tmp", "wb") as f:
                    f.write(body)
                os.replace(f"{work}/list.tmp", f"{work}/list.txt")
                return
            # A verified version as the syncer stores one: a content-named
            # data file, then the state file naming it, replaced last.
            digest = hashlib.sha256(body).hexdigest()
            name = f"bench-{digest[:16]}.list"
            with open(f"{work}/cache/{name}", "wb") as f:
                f.write(body)
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            state = {"list": "bench", "url": url, "current": {
                "file": name, "sha256": digest, "fetched_at": now, "entries": len(names),
                "bytes": len(body), "serial": 1}}
            with open(f"{work}/cache/bench.tmp", "w") as f:
                json.dump(state, f)
            os.replace(f"{work}/cache/bench.tmp", f"{work}/cache/bench.json")

        write_list("")
        # The names that flip from allowed to blocked answer from RPZ local
        # data, so the run needs no upstream and measures the resolver alone.
        with open(f"{work}/local.rpz", "w") as f:
            f.write("$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 300\n  NS localhost.\n")
            for i in range(args.reloads + 1):
                f.write(f"flip{i}.reload.test A 192.0.2.{i + 1}\n")
        with open(f"{work}/shieldns.toml", "w") as f:
            f.write(f'[server]\nlisten = ["{SHIELD_IP}:{PORT}"]\nallow = ["127.0.0.0/8"]\n'
                    f'[upstream]\nmode = "forward"\nforward = ["127.0.30.1:53"]\ntimeout_ms = 500\n'
                    f'dnssec = false\nresolve_local_zones = ["test."]\n'
                    # Every `path` list is kept in sync.cache_dir too: in the
                    # work directory, never the system default.
                    + f'[sync]\ncache_dir = "{work}/cache"\n'
                    + ('connect_timeout = "200ms"\nretries = 0\n' if args.source == "url" else "")
                    + f'[[list]]\nname = "bench"\ncategory = "adult"\nformat = "domains"\n'
                    + (f'path = "{work}/list.txt"\n' if args.source == "file" else f'url = "{url}"\n')
                    + f'[[list]]\nname = "local"\nformat = "rpz"\npath = "{work}/local.rpz"\n'
                    f'[[profile]]\nname = "all"\nclients = ["0.0.0.0/0"]\nblock = ["adult"]\n')
        with open(f"{work}/queries.txt", "w") as f:
            for i in range(0, len(names), max(1, len(names) // 5000)):
                f.write(f"{names[i]} A\n")
        log = open(f"{work}/shieldns.log", "w")
        shield = subprocess.Popen([binary, "run", "--config", f"{work}/shieldns.toml"], stderr=log,
                                  env=dict(os.environ, RUST_LOG="warn,shieldns=info"))
        while "shieldns ready" not in open(f"{work}/shieldns.log").read():
            if shield.poll() is not None:
                sys.exit(open(f"{work}/shieldns.log").read())
            time.sleep(0.02)
        # RSS once the allocator has returned the build's scratch memory
        # (jemalloc's dirty pages decay within a second, see .cargo/config.toml).
        time.sleep(2)
        first_rss = rss_mib(shield.pid)
        index_mib = int(re.findall(r"index_bytes=(\d+)", open(f"{work}/shieldns.log").read())[-1]) / 2**20
        exact_peak = reset_peak(shield.pid)
        seconds = max(10, int(args.reloads * (2 + args.gap)) + 6)
        dnsperf = subprocess.Popen(["dnsperf", "-s", SHIELD_IP, "-p", str(PORT), "-d", f"{work}/queries.txt",
                                    "-l", str(seconds), "-Q", str(args.rate), "-c", "4", "-t", "3"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = [first_rss]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_mib(shield.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(2)
        durations, stale, extras = [], [], []
        for i in range(args.reloads):
            flip = f"flip{i}.reload.test"
            before = dig_status(flip)  # answered (and cached) while allowed
            write_list(f"{flip}\n")
            done_before = open(f"{work}/shieldns.log").read().count("reload complete")
            # This reload's own extra memory: its high-water mark over the RSS
            # just before its SIGHUP (what earlier reloads left is not its cost).
            if exact_peak:
                reset_peak(shield.pid)
                rss_before = rss_mib(shield.pid)
            started = time.time()
            shield.send_signal(signal.SIGHUP)
            while open(f"{work}/shieldns.log").read().count("reload complete") == done_before:
                if time.time() - started > 60:
                    sys.exit("reload did not complete:\n" + open(f"{work}/shieldns.log").read())
                time.sleep(0.01)
            durations.append(time.time() - started)
            if exact_peak:
                hwm = rss_mib(shield.pid, "VmHWM")
                extras.append(hwm - rss_before)
                peak[0] = max(peak[0], hwm)
            after = dig_status(flip)
            time.sleep(args.gap)
            if before != "NOERROR" or after != "NXDOMAIN":
                stale.append((flip, before, after))
        out = dnsperf.communicate()[0]
        sampling.set()
        sampler.join()
        if exact_peak:  # the kernel's high-water mark misses no short spike
            peak[0] = max(peak[0], rss_mib(shield.pid, "VmHWM"))
        time.sleep(2)
        last_rss = rss_mib(shield.pid)
        sent = re.search(r"Queries sent:\s+(\d+)", out).group(1)
        lost = re.search(r"Queries lost:\s+(\d+ \([0-9.]+%\))", out).group(1)
        codes = re.search(r"Response codes:\s+(.*)", out).group(1)
        print(f"{args.names} names, {args.rate} q/s offered for {seconds} s, {args.reloads} reloads "
              f"{args.gap:g} s apart")
        print(f"  queries sent {sent}, lost {lost}; rcodes: {codes}")
        print(f"  reload time: min {min(durations):.2f} s, max {max(durations):.2f} s, "
              f"mean {sum(durations) / len(durations):.2f} s")
        print(f"  RSS: {first_rss:.1f} MiB after the first load, peak {peak[0]:.1f} MiB during reloads, "
              f"{last_rss:.1f} MiB after the last ({last_rss / first_rss:.2f}x the first)")
        print(f"  peak during the run over the RSS after the first load: {peak[0] - first_rss:.1f} MiB = "
              f"{(peak[0] - first_rss) / index_mib:.2f}x the index ({index_mib:.1f} MiB)"
              + ("" if exact_peak else " (sampled every 50 ms: no right to reset VmHWM)"))
        if extras:
            print(f"  extra memory of each reload over the RSS just before its SIGHUP: max {max(extras):.1f} MiB = "
                  f"{max(extras) / index_mib:.2f}x the index, mean {sum(extras) / len(extras):.1f} MiB")
        print(f"  cached-then-listed names blocked right after their reload: "
              f"{args.reloads - len(stale)}/{args.reloads}" + (f"  FAILED: {stale}" if stale else ""))
        if "SERVFAIL" in codes or stale:
            sys.exit(1)
    finally:
        if shield is not None:
            stop(shield)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
