#!/usr/bin/env python3
"""Hostile-load figures for the closing notes and benches/RESULTS.md.

Runs the release build in forward mode to an nsd on loopback and measures
what an allowed client sees while:

  refused-flood  20,000 TCP connections from a source the access list
                 refuses (127.0.32.1), held open by the attacker;
  allowed-flood  20,000 TCP connections from 200 allowed addresses
                 (127.0.31.100-.199, over the per-client and total caps),
                 held open;
  big-answers    110,000 names with 7.6 KB TXT answers fetched over TCP,
                 then the daemon's RSS against cache.max_bytes and
                 upstream.cache_bytes (run for both engines).

During each flood the allowed client (127.0.31.10) sends UDP queries for
new names (each a real forward to nsd) and blocked names, and TCP queries
on fresh connections; answered % and p50/p99 latency are printed, with the
daemon's open descriptors and discard counters.

Usage (root, nsd installed; traffic stays on 127.0.31.0/24 and 127.0.32.0/24):
    cargo build --release -p shieldns
    python3 benches/hardening/flood.py [--binary target/release/shieldns] [--work /var/tmp/shieldns-flood]
Stops only the processes it started, by PID.
"""

import argparse
import multiprocessing
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

NSD = "127.0.31.1"
NSD_PORT = 5300
SERVER = "127.0.31.3"
PORT = 53
METRICS = 9163
CLIENT = "127.0.31.10"


def query(name, qtype=1, qid=None, edns=True):
    qid = random.randrange(65536) if qid is None else qid
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", qtype, 1)
    if edns:
        packet += b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return qid, packet


def write_files(work, binary_engine):
    os.makedirs(work, exist_ok=True)
    big = " ".join('"' + ("%02d" % i) + "x" * 248 + '"' for i in range(30))
    with open(f"{work}/flood.test.zone", "w") as f:
        f.write("$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 127.0.31.1\n"
                "* A 192.0.2.1\n*.big TXT " + big + "\n")
    with open(f"{work}/nsd.conf", "w") as f:
        f.write(f'server:\n  ip-address: {NSD}@{NSD_PORT}\n  username: ""\n  chroot: ""\n'
                f'  zonesdir: "{work}"\n  pidfile: "{work}/nsd.pid"\n  database: ""\n'
                f'  zonelistfile: "{work}/zone.list"\n  xfrdfile: "{work}/xfrd.state"\n'
                f'  xfrdir: "{work}"\n  server-count: 1\n  tcp-count: 1000\n'
                f'remote-control:\n  control-enable: no\n'
                f'zone:\n  name: flood.test\n  zonefile: flood.test.zone\n')
    with open(f"{work}/blocked.txt", "w") as f:
        f.write("blocked.flood.test\n")


