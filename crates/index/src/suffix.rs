//! The compact suffix index: 64-bit label-chain hashes, sorted and bucketed.
//!
//! A name `www.example.com` is hashed from the root down:
//! `h1 = H(seed, "com")`, `h2 = H(h1, "example")`, `h3 = H(h2, "www")`.
//! A rule stores the hash of its own name; a query computes `h1, h2, …` in
//! one right-to-left walk over its labels and probes the table once per
//! label. The table is one array of 16-byte entries (hash, source line,
//! tag) sorted by hash, plus a bucket directory indexed by the hash's top
//! bits (1–2 bytes per rule), so a probe reads one directory slot and a few
//! neighbouring entries, usually in one cache line, and a hit finds its line
//! and tag beside the hash. One array rather than three parallel ones
//! (hash, line, tag: 14 bytes per rule) costs 2 bytes per rule and saves a
//! cache miss per hit; and the builder sorts that same array in place and
//! keeps it, so a reload never holds the rules twice.
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
        labels_from_root(name).fold(self.root, |h, label| self.child(h, label))
    }
}

/// One stored rule: its name's chain hash, its source line and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    hash: u64,
    line: u32,
    tag: Tag,
}

/// Collects rules before the one sort that builds a [`SuffixIndex`].
#[derive(Debug, Default)]
pub(crate) struct SuffixIndexBuilder {
    entries: Vec<Entry>,
    depths: u128,
}

impl SuffixIndexBuilder {
    /// Adds a rule on a name of `labels` labels with chain hash `hash`.
    pub(crate) fn push(&mut self, hash: u64, labels: usize, line: u32, tag: Tag) {
        self.entries.push(Entry { hash, line, tag });
        self.depths |= depth_bit(labels);
    }

    /// Makes room for about `additional` more rules at once (a list's line
    /// count), so that a big list does not grow the array by doubling,
    /// which can leave half of it unused and, while it is copied, needs the
    /// old and the new array together. (`reserve`, not `reserve_exact`:
    /// with many lists, exact steps would copy the array once per list.)
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// Sorts and packs the rules. Rules with equal hashes stay adjacent,
    /// ordered by list and line, so that ties resolve by configuration order.
    pub(crate) fn build(mut self, hasher: ChainHasher) -> SuffixIndex {
        // One u128 key (hash, list, line) compares in two instructions
        // instead of a four-field tuple; equal keys differ at most in the
        // tag's scope or action, and `dedup` drops only exact duplicates.
        self.entries.sort_unstable_by_key(|entry| {
            (u128::from(entry.hash) << 64) | (u128::from(entry.tag.list()) << 32) | u128::from(entry.line)
        });
        self.entries.dedup();
        // Give back reserved room that comments, duplicates or rejected
        // lines left unused, but only when it is worth a copy: shrinking
        // reallocates, and copying the array means holding it twice, which
        // is what the exact reservation avoids. At most an eighth stays idle.
        if self.entries.capacity() - self.entries.len() > self.entries.capacity() / 8 {
            self.entries.shrink_to_fit();
        }
        let n = self.entries.len();
        // About 2–4 rules per bucket: the directory costs 1–2 bytes per rule
        // and a probe scans a handful of adjacent entries.
        let bucket_bits = if n < 4 {
            0
        } else {
            (usize::BITS - 1 - n.leading_zeros()) - 1
        };
        let buckets = 1usize << bucket_bits;
        let mut offsets = Vec::with_capacity(buckets + 1);
        for (index, entry) in self.entries.iter().enumerate() {
            let bucket = bucket_of(entry.hash, bucket_bits);
            while offsets.len() <= bucket {
                offsets.push(to_u32(index));
            }
        }
        while offsets.len() <= buckets {
            offsets.push(to_u32(n));
        }
        SuffixIndex {
            hasher,
            depths: self.depths,
            bucket_bits,
            offsets,
            entries: self.entries,
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
    entries: Vec<Entry>,
}

impl SuffixIndex {
    /// Number of stored rules.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of distinct hashes (distinct names) among the stored rules.
    pub(crate) fn distinct_names(&self) -> usize {
        self.entries.windows(2).filter(|w| w[0].hash != w[1].hash).count() + usize::from(!self.entries.is_empty())
    }

    /// Heap bytes held by the index.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * size_of::<u32>() + self.entries.capacity() * size_of::<Entry>()
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
    pub(crate) fn for_each_suffix_match(&self, name: &str, f: impl FnMut(usize, u64, u32, Tag)) {
        if self.entries.is_empty() {
            return;
        }
        // The walk's scratch arrays are zeroed per lookup; sized for the
        // deepest rule rather than the deepest possible name, that is a few
        // hundred bytes instead of two kilobytes.
        if self.max_depth() <= SHORT_WALK {
            self.walk::<SHORT_WALK>(name, f);
        } else {
            self.walk::<MAX_WALK>(name, f);
        }
    }

    /// The chain hashes of `name`'s suffixes, shortest first, as deep as
    /// the deepest stored rule (deeper suffixes cannot match).
    fn suffix_hashes<'n>(&self, name: &'n str) -> impl Iterator<Item = u64> + use<'_, 'n> {
        labels_from_root(name)
            .take(self.max_depth())
            .scan(self.hasher.root(), |hash, label| {
                *hash = self.hasher.child(*hash, label);
                Some(*hash)
            })
    }

    /// The label count of the deepest stored rule (127 stands for 127 and
    /// more); suffixes deeper than that cannot match.
    fn max_depth(&self) -> usize {
        127usize.saturating_sub(self.depths.leading_zeros() as usize)
    }

    #[inline]
    fn walk<const N: usize>(&self, name: &str, mut f: impl FnMut(usize, u64, u32, Tag)) {
        let mut hashes = [0u64; N];
        let mut depth = 0;
        for (slot, hash) in hashes.iter_mut().zip(self.suffix_hashes(name)) {
            *slot = hash;
            depth += 1;
        }
        let mut ranges = [(0u32, 0u32); N];
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
                let Some(stored) = self.entries.get(slot) else { break };
                if stored.hash > hash {
                    break;
                }
                if stored.hash == hash {
                    f(index + 1, hash, stored.line, stored.tag);
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
        if index.entries.is_empty() {
            return;
        }
        for (depth, hash) in index.suffix_hashes(name).enumerate() {
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
            loaded ^= index.entries.get(start as usize).map_or(0, |entry| entry.hash);
        }
        loaded
    }
}

/// The labels of a dotted name, last (closest to the root) first.
///
/// A byte loop rather than `str::rsplit('.')`: the generic splitter searches
/// with `memrchr`, which is built for long haystacks, and cost a third of a
/// lookup's instructions on 10–30-byte names (callgrind).
fn labels_from_root(name: &str) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(name.as_bytes());
    std::iter::from_fn(move || {
        let bytes = rest?;
        match bytes.iter().rposition(|&byte| byte == b'.') {
            Some(dot) => {
                rest = bytes.get(..dot);
                bytes.get(dot + 1..)
            }
            None => {
                rest = None;
                Some(bytes)
            }
        }
    })
}

fn depth_bit(labels: usize) -> u128 {
    1u128 << labels.min(127)
}

/// The most labels a name can have (127 one-byte labels fill 253 bytes).
const MAX_WALK: usize = 128;
/// The walk used when no rule is deeper than this many labels (all real
/// lists).
const SHORT_WALK: usize = 16;

/// A fixed bitset of list ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListSet([u64; MAX_LISTS / 64]);

impl ListSet {
    pub(crate) fn empty() -> Self {
        Self([0; MAX_LISTS / 64])
    }

