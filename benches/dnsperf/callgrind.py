#!/usr/bin/env python3
"""Instructions per answered query, counted by valgrind's callgrind: a figure
that does not drift with the machine's load the way q/s and CPU time do.

    python3 benches/dnsperf/callgrind.py [--names 1000000] [--queries 20000]

Starts the loopback nsd of bench.py and shieldns (release build, forward mode,
one UDP thread) under `valgrind --tool=callgrind --instr-atstart=no`, so the
list loads at near-native speed. Per workload (`blocked`, then `cached` after
one warming pass that fills the packet cache): instrumentation on, a short
warm-up, counters zeroed, `--queries` queries from dnsperf at a rate valgrind
keeps up with, a dump, instrumentation off. Prints user-space instructions
(Ir) per answered query, for the whole process (every thread), and the same
for the ceiling responder (echo.c) for scale; kernel work is not counted.
Needs valgrind, dnsperf, nsd, gcc; run as root (nsd binds port 53).
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import bench  # noqa: E402  (benches/dnsperf/bench.py)
import workloads  # noqa: E402


def control(*args):
    return subprocess.run(["callgrind_control", *args], capture_output=True, text=True, check=True).stdout


def counted(server, pid, work, queries, rate, keep=None):
    """Ir of the process per answered query over one dnsperf run of `queries`."""
    control("-i", "on", str(pid))
    bench.dnsperf(server.ip, queries, ["-n", "1", "-Q", str(rate), "-q", "200"])  # warm-up
    control("-z", str(pid))
    out = bench.dnsperf(server.ip, queries, ["-n", "1", "-Q", str(rate), "-q", "200"])
    before = set(glob.glob(f"{work}/callgrind.out*"))
    control("-d", str(pid))
    control("-i", "off", str(pid))
    for _ in range(100):
        fresh = set(glob.glob(f"{work}/callgrind.out*")) - before
        if fresh:
            break
        time.sleep(0.05)
    else:
        sys.exit("callgrind wrote no dump")
    time.sleep(0.5)  # the dump is written in one go; let it finish
    dump = sorted(fresh)[-1]
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(dump, os.path.join(keep, f"{server.name}-{os.path.basename(queries)}.callgrind"))
    text = open(dump).read()
    total = int(re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M).group(1))
    answered = bench.parse(out)["completed"]
    return total / max(answered, 1), answered


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000, help="queries counted per workload")
    parser.add_argument("--rate", type=int, default=3000, help="q/s dnsperf offers (valgrind is ~50x slower)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--keep", help="copy each dump here (for callgrind_annotate)")
    args = parser.parse_args()
    for tool in ["valgrind", "callgrind_control", "dnsperf", "nsd", "gcc"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install valgrind dnsperf nsd gcc)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shieldns"], cwd=bench.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="shieldns-callgrind-")
    children = []
    try:
        data = workloads.generate(work, args.names, bench.NSD_IP, None)
        for workload in ("blocked", "cached"):
            with open(data[workload]) as f:
                lines = f.readlines()[: args.queries]
            with open(f"{work}/{workload}.q", "w") as f:
                f.writelines(lines)
        children.append(bench.start_nsd(work, data))
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={work}/callgrind.out.%p"]
        subprocess.run(["gcc", "-O2", "-pthread", "-o", f"{work}/echo", f"{HERE}/echo.c"], check=True)
        print(f"list: {args.names} names; {args.queries} queries per workload at {args.rate} q/s", flush=True)
        results = {}
        for name in ("ceiling", "shieldns"):
            bench.PIN["server"] = valgrind
            if name == "ceiling":
                server = bench.Server("ceiling", None, bench.ECHO_IP)
                bench.restart_echo(server, work)
            else:
                server, _ = bench.start_shieldns(work, 1, [data["list"]])
                if bench.wait_blocked("shieldns", server.proc, server.ip, data["probe"]) is None:
                    sys.exit(open(f"{work}/shieldns.log").read()[-3000:])
            children.append(server.proc)
            for workload in ("blocked", "cached"):
                if name == "shieldns" and workload == "cached":
                    # Fill the packet cache first; its misses go upstream.
                    bench.dnsperf(server.ip, f"{work}/cached.q", ["-n", "1", "-Q", str(args.rate), "-q", "200"])
                per_query, answered = counted(server, server.proc.pid, work, f"{work}/{workload}.q", args.rate,
                                              args.keep)
                results[(name, workload)] = per_query
                print(f"  {name:9} {workload:8} {per_query:9.0f} instructions per answered query "
                      f"({answered:.0f} answered)", flush=True)
            bench.stop(server.proc)
        for workload in ("blocked", "cached"):
            print(f"{workload}: shieldns {results[('shieldns', workload)]:.0f} Ir/query, "
                  f"ceiling {results[('ceiling', workload)]:.0f} Ir/query (user space only)")
    finally:
        for child in children:
            if child is not None and child.poll() is None:
                bench.stop(child)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