def config(work, engine, max_bytes=268435456, cache_bytes=67108864):
    return f"""
[server]
listen = ["{SERVER}:{PORT}"]
allow = ["127.0.31.0/24"]

[upstream]
mode = "forward"
engine = "{engine}"
dnssec = false
resolve_local_zones = ["test."]
forward = ["{NSD}:{NSD_PORT}"]
cache_bytes = {cache_bytes}

[cache]
max_bytes = {max_bytes}

[metrics]
listen = "127.0.0.1:{METRICS}"

[[list]]
name = "blocked"
category = "adult"
format = "domains"
path = "{work}/blocked.txt"

[[profile]]
name = "default"
clients = ["0.0.0.0/0"]
block = ["adult"]

[sync]
cache_dir = "{work}/kept"
"""


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def wait_dns(addr, port, name="x.flood.test", timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:
            _, packet = query(name)
            s.sendto(packet, (addr, port))
            s.recvfrom(4096)
            return True
        except OSError:
            time.sleep(0.2)
        finally:
            s.close()
    return False


def scrape():
    s = socket.create_connection(("127.0.0.1", METRICS), timeout=3)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    return {line.split(" ")[0]: line.split(" ")[1] for line in body.decode().splitlines()
            if line.startswith("shieldns_resolver_discarded_total") or line.startswith("shieldns_tcp_connections")}


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def probe(stop, results):
    """The allowed client: UDP (new names, blocked names) and TCP queries."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((CLIENT, 0))
    udp.settimeout(2.0)
    i = 0
    while not stop.is_set():
        i += 1
        name = f"p{random.randrange(1 << 30)}.flood.test" if i % 2 else "blocked.flood.test"
        qid, packet = query(name)
        started = time.perf_counter()
        try:
            udp.sendto(packet, (SERVER, PORT))
            while True:
                data, _ = udp.recvfrom(4096)
                if data[:2] == struct.pack(">H", qid):
                    break
            results.append(("udp", time.perf_counter() - started))
        except OSError:
            results.append(("udp", None))
        if i % 4 == 0:
            started = time.perf_counter()
            try:
                tcp = socket.create_connection((SERVER, PORT), timeout=2.0, source_address=(CLIENT, 0))
                qid, packet = query(f"t{random.randrange(1 << 30)}.flood.test")
                tcp.sendall(struct.pack(">H", len(packet)) + packet)
                length = struct.unpack(">H", recv_exact(tcp, 2))[0]
                recv_exact(tcp, length)
                tcp.close()
                results.append(("tcp", time.perf_counter() - started))
            except OSError:
                results.append(("tcp", None))
        time.sleep(0.005)


def flood_worker(sources, count, offset, opened, release):
    """One attacker process: opens `count` connections and holds them until
    `release` is set (two processes: each has its own descriptor limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((sources[(offset + i) % len(sources)], 0))
            s.connect_ex((SERVER, PORT))
            held.append(s)
        except OSError:
            s.close()
    with opened.get_lock():
        opened.value += len(held)
    release.wait()
    for s in held:
        s.close()


def flood(sources, count):
    """Starts two attacker processes for `count` connections; returns the
    count opened and the event that releases them."""
    opened = multiprocessing.Value("i", 0)
    release = multiprocessing.Event()
    workers = [multiprocessing.Process(target=flood_worker, args=(sources, count // 2, k * (count // 2), opened, release))
               for k in range(2)]
    for w in workers:
        w.start()
    return workers, opened, release


def summary(label, results):
    for transport in ("udp", "tcp"):
        rows = [r for t, r in results if t == transport]
        if not rows:
            continue
        ok = sorted(r for r in rows if r is not None)
        pct = 100.0 * len(ok) / len(rows)
        p50 = ok[len(ok) // 2] * 1000 if ok else float("nan")
        p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000 if ok else float("nan")
        print(f"  {label:14} {transport}: {len(ok)}/{len(rows)} answered ({pct:.1f} %), "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_flood(label, sources, daemon):
    results, stop = [], threading.Event()
    prober = threading.Thread(target=probe, args=(stop, results))
    prober.start()
    time.sleep(1.0)
    started = time.time()
    workers, opened, release = flood(sources, 20000)
    # Measure while the connections are held: until both attackers are done
    # opening, then three seconds more.
    while opened.value < 19000 and time.time() - started < 60 and any(w.is_alive() for w in workers):
        time.sleep(0.2)
    elapsed = time.time() - started
    time.sleep(3.0)
    daemon_fds = fds(daemon.pid)
    stop.set()
    prober.join()
    print(f"{label}: {opened.value} connections opened (held) in {elapsed:.1f} s; daemon fds {daemon_fds}, "
          f"counters {scrape()}")
    summary(label, results)
    release.set()
    for w in workers:
        w.join()
    time.sleep(1.0)


def big_answers(daemon, names=110000):
    """Fetches `names` 7.6 KB answers over pipelined TCP; RSS before/after."""
    before = rss_mib(daemon.pid)
    tcp = socket.create_connection((SERVER, PORT), timeout=10, source_address=(CLIENT, 0))
    sent = got = answered = 0
    window = 32
    buffer = b""
    while got < names:
        while sent < names and sent - got < window:
            _, packet = query(f"n{sent}.big.flood.test", qtype=16, qid=sent % 65536, edns=False)
            tcp.sendall(struct.pack(">H", len(packet)) + packet)
            sent += 1
        length = struct.unpack(">H", recv_exact(tcp, 2))[0]
        reply = recv_exact(tcp, length)
        got += 1
        # NOERROR with the whole TXT set in the answer section.
        if reply[3] & 0x0f == 0 and struct.unpack(">H", reply[6:8])[0] == 1:
            answered += 1
    tcp.close()
    return before, rss_mib(daemon.pid), answered


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/shieldns")
    parser.add_argument("--work", default="/var/tmp/shieldns-flood")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = args.work
    write_files(work, None)
    nsd = start(["nsd", "-d", "-c", f"{work}/nsd.conf"], f"{work}/nsd.log")
    procs = [nsd]
    try:
        time.sleep(1.0)
        for engine, max_bytes, cache_bytes in [("unbound", 268435456, 67108864), ("hickory", 67108864, 67108864)]:
            with open(f"{work}/shieldns.toml", "w") as f:
                f.write(config(work, engine, max_bytes, cache_bytes))
            daemon = start([args.binary, "run", "--config", f"{work}/shieldns.toml"], f"{work}/shieldns-{engine}.log")
            procs.append(daemon)
            if not wait_dns(SERVER, PORT):
                sys.exit(f"shieldns did not answer; see {work}/shieldns-{engine}.log")
            print(f"== engine {engine}, RSS at start {rss_mib(daemon.pid):.1f} MiB")
            if engine == "unbound":
                run_flood("refused-flood", ["127.0.32.1"], daemon)
                run_flood("allowed-flood", [f"127.0.31.{i}" for i in range(100, 200)], daemon)
            if not args.skip_big:
                started = time.time()
                before, after, answered = big_answers(daemon)
                print(f"big-answers: 110000 names x 7.6 KB over TCP ({answered} answered in full) "
                      f"in {time.time() - started:.0f} s; "
                      f"RSS {before:.1f} -> {after:.1f} MiB (cache.max_bytes {max_bytes >> 20} MiB, "
                      f"upstream.cache_bytes {cache_bytes >> 20} MiB)")
            daemon.terminate()
            daemon.wait(timeout=20)
            procs.remove(daemon)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