    pub(crate) fn insert(&mut self, list: u16) {
        if let Some(word) = self.0.get_mut(usize::from(list / 64)) {
            *word |= 1 << (list % 64);
        }
    }

    /// Adds every list of `other`.
    pub(crate) fn union_with(&mut self, other: &Self) {
        for (word, theirs) in self.0.iter_mut().zip(other.0) {
            *word |= theirs;
        }
    }

    #[inline]
    pub(crate) fn contains(&self, list: u16) -> bool {
        self.0
            .get(usize::from(list / 64))
            .is_some_and(|word| word & (1 << (list % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_root_down() {
        let labels = |name| {
            labels_from_root(name)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(labels("www.example.com"), ["com", "example", "www"]);
        assert_eq!(labels("com"), ["com"]);
        // Empty labels are kept, as `rsplit('.')` keeps them, so hashes of
        // odd names stay what they were.
        assert_eq!(labels("a..b"), ["b", "", "a"]);
        assert_eq!(labels(""), [""]);
    }

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

    #[test]
    fn deep_rules_take_the_long_walk_and_shallow_ones_the_short() {
        let deep: String = (0..40).map(|i| format!("l{i}.")).collect::<String>() + "example.com";
        for (names, query) in [
            (vec!["b.example.com"], "x.y.z.a.b.example.com".to_string()),
            (vec!["b.example.com", deep.as_str()], format!("x.{deep}")),
        ] {
            let hasher = ChainHasher::random();
            let mut builder = SuffixIndexBuilder::default();
            for (line, name) in names.iter().enumerate() {
                let labels = crate::name::label_count(name);
                builder.push(
                    hasher.name(name),
                    labels,
                    line as u32 + 1,
                    Tag::new(0, Scope::Subtree, RuleAction::Block),
                );
            }
            let index = builder.build(hasher);
            let mut seen = Vec::new();
            index.for_each_suffix_match(&query, |depth, _, line, _| seen.push((depth, line)));
            let expected = names.iter().enumerate().filter(|(_, n)| query.ends_with(*n)).count();
            assert_eq!(seen.len(), expected, "{query}: {seen:?}");
            assert_eq!(
                seen.last().map(|&(depth, _)| depth),
                names
                    .iter()
                    .filter(|n| query.ends_with(*n))
                    .map(|n| crate::name::label_count(n))
                    .max()
            );
        }
    }
}
