//! Hot-path cost of the two Prometheus client crates: what one answered
//! query pays (a labelled counter resolved in advance, a histogram
//! observation), single-threaded and with both cores incrementing the same
//! handles. Run with `cargo bench -p shieldns-metrics`; the figures are in
//! ARCHITECTURE.md.

#![allow(missing_docs, clippy::unwrap_used)] // Bench code: a panic is the failure report.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram as PcHistogram, exponential_buckets};

const THREAD_OPS: u64 = 200_000;

fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_05, 2.0, 18).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_path");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    // prometheus: children resolved once, as shieldns-metrics does.
    let vec = prometheus::IntCounterVec::new(prometheus::Opts::new("q", "q"), &["profile", "rcode"]).unwrap();
    let counter = vec.with_label_values(&["default", "NOERROR"]);
    let histogram =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h").buckets(buckets())).unwrap();
    group.bench_function("prometheus/counter_inc", |b| b.iter(|| counter.inc()));
    group.bench_function("prometheus/histogram_observe", |b| {
        b.iter(|| histogram.observe(black_box(0.000_37)));
    });
    group.bench_function("prometheus/counter_with_label_values", |b| {
        b.iter(|| vec.with_label_values(black_box(&["default", "NOERROR"])).inc());
    });

    // prometheus-client: the same, with handles cloned out of the family.
    let family = Family::<Vec<(String, String)>, PcCounter>::default();
    let labels = vec![
        ("profile".to_owned(), "default".to_owned()),
        ("rcode".to_owned(), "NOERROR".to_owned()),
    ];
    let pc_counter = family.get_or_create(&labels).clone();
    let pc_histogram = PcHistogram::new(exponential_buckets(0.000_05, 2.0, 18));
    group.bench_function("prometheus_client/counter_inc", |b| b.iter(|| pc_counter.inc()));
    group.bench_function("prometheus_client/histogram_observe", |b| {
        b.iter(|| pc_histogram.observe(black_box(0.000_37)));
    });
    group.bench_function("prometheus_client/counter_get_or_create", |b| {
        b.iter(|| family.get_or_create(black_box(&labels)).inc());
    });

    // Contention: two threads, one per core, each doing THREAD_OPS queries'
    // worth of counter + histogram on shared handles.
    group.bench_function("prometheus/2_threads_query", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..THREAD_OPS {
                            counter.inc();
                            histogram.observe(black_box(0.000_37));
                        }
                    });
                }
            });
        });
    });
    group.bench_function("prometheus_client/2_threads_query", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..THREAD_OPS {
                            pc_counter.inc();
                            pc_histogram.observe(black_box(0.000_37));
                        }
                    });
                }
            });
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
