//! Property test: the compact index agrees with a naive reference (a map of
//! names and a parent walk), including allow/mandatory precedence, the most
//! specific match and list order on ties.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::collections::HashMap;

use proptest::prelude::*;
use shieldns_index::{ListAction, ListFormat, ListPolicy, Matched, ProfileConfig, SnapshotBuilder, Verdict};

#[derive(Clone, Debug)]
struct TestList {
    action: ListAction,
    mandatory: bool,
    category: Option<u8>,
    names: Vec<String>,
}

fn name_strategy() -> impl Strategy<Value = String> {
    // A tiny alphabet so that random lists and queries overlap often.
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "xn--d"]), 1..4).prop_map(|labels| labels.join("."))
}

/// A list entry: two labels at least (a single label, a whole TLD, is
/// rejected by every list parser).
fn list_name_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "xn--d"]), 2..5).prop_map(|labels| labels.join("."))
}

fn list_strategy() -> impl Strategy<Value = TestList> {
    (
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.2),
        prop::option::of(0u8..3),
        // At least one entry: an empty list fails the build.
        prop::collection::vec(list_name_strategy(), 1..8),
    )
        .prop_map(|(allow, mandatory, category, names)| TestList {
            action: if allow { ListAction::Allow } else { ListAction::Block },
            mandatory: mandatory && !allow,
            category,
            names,
        })
}

/// The reference decision: (verdict kind, list index, line) of the winner.
fn reference(lists: &[TestList], blocked: &[u8], query: &str) -> (&'static str, Option<(usize, u32)>) {
    let labels: Vec<&str> = query.split('.').collect();
    let suffixes: Vec<String> = (0..labels.len()).map(|i| labels[i..].join(".")).collect();
    // tier -> (depth, list, line); lower tier number is stronger.
    let mut best: HashMap<u8, (usize, usize, u32)> = HashMap::new();
    for (list_index, list) in lists.iter().enumerate() {
        let enabled =
            list.mandatory || list.action == ListAction::Allow || list.category.is_none_or(|c| blocked.contains(&c));
        if !enabled {
            continue;
        }
        let tier = if list.mandatory {
            0
        } else if list.action == ListAction::Allow {
            1
        } else {
            2
        };
        for (line_index, name) in list.names.iter().enumerate() {
            let line = u32::try_from(line_index).unwrap() + 1;
            if let Some(position) = suffixes.iter().position(|s| s == name) {
                let depth = labels.len() - position;
                let candidate = (depth, list_index, line);
                let slot = best.entry(tier).or_insert(candidate);
                // Deeper wins; on equal depth the lower list, then line.
                if depth > slot.0 || (depth == slot.0 && (list_index, line) < (slot.1, slot.2)) {
                    *slot = candidate;
                }
            }
        }
    }
    let pick = |tier: u8| best.get(&tier).map(|&(_, list, line)| (list, line));
    if let Some(hit) = pick(0) {
        ("block", Some(hit))
    } else if let Some(hit) = pick(1) {
        ("allow", Some(hit))
    } else if let Some(hit) = pick(2) {
        ("block", Some(hit))
    } else {
        ("pass", None)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn index_agrees_with_reference(
        lists in prop::collection::vec(list_strategy(), 1..6),
        blocked in prop::collection::vec(0u8..3, 0..3),
        queries in prop::collection::vec(name_strategy(), 1..12),
    ) {
        let mut builder = SnapshotBuilder::new();
        for (index, list) in lists.iter().enumerate() {
            let text = list.names.join("\n");
            let category = list.category.map(|c| format!("cat{c}"));
            let policy = ListPolicy {
                action: list.action,
                mandatory: list.mandatory,
                ..ListPolicy::block(format!("list{index}"), category.as_deref(), ListFormat::Domains)
            };
            builder.add_list(policy, text.as_bytes()).unwrap();
        }
        builder.add_profile(ProfileConfig {
            block: blocked.iter().map(|c| format!("cat{c}")).collect(),
            ..ProfileConfig::new("p", vec!["0.0.0.0/0".parse().unwrap()])
        });
        let snapshot = builder.build().unwrap();
        let profile = snapshot.profile_for("192.0.2.1".parse().unwrap());
        for query in &queries {
            let expected = reference(&lists, &blocked, query);
            let got = match snapshot.verdict(query, profile) {
                Verdict::Pass => ("pass", None),
                Verdict::Allow(hit) => ("allow", Some((usize::from(hit.list.0), hit.line))),
                Verdict::Block(hit) => {
                    let is_name = matches!(hit.matched, Matched::Name { .. });
                    prop_assert!(is_name, "matched by name");
                    ("block", Some((usize::from(hit.list.0), hit.line)))
                }
            };
            prop_assert_eq!(got, expected, "query {}", query);
        }
    }
}
