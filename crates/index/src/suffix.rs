//! The compact suffix index: 64-bit label-chain hashes, sorted and bucketed.
//!
//! A name `www.example.com` is hashed from the root down:
//! `h1 = H(seed, "com")`, `h2 = H(h1, "example")`, `h3 = H(h2, "www")`.
//! A rule stores the hash of its own name; a query computes `h1, h2, …` in
//! one right-to-left walk over its labels and probes the table once per
//! label. The table is three parallel arrays sorted by hash (`hashes`,
//! `lines`, `tags`: 14 bytes per rule) plus a bucket directory indexed by the
//! hash's top bits (1–2 bytes per rule), so a probe reads one directory slot
//! and a few neighbouring hashes in one cache line.
//!
//! Collisions: two different names share a 64-bit hash with probability
//! about n/2^64 per probe (5·10⁻¹³ at 10M rules). The seed is random per
//! build, so a list publisher cannot craft a collision that survives a
//! reload, and `explain` re-reads the source line, which exposes one.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;

use crate::rule::{RuleAction, Scope};

/// The most lists one snapshot can hold; the list index lives in 10 bits of
/// each rule's tag.
pub const MAX_LISTS: usize = 1024;

/// A rule's list, scope and action packed in 16 bits:
/// bits 0–9 list index, bits 10–11 scope, bits 12–14 action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tag(u16);

impl Tag {
    /// Packs a tag. `list` must be below [`MAX_LISTS`]; the builder checks
    /// that when a list is added.
    pub(crate) fn new(list: u16, scope: Scope, action: RuleAction) -> Self {
        let scope_bits = match scope {
            Scope::Exact => 0,
            Scope::Subtree => 1,
            Scope::SubdomainsOnly => 2,
        };
        let action_bits = match action {
            RuleAction::Block => 0,
            RuleAction::BlockImportant => 1,
            RuleAction::Allow => 2,
            RuleAction::AllowImportant => 3,
            RuleAction::NoData => 4,
            RuleAction::Drop => 5,
            RuleAction::Rewrite => 6,
        };
        Self((list & 0x3ff) | (scope_bits << 10) | (action_bits << 12))
    }

    /// The list index.
    pub(crate) fn list(self) -> u16 {
        self.0 & 0x3ff
    }

    /// The rule's scope.
    pub(crate) fn scope(self) -> Scope {
        match (self.0 >> 10) & 0b11 {
            0 => Scope::Exact,
            2 => Scope::SubdomainsOnly,
            _ => Scope::Subtree,
        }
    }

    /// The rule's action.
    pub(crate) fn action(self) -> RuleAction {
        match (self.0 >> 12) & 0b111 {
            1 => RuleAction::BlockImportant,
            2 => RuleAction::Allow,
            3 => RuleAction::AllowImportant,
            4 => RuleAction::NoData,
            5 => RuleAction::Drop,
            6 => RuleAction::Rewrite,
            _ => RuleAction::Block,
        }
    }

    /// Whether a rule with this tag, stored under a suffix of `depth` labels,
    /// applies to a query name of `total` labels.
    pub(crate) fn applies_at(self, depth: usize, total: usize) -> bool {
        match self.scope() {
            Scope::Exact => depth == total,
            Scope::Subtree => true,
            Scope::SubdomainsOnly => depth < total,
        }
    }
}

/// Hashes label chains; one per snapshot, with a random seed.
#[derive(Clone, Debug)]
pub(crate) struct ChainHasher {
    state: FixedState,
    root: u64,
}

impl ChainHasher {
    /// A hasher with a fresh random seed.
    pub(crate) fn random() -> Self {
        // std's RandomState is seeded from the OS once per process and then
        // incremented, which is all the per-build unpredictability needed.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Self {
            state: FixedState::with_seed(seed),
            root: seed.rotate_left(17),
        }
    }

    /// The hash of the root, where every chain starts.
    pub(crate) fn root(&self) -> u64 {
        self.root
    }

    /// The hash of `label` under a parent whose hash is `parent`.
    #[inline]
    pub(crate) fn child(&self, parent: u64, label: &[u8]) -> u64 {
        self.state.hash_one((parent, label))
    }

    /// The hash of a whole normalized name.
    pub(crate) fn name(&self, name: &str) -> u64 {
        name.rsplit('.')
            .fold(self.root, |h, label| self.child(h, label.as_bytes()))
    }
}

/// Collects rules before the one sort that builds a [`SuffixIndex`].
#[derive(Debug, Default)]
pub(crate) struct SuffixIndexBuilder {
    entries: Vec<(u64, u32, Tag)>,
    depths: u128,
}

impl SuffixIndexBuilder {
    /// Adds a rule on a name of `labels` labels with chain hash `hash`.
    pub(crate) fn push(&mut self, hash: u64, labels: usize, line: u32, tag: Tag) {
        self.entries.push((hash, line, tag));
        self.depths |= depth_bit(labels);
    }

