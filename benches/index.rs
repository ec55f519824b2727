//! Index benchmarks on synthetic lists of 100k, 1M and 10M names.
//!
//! Reports, per size: build time (parse + hash + sort, from list bytes),
//! bytes per name (live heap bytes after the build, measured by a counting
//! allocator, so nothing is guessed), and lookup latency for hits and misses
//! (criterion). Set `SHIELDNS_BENCH_SIZES=100000,1000000` to choose sizes.

#![allow(unsafe_code)] // The counting allocator below is the only unsafe code, and only in this bench.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use shieldns_index::{ListFormat, ListPolicy, ProfileConfig, SnapshotBuilder, Verdict};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged and only
// adds bookkeeping on an atomic counter.

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A deterministic synthetic name: 1–3 labels under a mix of TLDs, like
/// real lists (machine-generated labels, subdomains).
fn synthetic_name(i: u64, out: &mut String) {
    use std::fmt::Write;
    const TLDS: [&str; 8] = ["com", "net", "org", "ru", "xyz", "info", "co.uk", "com.vn"];
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let tld = TLDS[(x % 8) as usize];
    match x >> 60 {
        0..=9 => write!(out, "site{i:x}.{tld}"),
        10..=13 => write!(out, "cdn{}.site{i:x}.{tld}", x % 7),
        _ => write!(out, "a{}.b{}.host{i:x}.{tld}", x % 5, x % 3),
    }
    .ok();
}

fn synthetic_list(n: u64) -> Vec<u8> {
    let mut text = String::with_capacity(n as usize * 24);
    for i in 0..n {
        synthetic_name(i, &mut text);
        text.push('\n');
    }
    text.into_bytes()
}

fn sizes() -> Vec<u64> {
    std::env::var("SHIELDNS_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000, 10_000_000])
}

fn bench_index(c: &mut Criterion) {
    for n in sizes() {
        let text = synthetic_list(n);
        let before = LIVE.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut builder = SnapshotBuilder::new();
        let policy = ListPolicy::block("synthetic", Some("adult"), ListFormat::Domains);
        builder.add_list(policy, &text).expect("synthetic list loads");
        builder.add_profile(ProfileConfig {
            block: vec!["adult".into()],
            ..ProfileConfig::new("default", vec!["0.0.0.0/0".parse().expect("network")])
        });
        let snapshot = builder.build().expect("snapshot builds");
        let build_time = started.elapsed();
        let live = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "index/{n}: build {:.3} s, {} rules, {} distinct, {:.1} heap bytes/name (live after build), index arrays {:.1} bytes/name",
            build_time.as_secs_f64(),
            snapshot.rule_count(),
            snapshot.distinct_names(),
            live as f64 / n as f64,
            snapshot.index_bytes() as f64 / n as f64,
        );
        drop(text);
        let profile = snapshot.profile_for("192.0.2.1".parse().expect("address"));
        let mut hits = Vec::new();
        let mut misses = Vec::new();
        let mut name = String::new();
        for i in 0..1024u64 {
            name.clear();
            synthetic_name(i * (n / 1024).max(1), &mut name);
            hits.push(format!("www.{name}"));
            misses.push(format!("www.miss{i}.example.com"));
        }
        assert!(
            hits.iter()
                .all(|h| matches!(snapshot.verdict(h, profile), Verdict::Block(_)))
        );
        assert!(misses.iter().all(|m| snapshot.verdict(m, profile) == Verdict::Pass));
        let mut group = c.benchmark_group(format!("lookup/{n}"));
        let mut i = 0;
        group.bench_function("hit", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(snapshot.verdict(black_box(&hits[i]), profile))
            });
        });
        group.bench_function("miss", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(snapshot.verdict(black_box(&misses[i]), profile))
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench_index
}
criterion_main!(benches);
