"""Unbound's configuration for benches/dnsperf/bench.py.

Listens on one loopback address only, sends upstream from that same address
and only to the bench's nsd (every name is forwarded there, so nothing is ever
asked of a real root server). No validator module, so no trust-anchor file,
RFC 8145 key-tag signaling or root-key sentinel traffic; Unbound has no other
phone-home. The list is an RPZ zone read from a file (no transfer source).
Socket buffers are left at the OS default, as shieldns leaves them."""


def write_config(work, ip, port, threads, rpz_zone, upstream_ip):
    path = f"{work}/unbound.conf"
    with open(path, "w") as f:
        f.write(f"""server:
    interface: {ip}
    port: {port}
    outgoing-interface: {ip}
    do-ip4: yes
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: "{work}/unbound.pid"
    use-syslog: no
    logfile: "{work}/unbound.log"
    verbosity: 1
    num-threads: {threads}
    so-reuseport: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    # respip is what evaluates RPZ; no validator (the bench zones are unsigned).
    module-config: "respip iterator"
    trust-anchor-signaling: no
    root-key-sentinel: no
    # Large enough for the cached and zipf workloads (~120k names).
    msg-cache-size: 128m
    rrset-cache-size: 256m
    prefetch: no
    statistics-interval: 0
    hide-version: yes
remote-control:
    control-enable: no
rpz:
    name: "rpz.bench."
    zonefile: "{rpz_zone}"
    rpz-log: no
forward-zone:
    name: "bench.test."
    forward-addr: {upstream_ip}@53
forward-zone:
    # Everything else (the zipf names) too: the nsd's root zone answers them.
    name: "."
    forward-addr: {upstream_ip}@53
""")
    return path