    /// Sorts and packs the rules. Rules with equal hashes stay adjacent,
    /// ordered by list and line, so that ties resolve by configuration order.
    pub(crate) fn build(mut self, hasher: ChainHasher) -> SuffixIndex {
        // One u128 key (hash, list, line) compares in two instructions
        // instead of a four-field tuple; equal keys differ at most in the
        // tag's scope or action, and `dedup` drops only exact duplicates.
        self.entries.sort_unstable_by_key(|&(hash, line, tag)| {
            (u128::from(hash) << 64) | (u128::from(tag.list()) << 32) | u128::from(line)
        });
        self.entries.dedup();
        let n = self.entries.len();
        // About 2–4 rules per bucket: the directory costs 1–2 bytes per rule
        // and a probe scans a handful of adjacent hashes.
        let bucket_bits = if n < 4 {
            0
        } else {
            (usize::BITS - 1 - n.leading_zeros()) - 1
        };
        let buckets = 1usize << bucket_bits;
        let mut offsets = Vec::with_capacity(buckets + 1);
        let mut hashes = Vec::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        let mut tags = Vec::with_capacity(n);
        for &(hash, line, tag) in &self.entries {
            let bucket = bucket_of(hash, bucket_bits);
            while offsets.len() <= bucket {
                offsets.push(to_u32(hashes.len()));
            }
            hashes.push(hash);
            lines.push(line);
            tags.push(tag.0);
        }
        drop(self.entries);
        while offsets.len() <= buckets {
            offsets.push(to_u32(hashes.len()));
        }
        SuffixIndex {
            hasher,
            depths: self.depths,
            bucket_bits,
            offsets,
            hashes,
            lines,
            tags,
        }
    }
}

/// Converts an index to u32. Snapshots hold fewer than 2^32 rules because
/// rule counts are bounded by line numbers, which are u32; saturating keeps
/// this total without a panic path.
fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn bucket_of(hash: u64, bucket_bits: u32) -> usize {
    if bucket_bits == 0 {
        0
    } else {
        // The shift keeps the top `bucket_bits` bits, which fit in usize.
        usize::try_from(hash >> (64 - bucket_bits)).unwrap_or(0)
    }
}

/// The immutable index. See the module documentation.
#[derive(Debug)]
pub(crate) struct SuffixIndex {
    hasher: ChainHasher,
    /// Bit `d` is set when some rule's name has `d` labels (bit 127 stands
    /// for 127 and more). Real lists have no rules at depth 1 (a whole TLD),
    /// so most queries skip that probe.
    depths: u128,
    bucket_bits: u32,
    offsets: Vec<u32>,
    hashes: Vec<u64>,
    lines: Vec<u32>,
    tags: Vec<u16>,
}

impl SuffixIndex {
    /// Number of stored rules.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Number of distinct hashes (distinct names) among the stored rules.
    pub(crate) fn distinct_names(&self) -> usize {
        self.hashes.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!self.hashes.is_empty())
    }

    /// Heap bytes held by the index.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.hashes.capacity() * 8 + self.lines.capacity() * 4 + self.tags.capacity() * 2
    }

    /// Calls `f(depth, hash, line, tag)` for every stored rule whose name is
    /// a suffix of `name` (a normalized name), from the shortest suffix to
    /// the whole name. `depth` counts the suffix's labels.
    ///
    /// The walk runs in three passes so that the memory loads of different
    /// labels do not wait on each other: hash every suffix, then read every
    /// bucket's bounds, then scan every bucket. A 5-label name then costs
    /// about two cache misses of latency instead of ten.
    #[inline]
    pub(crate) fn for_each_suffix_match(&self, name: &str, mut f: impl FnMut(usize, u64, u32, Tag)) {
        if self.hashes.is_empty() {
            return;
        }
        let mut hashes = [0u64; MAX_WALK];
        let mut depth = 0;
        let mut hash = self.hasher.root();
        for label in name.rsplit('.') {
            hash = self.hasher.child(hash, label.as_bytes());
            let Some(slot) = hashes.get_mut(depth) else { break };
            *slot = hash;
            depth += 1;
        }
        let mut ranges = [(0u32, 0u32); MAX_WALK];
        for (index, (range, &hash)) in ranges.iter_mut().zip(&hashes).take(depth).enumerate() {
            if self.depths & depth_bit(index + 1) == 0 {
                continue;
            }
            let bucket = bucket_of(hash, self.bucket_bits);
            if let (Some(&start), Some(&end)) = (self.offsets.get(bucket), self.offsets.get(bucket + 1)) {
                *range = (start, end);
            }
        }
        for (index, (&(start, end), &hash)) in ranges.iter().zip(&hashes).take(depth).enumerate() {
            for slot in start as usize..end as usize {
                let Some(&stored) = self.hashes.get(slot) else { break };
                if stored > hash {
                    break;
                }
                if stored == hash {
                    let line = self.lines.get(slot).copied().unwrap_or(0);
                    let tag = Tag(self.tags.get(slot).copied().unwrap_or(0));
                    f(index + 1, hash, line, tag);
                }
            }
        }
    }
}

