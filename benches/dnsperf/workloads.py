"""Data for benches/dnsperf/bench.py: the list (plain domains for shieldns, the
same names as an RPZ zone for Unbound), the nsd zones and the dnsperf query
files. Deterministic (fixed seeds)."""

import random
import re

ALLOWED = 20_000
QUERIES = 100_000
ZIPF_LISTED = 0.05  # share of zipf queries that hit a listed name
TLDS = ["com", "net", "org", "vn", "xyz", "info", "ru", "io"]
VALID = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")


def synthetic_names(n, seed=7):
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "zen", "tor", "bex", "qua", "ri", "don", "vel", "sa", "nu"]
    for i in range(n):
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        yield f"{word}{i:x}.{TLDS[i % len(TLDS)]}"


def write_names(path, n):
    """Writes the first `n` synthetic names, one per line; returns the first."""
    first = None
    with open(path, "w") as f:
        for name in synthetic_names(n):
            first = first or name
            f.write(name + "\n")
    return first


def suffixes(name):
    labels = name.split(".")
    return (".".join(labels[i:]) for i in range(len(labels)))


def zipf_sample(rng, population, k, s=1.0):
    cumulative, total = [], 0.0
    for rank in range(1, len(population) + 1):
        total += rank ** -s
        cumulative.append(total)
    return rng.choices(population, cum_weights=cumulative, k=k)


def generate(work, n, nsd_ip, ranking):
    names = list(synthetic_names(n))
    data = {"probe": names[0], "root_zone": False, "zipf_listed": 0, "zipf_listed_share": 0.0}
    rng = random.Random(11)
    with open(f"{work}/q-blocked.txt", "w") as f:
        for _ in range(QUERIES):
            f.write(f"{'www.' if rng.random() < 0.5 else ''}{rng.choice(names)} A\n")
    with open(f"{work}/q-cached.txt", "w") as f:
        for _ in range(QUERIES):
            f.write(f"h{rng.randrange(ALLOWED)}.bench.test A\n")
    data["blocked"], data["cached"] = f"{work}/q-blocked.txt", f"{work}/q-cached.txt"
    with open(f"{work}/bench.test.zone", "w") as f:
        f.write("$TTL 86400\n@ SOA ns.bench.test. h.bench.test. 1 3600 600 86400 300\n@ NS ns.bench.test.\n"
                f"ns A {nsd_ip}\n")
        for i in range(ALLOWED):
            f.write(f"h{i} A 192.0.2.{i % 250 + 1}\n")

    listed_extra = []
    if ranking:
        # Umbrella names in rank order; 5 % of them (seeded) join the list. The
        # allowed side is every name that no listed name covers; the root zone
        # wildcard of the nsd answers them, so nothing leaves loopback.
        ranked = list(dict.fromkeys(line.strip().lower().rstrip(".") for line in open(ranking)))
        ranked = [name for name in ranked if VALID.match(name)]
        pick = random.Random(13)
        listed_extra = [name for name in ranked if pick.random() < 0.05]
        covering = set(names)
        covering.update(listed_extra)
        allowed = [name for name in ranked if not any(s in covering for s in suffixes(name))]
        del covering
        zrng = random.Random(17)
        hits = sum(1 for _ in range(QUERIES) if zrng.random() < ZIPF_LISTED)
        queries = zipf_sample(zrng, allowed, QUERIES - hits) + zipf_sample(zrng, listed_extra, hits)
        zrng.shuffle(queries)
        with open(f"{work}/q-zipf.txt", "w") as f:
            f.writelines(f"{name} A\n" for name in queries)
        with open(f"{work}/root.zone", "w") as f:
            f.write("$TTL 86400\n. SOA ns.bench.test. h.bench.test. 1 3600 600 86400 300\n. NS ns.bench.test.\n"
                    "* A 192.0.2.250\n")
        data.update(zipf=f"{work}/q-zipf.txt", root_zone=True, zipf_listed=len(listed_extra),
                    zipf_listed_share=hits / QUERIES)

    data["list"] = f"{work}/blocked.txt"
    with open(data["list"], "w") as f:
        f.write("\n".join(names + listed_extra) + "\n")
    # RPZ QNAME triggers: `CNAME .` answers NXDOMAIN, for the name and (with
    # the wildcard) every name below it, as shieldns's list does.
    data["rpz"] = f"{work}/rpz.zone"
    with open(data["rpz"], "w") as f:
        f.write("$TTL 300\n$ORIGIN rpz.bench.\n@ SOA localhost. hostmaster.localhost. 1 3600 600 864000 300\n"
                "@ NS localhost.\n")
        for name in names + listed_extra:
            f.write(f"{name} CNAME .\n*.{name} CNAME .\n")
    data["listed"] = len(names) + len(listed_extra)
    data["rpz_records"] = 2 * data["listed"]
    return data
