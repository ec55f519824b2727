//! Hashed lists: SHA-256 digests of names, for lists whose plaintext the
//! operator must not hold (a national CSAM list).
//!
//! A query is checked by hashing the query name and each parent name and
//! looking each digest up in one sorted array. This costs a SHA-256 per
//! label, so it runs only for profiles that have a hashed list enabled.

use sha2::{Digest, Sha256};

use crate::suffix::Tag;

/// Sorted digests with their provenance.
#[derive(Debug, Default)]
pub(crate) struct DigestIndex {
    entries: Vec<([u8; 32], u32, Tag)>,
}

impl DigestIndex {
    pub(crate) fn push(&mut self, digest: [u8; 32], line: u32, tag: Tag) {
        self.entries.push((digest, line, tag));
    }

    pub(crate) fn finish(&mut self) {
        self.entries
            .sort_unstable_by_key(|&(digest, line, tag)| (digest, tag.list(), line));
        self.entries.dedup();
        self.entries.shrink_to_fit();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<([u8; 32], u32, Tag)>()
    }

    /// Calls `f(depth, line, tag)` for every digest equal to the SHA-256 of a
    /// suffix of `name` (the name itself included), shortest suffix first.
    pub(crate) fn for_each_suffix_match(&self, name: &str, mut f: impl FnMut(usize, u32, Tag)) {
        if self.entries.is_empty() {
            return;
        }
        let total = crate::name::label_count(name);
        for depth in 1..=total {
            let suffix = crate::name::suffix(name, depth);
            let digest: [u8; 32] = Sha256::digest(suffix.as_bytes()).into();
            let start = self.entries.partition_point(|(d, _, _)| *d < digest);
            for (stored, line, tag) in self.entries.get(start..).into_iter().flatten() {
                if *stored != digest {
                    break;
                }
                f(depth, *line, *tag);
            }
        }
    }
}

/// The SHA-256 of a normalized name, as a list of type `sha256` stores it.
pub fn name_digest(name: &str) -> [u8; 32] {
    Sha256::digest(name.as_bytes()).into()
}
