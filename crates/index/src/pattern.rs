//! Pattern rules (adblock `/regex/` and mid-name wildcards), matched apart
//! from the suffix index.
//!
//! Patterns are few (tens to hundreds in real DNS lists) but each costs a
//! regex run, so patterns with a required literal sit behind one
//! Aho-Corasick automaton over those literals: a query runs one linear scan
//! and only the patterns whose literal occurs are confirmed by their regex.
//! Patterns without a literal go into one `RegexSet`, run once per query.

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};

use crate::suffix::Tag;

/// One pattern rule waiting for the build.
#[derive(Debug)]
pub(crate) struct PendingPattern {
    pub(crate) regex: Regex,
    pub(crate) literal: Option<String>,
    pub(crate) line: u32,
    pub(crate) tag: Tag,
}

/// The compiled pattern matcher.
#[derive(Debug, Default)]
pub(crate) struct PatternSet {
    prefilter: Option<AhoCorasick>,
    /// For each literal in the automaton, the patterns that require it.
    literal_patterns: Vec<Vec<usize>>,
    literal_regexes: Vec<(Regex, u32, Tag)>,
    always: Option<RegexSet>,
    always_rules: Vec<(u32, Tag)>,
}

impl PatternSet {
    /// Compiles the matcher. Every regex was compiled once already when its
    /// line was parsed, so only the combined structures can fail here, and
    /// then the patterns fall back to being run one by one.
    pub(crate) fn build(patterns: Vec<PendingPattern>) -> Self {
        let mut set = Self::default();
        let mut literals: Vec<String> = Vec::new();
        let mut always_sources = Vec::new();
        for pattern in patterns {
            match pattern.literal {
                Some(literal) => {
                    let id = set.literal_regexes.len();
                    set.literal_regexes.push((pattern.regex, pattern.line, pattern.tag));
                    match literals.iter().position(|l| *l == literal) {
                        Some(at) => set.literal_patterns[at].push(id),
                        None => {
                            literals.push(literal);
                            set.literal_patterns.push(vec![id]);
                        }
                    }
                }
                None => {
                    always_sources.push(pattern.regex.as_str().to_owned());
                    set.always_rules.push((pattern.line, pattern.tag));
                }
            }
        }
        if !literals.is_empty() {
            set.prefilter = AhoCorasick::new(&literals).ok();
        }
        if !always_sources.is_empty() {
            set.always = RegexSet::new(&always_sources).ok();
        }
        set
    }

    /// Number of pattern rules.
    pub(crate) fn len(&self) -> usize {
        self.literal_regexes.len() + self.always_rules.len()
    }

    /// Calls `f(line, tag)` for every pattern that matches `name`. A pattern
    /// may be reported more than once; callers keep the best hit.
    pub(crate) fn for_each_match(&self, name: &str, mut f: impl FnMut(u32, Tag)) {
        if let Some(prefilter) = &self.prefilter {
            for found in prefilter.find_overlapping_iter(name) {
                for &id in self
                    .literal_patterns
                    .get(found.pattern().as_usize())
                    .into_iter()
                    .flatten()
                {
                    if let Some((regex, line, tag)) = self.literal_regexes.get(id)
                        && regex.is_match(name)
                    {
                        f(*line, *tag);
                    }
                }
            }
        }
        if let Some(always) = &self.always {
            for id in always.matches(name).iter() {
                if let Some(&(line, tag)) = self.always_rules.get(id) {
                    f(line, tag);
                }
            }
        }
    }
}