/// The most buckets one [`Warmer`] loads: a receive batch of 64 names with
/// one or two probed depths each.
const WARM_BUCKETS: usize = 128;

/// Loads the parts of a [`SuffixIndex`] that lookups of a batch of names
/// will read, before any of them is looked up.
///
/// One lookup's cache misses depend on each other (a bucket's bounds give
/// where its hashes are), and hashing the next name keeps the processor
/// busy long enough that the misses of two lookups in a row never overlap.
/// The warmer first hashes every name of the batch, then loads every
/// probed bucket's bounds in one tight loop, then the first entry of every
/// bucket in another: loads in one loop do not depend on each other, so
/// their misses overlap, and the lookups that follow find the lines cached.
#[derive(Debug)]
pub(crate) struct Warmer<'a> {
    index: &'a SuffixIndex,
    buckets: [usize; WARM_BUCKETS],
    count: usize,
}

impl<'a> Warmer<'a> {
    pub(crate) fn new(index: &'a SuffixIndex) -> Self {
        Self {
            index,
            buckets: [0; WARM_BUCKETS],
            count: 0,
        }
    }

    /// Notes the buckets a lookup of `name` probes.
    #[inline]
    pub(crate) fn add(&mut self, name: &str) {
        let index = self.index;
        if index.hashes.is_empty() {
            return;
        }
        let mut hash = index.hasher.root();
        for (depth, label) in name.rsplit('.').enumerate().take(MAX_WALK) {
            hash = index.hasher.child(hash, label.as_bytes());
            if index.depths & depth_bit(depth + 1) == 0 {
                continue;
            }
            let Some(slot) = self.buckets.get_mut(self.count) else {
                return;
            };
            *slot = bucket_of(hash, index.bucket_bits);
            self.count += 1;
        }
    }

    /// Loads the noted buckets; returns a value derived from the loads, to
    /// be passed to [`std::hint::black_box`] so they are not optimised away.
    pub(crate) fn load(self) -> u64 {
        let index = self.index;
        let buckets = self.buckets.get(..self.count).unwrap_or_default();
        let mut starts = [0u32; WARM_BUCKETS];
        for (start, &bucket) in starts.iter_mut().zip(buckets) {
            *start = index.offsets.get(bucket).copied().unwrap_or(0);
        }
        let mut loaded = 0u64;
        for &start in starts.get(..self.count).unwrap_or_default() {
            let start = start as usize;
            loaded ^= index.hashes.get(start).copied().unwrap_or(0)
                ^ u64::from(index.lines.get(start).copied().unwrap_or(0))
                ^ u64::from(index.tags.get(start).copied().unwrap_or(0));
        }
        loaded
    }
}

fn depth_bit(labels: usize) -> u128 {
    1u128 << labels.min(127)
}

/// The most labels a name can have (127 one-byte labels fill 253 bytes).
const MAX_WALK: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips() {
        for scope in [Scope::Exact, Scope::Subtree, Scope::SubdomainsOnly] {
            for action in [
                RuleAction::Block,
                RuleAction::BlockImportant,
                RuleAction::Allow,
                RuleAction::AllowImportant,
                RuleAction::NoData,
                RuleAction::Drop,
                RuleAction::Rewrite,
            ] {
                let tag = Tag::new(1023, scope, action);
                assert_eq!((tag.list(), tag.scope(), tag.action()), (1023, scope, action));
            }
        }
    }

    #[test]
    fn finds_every_suffix_in_order() {
        let hasher = ChainHasher::random();
        let mut builder = SuffixIndexBuilder::default();
        for (line, name) in ["com", "example.com", "www.example.com", "other.org"]
            .iter()
            .enumerate()
        {
            builder.push(
                hasher.name(name),
                crate::name::label_count(name),
                line as u32 + 1,
                Tag::new(0, Scope::Subtree, RuleAction::Block),
            );
        }
        for i in 0..1000 {
            builder.push(
                hasher.name(&format!("filler{i}.net")),
                2,
                9,
                Tag::new(1, Scope::Subtree, RuleAction::Block),
            );
        }
        let index = builder.build(hasher);
        let mut seen = Vec::new();
        index.for_each_suffix_match("a.www.example.com", |depth, _, line, _| seen.push((depth, line)));
        assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
        seen.clear();
        index.for_each_suffix_match("example.org", |depth, _, line, _| seen.push((depth, line)));
        assert!(seen.is_empty());
        assert_eq!(index.distinct_names(), 1004);
    }
}
