//! The immutable [`Snapshot`] and the [`SnapshotBuilder`] that makes one.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use regex::Regex;

use jiff::Timestamp;

use crate::childsafe::{Dns64, Rebinding, SafeSearch, Schedule, qtype_code};
use crate::digest::DigestIndex;
use crate::pattern::{PatternSet, PendingPattern};
use crate::policy::{BlockResponse, ListAction, ListId, ListPolicy, Profile, ProfileConfig, ProfileId};
use crate::rule::{LineCounts, LineRejection, LocalData, Rule, RuleAction, RuleSink, RuleTarget, Scope, SkipReason};
use crate::suffix::ListSet;
use crate::suffix::{ChainHasher, MAX_LISTS, SuffixIndex, SuffixIndexBuilder, Tag};

/// How many rejected lines a list keeps as examples for reports.
pub const REJECTED_EXAMPLES: usize = 10;

/// Characters of a rejected line kept for reports (see [`RejectedLine`]).
pub const REJECTED_TEXT_CHARS: usize = 80;

/// The name of the implicit profile for clients no profile covers.
pub const UNMATCHED_PROFILE: &str = "unmatched";

/// Errors building a snapshot. Each names the list or profile at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// More lists than a snapshot can index.
    #[error("too many lists: at most {max} are supported")]
    TooManyLists {
        /// The limit.
        max: usize,
    },
    /// Two lists share a name.
    #[error("list `{name}` is defined twice")]
    DuplicateList {
        /// The repeated name.
        name: String,
    },
    /// A list could not be read.
    #[error("list `{name}`: read failed: {reason}")]
    Read {
        /// The list.
        name: String,
        /// The I/O error.
        reason: String,
    },
    /// A list has no rule at all (an empty or comments-only file).
    #[error(
        "list `{name}`: no rules (the file is empty or holds only comments){}",
        if *mandatory { "; a mandatory list is never enforced empty" } else { "; set `allow_empty = true` on a list meant to be empty" }
    )]
    Empty {
        /// The list.
        name: String,
        /// Whether it is mandatory (and so may never be empty).
        mandatory: bool,
    },
    /// A list had rule lines but none of them was valid.
    #[error("list `{name}`: none of its {rejected} rule lines is valid (first: line {first_line}: {first_reason})")]
    NothingValid {
        /// The list.
        name: String,
        /// How many lines were rejected.
        rejected: u64,
        /// The first rejected line's number.
        first_line: u32,
        /// Why it was rejected.
        first_reason: String,
    },
    /// More of a list's lines are malformed than valid: garbage, a binary
    /// file, an error page or the wrong `format`, not a list to enforce.
    #[error(
        "list `{name}`: {malformed} of its lines are not {format} rules, more than the {accepted} that are (first: line {first_line}: {first_reason}); is it the right file and `format`?"
    )]
    MostlyMalformed {
        /// The list.
        name: String,
        /// Its format.
        format: crate::rule::ListFormat,
        /// Lines accepted.
        accepted: u64,
        /// Malformed lines (see [`LineRejection::is_malformed`]).
        malformed: u64,
        /// The first rejected line's number.
        first_line: u32,
        /// Why it was rejected.
        first_reason: String,
    },
    /// Two profiles share a name.
    #[error("profile `{name}` is defined twice")]
    DuplicateProfile {
        /// The repeated name.
        name: String,
    },
    /// Two profiles claim the same client ID.
    #[error("client ID `{id}` is in both profile `{first}` and profile `{second}`")]
    DuplicateClientId {
        /// The ID.
        id: String,
        /// The profile that claimed it first.
        first: String,
        /// The other.
        second: String,
    },
    /// A client ID that cannot be a DNS label or a path segment.
    #[error("profile `{profile}`: client ID `{id}` must be 1 to 63 letters, digits or `-`")]
    BadClientId {
        /// The profile.
        profile: String,
        /// The ID.
        id: String,
    },
    /// Two profiles claim the same client network.
    #[error("client network {network} is in both profile `{first}` and profile `{second}`")]
    DuplicateClientNetwork {
        /// The network.
        network: IpNet,
        /// The profile that listed it first.
        first: String,
        /// The profile that listed it again.
        second: String,
    },
    /// A profile setting is unusable (names the key).
    #[error("profile `{profile}`: {reason}")]
    Profile {
        /// The profile.
        profile: String,
        /// What is wrong, starting with the key.
        reason: String,
    },
    /// A sinkhole profile without a sinkhole address.
    #[error("profile `{profile}`: block_response = \"sinkhole\" needs sinkhole_ipv4 or sinkhole_ipv6")]
    SinkholeWithoutAddress {
        /// The profile.
        profile: String,
    },
}

/// A rejected line kept for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RejectedLine {
    /// 1-based line number.
    pub line: u32,
    /// The line's start, safe to print: cut to [`REJECTED_TEXT_CHARS`]
    /// characters (with `…`), control characters escaped (`\u{1b}`), so a
    /// binary file cannot write terminal escapes into a log.
    pub text: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What one list contributed to a snapshot.
#[derive(Clone, Debug)]
pub struct ListInfo {
    /// The list's policy settings.
    pub policy: ListPolicy,
    /// Line counts.
    pub counts: LineCounts,
    /// The first [`REJECTED_EXAMPLES`] rejected lines.
    pub rejected_examples: Vec<RejectedLine>,
    /// Rules in the suffix index.
    pub name_rules: u64,
    /// Pattern rules.
    pub pattern_rules: u64,
    /// Hashed-name rules.
    pub digest_rules: u64,
    /// Answer-IP rules.
    pub answer_ip_rules: u64,
}

/// How a hit matched the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// A name rule on the query's last `labels` labels.
    Name {
        /// Labels of the matching suffix.
        labels: u8,
        /// The rule's scope.
        scope: Scope,
    },
    /// A pattern rule on the whole name.
    Pattern,
    /// A hashed rule on the query's last `labels` labels.
    Digest {
        /// Labels of the matching parent name.
        labels: u8,
    },
    /// An answer-IP rule covering the address with a `prefix_len` prefix.
    AnswerIp {
        /// The rule's prefix length.
        prefix_len: u8,
    },
}

/// The rule that decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The list the rule is in.
    pub list: ListId,
    /// The rule's line in that list.
    pub line: u32,
    /// The rule's effective action (after the list's own action applied).
    pub action: RuleAction,
    /// How it matched.
    pub matched: Matched,
    /// The chain hash of the matched name, for local-data lookup.
    key: u64,
}

impl Hit {
    fn new(tag: Tag, line: u32, matched: Matched, key: u64) -> Self {
        Self {
            list: ListId(tag.list()),
            line,
            action: tag.action(),
            matched,
            key,
        }
    }
}

/// What happens to a query name for a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched: resolve normally.
    Pass,
    /// An allow rule matched (and no mandatory block): resolve normally.
    Allow(Hit),
    /// A block rule matched. The hit's action says how (block, NODATA,
    /// drop, local data).
    Block(Hit),
}

/// Precedence tiers, strongest first (see ARCHITECTURE.md, "Precedence").
#[derive(Debug, Default)]
struct Tiers {
    mandatory: Option<(usize, Hit)>,
    important_allow: Option<(usize, Hit)>,
    important_block: Option<(usize, Hit)>,
    allow: Option<(usize, Hit)>,
    block: Option<(usize, Hit)>,
}

impl Tiers {
    /// Offers a hit at a specificity; the most specific hit per tier wins,
    /// and the first offered (lowest list, then line) wins a tie.
    fn offer(&mut self, mandatory: bool, specificity: usize, hit: Hit) {
        let slot = if mandatory {
            &mut self.mandatory
        } else {
            match hit.action {
                RuleAction::AllowImportant => &mut self.important_allow,
                RuleAction::BlockImportant => &mut self.important_block,
                RuleAction::Allow => &mut self.allow,
                _ => &mut self.block,
            }
        };
        if slot.is_none_or(|(current, _)| specificity > current) {
            *slot = Some((specificity, hit));
        }
    }

    fn verdict(self) -> Verdict {
        if let Some((_, hit)) = self.mandatory
            && !hit.action.is_allow()
        {
            return Verdict::Block(hit);
        }
        if let Some((_, hit)) = self.important_allow {
            return Verdict::Allow(hit);
        }
        if let Some((_, hit)) = self.important_block {
            return Verdict::Block(hit);
        }
        if let Some((_, hit)) = self.allow {
            return Verdict::Allow(hit);
        }
        if let Some((_, hit)) = self.block {
            return Verdict::Block(hit);
        }
        Verdict::Pass
    }
}

type AnswerIpRules = Vec<(u32, Tag)>;

/// Everything a query decision needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    lists: Vec<ListInfo>,
    names: SuffixIndex,
    digests: DigestIndex,
    patterns: PatternSet,
    answer_v4: PrefixMap<Ipv4Net, AnswerIpRules>,
    answer_v6: PrefixMap<Ipv6Net, AnswerIpRules>,
    answer_ip_rules: usize,
    local_data: HashMap<(u16, u64), Vec<LocalData>>,
    profiles: Vec<Profile>,
    /// Access list and profile clients in one map per family, so a query
    /// pays one longest-prefix lookup for both (see [`merge_clients`]).
    /// Client IDs (lower case) to the profile they select.
    client_ids: std::collections::HashMap<String, ProfileId>,
    clients_v4: PrefixMap<Ipv4Net, ClientRule>,
    clients_v6: PrefixMap<Ipv6Net, ClientRule>,
    warnings: Vec<String>,
    generation: u64,
}

/// Numbers snapshots in build order, process-wide.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Snapshot {
    /// This snapshot's number, unique in the process: caches keyed by it can
    /// tell answers checked under an older policy from current ones.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a client may query at all (`server.allow`). The access list
    /// lives in the snapshot so that a reload changes it atomically with
    /// everything else.
    pub fn client_allowed(&self, client: IpAddr) -> bool {
        self.client_rule(client).is_some_and(|rule| rule.allowed)
    }

    /// The client's profile when it may query at all, `None` when
    /// `server.allow` refuses it: [`Snapshot::client_allowed`] and
    /// [`Snapshot::profile_for`] in one lookup.
    pub fn client_policy(&self, client: IpAddr) -> Option<ProfileId> {
        let rule = self.client_rule(client)?;
        rule.allowed
            .then(|| rule.profile.unwrap_or_else(|| self.fallback_profile()))
    }

    /// [`Snapshot::client_policy`] for a client that also named itself on
    /// an encrypted listener: the profile of its client ID when one has it;
    /// an unknown ID gets the address's profile, or `None` (REFUSED) when
    /// `refuse_unknown`. The access list decides first either way.
    pub fn client_policy_with_id(&self, client: IpAddr, id: Option<&str>, refuse_unknown: bool) -> Option<ProfileId> {
        let by_address = self.client_policy(client)?;
        let Some(id) = id else { return Some(by_address) };
        match self.profile_for_client_id(id) {
            Some(profile) => Some(profile),
            None if refuse_unknown => None,
            None => Some(by_address),
        }
    }

    /// The profile a client ID selects, if any profile lists it.
    pub fn profile_for_client_id(&self, id: &str) -> Option<ProfileId> {
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.client_ids.get(&id.to_ascii_lowercase()).copied();
        }
        self.client_ids.get(id).copied()
    }

    fn client_rule(&self, client: IpAddr) -> Option<&ClientRule> {
        let found = match client {
            IpAddr::V4(v4) => self.clients_v4.get_lpm(&Ipv4Net::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.clients_v4.get_lpm(&Ipv4Net::from(v4)),
                None => return self.clients_v6.get_lpm(&Ipv6Net::from(v6)).map(|(_, rule)| rule),
            },
        };
        found.map(|(_, rule)| rule)
    }

    /// The profile of clients no profile names: always the last one.
    fn fallback_profile(&self) -> ProfileId {
        ProfileId(u16::try_from(self.profiles.len().saturating_sub(1)).unwrap_or(0))
    }

    /// A snapshot with no lists and only the fallback profile.
    pub fn empty() -> Self {
        // Invariant: every `IndexError` `build` can return names a list or a
        // profile at fault, and an empty builder has neither.
        SnapshotBuilder::new()
            .build()
            .expect("an empty builder has no list or profile that could fail")
    }

    /// The lists, in configuration order (a [`ListId`] indexes this).
    pub fn lists(&self) -> &[ListInfo] {
        &self.lists
    }

    /// One list.
    pub fn list(&self, id: ListId) -> Option<&ListInfo> {
        self.lists.get(usize::from(id.0))
    }

    /// The profiles; the last is the implicit [`UNMATCHED_PROFILE`].
    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// One profile. Ids come from [`Snapshot::profile_for`] on the same
    /// snapshot, so the fallback only guards misuse across snapshots.
    pub fn profile(&self, id: ProfileId) -> &Profile {
        self.profiles
            .get(usize::from(id.0))
            .or_else(|| self.profiles.last())
            // Invariant: `build` always pushes the fallback profile.
            .expect("every snapshot holds the fallback profile")
    }

    /// Non-fatal findings of the build (e.g. a category no list provides).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The profile for a client address: the longest matching `clients`
    /// prefix, or the implicit fallback profile.
    pub fn profile_for(&self, client: IpAddr) -> ProfileId {
        self.client_rule(client)
            .and_then(|rule| rule.profile)
            .unwrap_or_else(|| self.fallback_profile())
    }

    /// The lists' verdict on a normalized query name (lower case, no
    /// trailing dot) for a profile now. Never allocates, never fails.
    pub fn verdict(&self, name: &str, profile: ProfileId) -> Verdict {
        self.decide_at(name, profile, Timestamp::now())
    }

    /// Decides a name at a given time: schedules whose window is open at
    /// `at` add their categories. Never allocates, never fails.
    pub fn decide_at(&self, name: &str, profile: ProfileId, at: Timestamp) -> Verdict {
        let profile = self.profile(profile);
        let enabled = Self::enabled_at(profile, at);
        let enabled = &enabled;
        let total = crate::name::label_count(name);
        let mut tiers = Tiers::default();
        self.names.for_each_suffix_match(name, |depth, key, line, tag| {
            if !enabled.contains(tag.list()) || !tag.applies_at(depth, total) {
                return;
            }
            let hit = Hit::new(
                tag,
                line,
                Matched::Name {
                    labels: saturate_u8(depth),
                    scope: tag.scope(),
                },
                key,
            );
            tiers.offer(self.is_mandatory(tag.list()), depth, hit);
        });
        if profile.uses_patterns {
            self.patterns.for_each_match(name, |line, tag| {
                if enabled.contains(tag.list()) {
                    let hit = Hit::new(tag, line, Matched::Pattern, 0);
                    tiers.offer(self.is_mandatory(tag.list()), total, hit);
                }
            });
        }
        if profile.uses_digests {
            self.digests.for_each_suffix_match(name, |depth, line, tag| {
                if enabled.contains(tag.list()) {
                    let hit = Hit::new(
                        tag,
                        line,
                        Matched::Digest {
                            labels: saturate_u8(depth),
                        },
                        0,
                    );
                    tiers.offer(self.is_mandatory(tag.list()), depth, hit);
                }
            });
        }
        tiers.verdict()
    }

    /// A [`NameWarmer`] for a batch of names about to be decided.
    pub fn warmer(&self) -> NameWarmer<'_> {
        NameWarmer(crate::suffix::Warmer::new(&self.names))
    }

    /// The lists a profile uses at `at`: its own plus those of open schedules.
    fn enabled_at(profile: &Profile, at: Timestamp) -> ListSet {
        let mut enabled = profile.enabled;
        for schedule in &profile.schedules {
            if schedule.is_active(at) {
                enabled.union_with(&schedule.lists);
            }
        }
        enabled
    }

    /// Every rule of every list that matches `name`, whatever the profile
    /// (names, patterns, hashed names), for `explain`: the decision itself
    /// is [`Snapshot::decide_at`]'s; this says what else matched and
    /// [`Snapshot::list_applies`] why it did or did not count.
    pub fn all_matches(&self, name: &str) -> Vec<Hit> {
        let total = crate::name::label_count(name);
        let mut hits = Vec::new();
        self.names.for_each_suffix_match(name, |depth, key, line, tag| {
            if tag.applies_at(depth, total) {
                let matched = Matched::Name {
                    labels: saturate_u8(depth),
                    scope: tag.scope(),
                };
                hits.push(Hit::new(tag, line, matched, key));
            }
        });
        self.patterns
            .for_each_match(name, |line, tag| hits.push(Hit::new(tag, line, Matched::Pattern, 0)));
        self.digests.for_each_suffix_match(name, |depth, line, tag| {
            let matched = Matched::Digest {
                labels: saturate_u8(depth),
            };
            hits.push(Hit::new(tag, line, matched, 0));
        });
        hits.sort_by_key(|hit| (hit.list.0, hit.line));
        hits
    }

    /// Whether `list` takes part in `profile`'s decisions at `at`, and why,
    /// in words for `explain`.
    pub fn list_applies(&self, list: ListId, profile: ProfileId, at: Timestamp) -> (bool, String) {
        let profile = self.profile(profile);
        let Some(info) = self.list(list) else {
            return (false, "no such list".into());
        };
        // Whether it applies is read from the very sets `decide_at` uses;
        // only the words are worked out here.
        let applies = Self::enabled_at(profile, at).contains(list.0);
        let policy = &info.policy;
        let why = match &policy.category {
            _ if policy.mandatory => "mandatory: enforced for every client".to_owned(),
            _ if policy.action == ListAction::Allow => "an allowlist: applies to every profile".to_owned(),
            None => "no category: applies to every profile".to_owned(),
            Some(category) if profile.enabled.contains(list.0) => {
                format!("profile `{}` blocks category `{category}`", profile.name)
            }
            Some(category) => {
                let mut schedules = profile.schedules.iter().filter(|s| s.lists.contains(list.0));
                let open = schedules.clone().find(|s| s.is_active(at));
                match open.or_else(|| schedules.next()) {
                    Some(schedule) if applies => format!(
                        "profile `{}` blocks category `{category}` in its schedule {} {}, open at {at}",
                        profile.name, schedule.time, schedule.time_zone
                    ),
                    Some(schedule) => format!(
                        "profile `{}` blocks category `{category}` only in its schedule {} {}, closed at {at}",
                        profile.name, schedule.time, schedule.time_zone
                    ),
                    None => format!("profile `{}` does not block category `{category}`", profile.name),
                }
            }
        };
        (applies, why)
    }

    /// The schedules of a profile whose window is open at `at`.
    pub fn active_schedules(&self, profile: ProfileId, at: Timestamp) -> impl Iterator<Item = &Schedule> {
        self.profile(profile).schedules.iter().filter(move |s| s.is_active(at))
    }

    /// Decides an address found in an answer against the answer-IP rules
    /// (RPZ `rpz-ip`) enabled for the profile.
    pub fn decide_answer_ip(&self, address: IpAddr, profile: ProfileId) -> Verdict {
        if self.answer_ip_rules == 0 {
            return Verdict::Pass;
        }
        let profile = self.profile(profile);
        let mut tiers = Tiers::default();
        let mut offer = |prefix_len: u8, rules: &AnswerIpRules| {
            for &(line, tag) in rules {
                if profile.enabled.contains(tag.list()) {
                    let hit = Hit::new(tag, line, Matched::AnswerIp { prefix_len }, 0);
                    tiers.offer(self.is_mandatory(tag.list()), usize::from(prefix_len), hit);
                }
            }
        };
        match address {
            IpAddr::V4(v4) => {
                for (net, rules) in self.answer_v4.cover(&Ipv4Net::from(v4)) {
                    offer(net.prefix_len(), rules);
                }
            }
            IpAddr::V6(v6) => {
                for (net, rules) in self.answer_v6.cover(&Ipv6Net::from(v6)) {
                    offer(net.prefix_len(), rules);
                }
            }
        }
        tiers.verdict()
    }

    /// The local data of a [`RuleAction::Rewrite`] hit: every record the
    /// list gives for the matched trigger.
    pub fn local_data(&self, hit: &Hit) -> &[LocalData] {
        self.local_data.get(&(hit.list.0, hit.key)).map_or(&[], Vec::as_slice)
    }

    /// The RFC 8914 EDE info code for a block: 16 (Censored) for a mandatory
    /// list, 17 (Filtered) for a list a profile blocks by category, 15
    /// (Blocked) otherwise.
    pub fn ede_code(&self, hit: &Hit) -> u16 {
        match self.list(hit.list) {
            Some(list) if list.policy.mandatory => crate::ede::CENSORED,
            Some(list) if list.policy.category.is_some() => crate::ede::FILTERED,
            _ => crate::ede::BLOCKED,
        }
    }

    /// Total rules in the snapshot.
    pub fn rule_count(&self) -> usize {
        self.names.len() + self.patterns.len() + self.digests.len() + self.answer_ip_rules
    }

    /// Distinct names in the suffix index.
    pub fn distinct_names(&self) -> usize {
        self.names.distinct_names()
    }

    /// Heap bytes of the index structures (not counting list metadata).
    pub fn index_bytes(&self) -> usize {
        self.names.heap_bytes() + self.digests.heap_bytes()
    }

    fn is_mandatory(&self, list: u16) -> bool {
        self.lists.get(usize::from(list)).is_some_and(|l| l.policy.mandatory)
    }
}

fn saturate_u8(value: usize) -> u8 {
    u8::try_from(value).unwrap_or(u8::MAX)
}

/// Builds a [`Snapshot`] from lists and profiles, off the hot path.
#[derive(Debug)]
pub struct SnapshotBuilder {
    hasher: ChainHasher,
    names: SuffixIndexBuilder,
    digests: DigestIndex,
    patterns: Vec<PendingPattern>,
    answer_v4: PrefixMap<Ipv4Net, AnswerIpRules>,
    answer_v6: PrefixMap<Ipv6Net, AnswerIpRules>,
    answer_ip_rules: usize,
    local_data: HashMap<(u16, u64), Vec<LocalData>>,
    lists: Vec<ListInfo>,
    profiles: Vec<ProfileConfig>,
    access: Vec<IpNet>,
}

impl Default for SnapshotBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotBuilder {
    /// An empty builder with a fresh hash seed.
    pub fn new() -> Self {
        Self {
            hasher: ChainHasher::random(),
            names: SuffixIndexBuilder::default(),
            digests: DigestIndex::default(),
            patterns: Vec::new(),
            answer_v4: PrefixMap::new(),
            answer_v6: PrefixMap::new(),
            answer_ip_rules: 0,
            local_data: HashMap::new(),
            lists: Vec::new(),
            profiles: Vec::new(),
            access: Vec::new(),
        }
    }

    /// Sets the client networks allowed to query (empty: nobody).
    pub fn set_access(&mut self, allow: Vec<IpNet>) {
        self.access = allow;
    }

    /// Makes room for about `rules` name rules in all (the lists' line
    /// counts), once, before the lists are added: see
    /// `SuffixIndexBuilder::reserve`.
    pub fn reserve_rules(&mut self, rules: usize) {
        self.names.reserve(rules);
    }

    /// Parses one list and adds its rules. Fails when the list cannot be
    /// added; rejected lines are reported in the returned info, not errors,
    /// unless no line at all was valid.
    pub fn add_list(&mut self, policy: ListPolicy, text: &[u8]) -> Result<&ListInfo, IndexError> {
        let lines = crate::format::count_lines(text);
        let format = policy.format;
        self.add_list_with(policy, lines, |sink| {
            crate::format::parse(format, text, sink);
            Ok(())
        })
    }

    /// Like [`SnapshotBuilder::add_list`], reading the list from `reader`
    /// (a file): lists of line-local formats (all but adblock and RPZ) are
    /// parsed 128 KiB at a time, so a reload never holds a big list's
    /// text next to the two indexes. The caller sizes the index first with
    /// [`SnapshotBuilder::reserve_rules`] (it knows every list's size before
    /// any is added); without that the index grows as rules arrive. Returns
    /// the info and the bytes read.
    pub fn add_list_from<R: std::io::Read>(
        &mut self,
        policy: ListPolicy,
        mut reader: R,
    ) -> Result<(&ListInfo, u64), IndexError> {
        let name = policy.name.clone();
        let failed = |error: std::io::Error| IndexError::Read {
            name: name.clone(),
            reason: error.to_string(),
        };
        let format = policy.format;
        if !crate::format::is_line_local(format) {
            let mut text = Vec::new();
            reader.read_to_end(&mut text).map_err(failed)?;
            let bytes = text.len() as u64;
            return self.add_list(policy, &text).map(|info| (info, bytes));
        }
        let mut bytes = 0;
        let info = self.add_list_with(policy, 0, |sink| {
            bytes = crate::format::parse_chunked(format, &mut reader, sink).map_err(failed)?;
            Ok(())
        })?;
        Ok((info, bytes))
    }

    /// Adds a list whose rules `parse` sends to the sink it is given;
    /// `lines` (about one rule each) sizes the name index up front.
    fn add_list_with(
        &mut self,
        policy: ListPolicy,
        lines: usize,
        parse: impl FnOnce(&mut dyn RuleSink) -> Result<(), IndexError>,
    ) -> Result<&ListInfo, IndexError> {
        if self.lists.len() >= MAX_LISTS {
            return Err(IndexError::TooManyLists { max: MAX_LISTS });
        }
        if self.lists.iter().any(|l| l.policy.name == policy.name) {
            return Err(IndexError::DuplicateList { name: policy.name });
        }
        if policy.format.has_name_rules() {
            // About one name rule per line; see `SuffixIndexBuilder::reserve`.
            self.names.reserve(lines);
        }
        // The check above keeps the index below MAX_LISTS (1024).
        let list = u16::try_from(self.lists.len()).unwrap_or(u16::MAX);
        let mut sink = BuilderSink {
            builder: self,
            list,
            list_action: policy.action,
            check: CheckSink::new(policy),
        };
        parse(&mut sink)?;
        let info = sink.check.finish()?;
        self.lists.push(info);
        // Invariant: pushed on the line above.
        Ok(self.lists.last().expect("the list just pushed"))
    }

    /// Adds a profile.
    pub fn add_profile(&mut self, profile: ProfileConfig) {
        self.profiles.push(profile);
    }

    /// Builds the snapshot: sorts the index, compiles patterns, resolves
    /// each profile's enabled lists and the client map.
    pub fn build(self) -> Result<Snapshot, IndexError> {
        let mut profiles = Vec::with_capacity(self.profiles.len() + 1);
        let mut clients_v4: PrefixMap<Ipv4Net, ProfileId> = PrefixMap::new();
        let mut clients_v6: PrefixMap<Ipv6Net, ProfileId> = PrefixMap::new();
        let mut client_ids: std::collections::HashMap<String, ProfileId> = std::collections::HashMap::new();
        let mut warnings = Vec::new();
        let has_patterns = !self.patterns.is_empty();
        let has_digests = !self.digests.is_empty();
        for config in self.profiles.iter().chain(std::iter::once(&fallback_profile())) {
            if profiles.iter().any(|p: &Profile| p.name == config.name) {
                return Err(IndexError::DuplicateProfile {
                    name: config.name.clone(),
                });
            }
            if config.block_response == BlockResponse::Sinkhole
                && config.sinkhole_ipv4.is_none()
                && config.sinkhole_ipv6.is_none()
            {
                return Err(IndexError::SinkholeWithoutAddress {
                    profile: config.name.clone(),
                });
            }
            let id = ProfileId(u16::try_from(profiles.len()).unwrap_or(u16::MAX));
            for client_id in &config.client_ids {
                let valid = (1..=63).contains(&client_id.len())
                    && client_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !valid {
                    return Err(IndexError::BadClientId {
                        profile: config.name.clone(),
                        id: client_id.clone(),
                    });
                }
                if let Some(first) = client_ids.insert(client_id.to_ascii_lowercase(), id) {
                    return Err(IndexError::DuplicateClientId {
                        id: client_id.clone(),
                        first: profiles
                            .get(usize::from(first.0))
                            .map_or_else(|| config.name.clone(), |p: &Profile| p.name.clone()),
                        second: config.name.clone(),
                    });
                }
            }
            for network in &config.clients {
                let previous = match network.trunc() {
                    IpNet::V4(v4) => clients_v4.insert(v4, id),
                    IpNet::V6(v6) => clients_v6.insert(v6, id),
                };
                if let Some(previous) = previous {
                    let first = profiles
                        .get(usize::from(previous.0))
                        .map_or_else(String::new, |p: &Profile| p.name.clone());
                    return Err(IndexError::DuplicateClientNetwork {
                        network: *network,
                        first,
                        second: config.name.clone(),
                    });
                }
            }
            let scheduled = config.schedule.iter().flat_map(|schedule| &schedule.block);
            for category in config.block.iter().chain(scheduled) {
                if !self.lists.iter().any(|l| l.policy.category.as_ref() == Some(category)) {
                    warnings.push(format!(
                        "profile `{}` blocks category `{category}`, which no list provides",
                        config.name
                    ));
                }
            }
            let mut enabled = ListSet::empty();
            for (index, list) in self.lists.iter().enumerate() {
                let policy = &list.policy;
                let on = policy.mandatory
                    || policy.action == ListAction::Allow
                    || policy.category.as_ref().is_none_or(|c| config.block.contains(c));
                if on {
                    enabled.insert(u16::try_from(index).unwrap_or(u16::MAX));
                }
            }
            let profile_error = |reason: String| IndexError::Profile {
                profile: config.name.clone(),
                reason,
            };
            // The lists of these categories that a schedule can switch on.
            let category_lists = |categories: &[String]| {
                let mut set = ListSet::empty();
                for (index, list) in self.lists.iter().enumerate() {
                    if list.policy.action == ListAction::Block
                        && list.policy.category.as_ref().is_some_and(|c| categories.contains(c))
                    {
                        set.insert(u16::try_from(index).unwrap_or(u16::MAX));
                    }
                }
                set
            };
            let mut schedules = Vec::with_capacity(config.schedule.len());
            let mut reachable = enabled;
            for (index, schedule) in config.schedule.iter().enumerate() {
                let lists = category_lists(&schedule.block);
                reachable.union_with(&lists);
                let compiled = Schedule::compile(schedule, lists)
                    .map_err(|e| profile_error(format!("schedule {}: {}", index + 1, e.0)))?;
                schedules.push(compiled);
            }
            let blocked_qtypes = config
                .block_qtypes
                .iter()
                .map(|name| {
                    qtype_code(name)
                        .ok_or_else(|| profile_error(format!("block_qtypes: `{name}` is not a record type")))
                })
                .collect::<Result<Vec<u16>, IndexError>>()?;
            let rebinding = if config.rebinding_protection {
                let allow = config
                    .rebinding_allow
                    .iter()
                    .map(|domain| {
                        crate::name::normalize(domain)
                            .map(|n| n.into_owned())
                            .map_err(|r| profile_error(format!("rebinding_allow: `{domain}`: {r}")))
                    })
                    .collect::<Result<Vec<String>, IndexError>>()?;
                Some(Rebinding { allow })
            } else {
                None
            };
            let dns64 = if config.dns64 {
                if config.dns64_prefix.prefix_len() != 96 {
                    return Err(profile_error(format!(
                        "dns64_prefix: {} must be a /96 (RFC 6052 well-known or network-specific /96)",
                        config.dns64_prefix
                    )));
                }
                Some(Dns64 {
                    prefix: config.dns64_prefix.trunc(),
                })
            } else {
                None
            };
            let uses = |pred: &dyn Fn(&ListInfo) -> bool| {
                self.lists
                    .iter()
                    .enumerate()
                    .any(|(i, l)| pred(l) && reachable.contains(u16::try_from(i).unwrap_or(u16::MAX)))
            };
            let uses_patterns = has_patterns && uses(&|l| l.pattern_rules > 0);
            let uses_digests = has_digests && uses(&|l| l.digest_rules > 0);
            profiles.push(Profile {
                name: config.name.clone(),
                clients: config.clients.clone(),
                categories: config.block.clone(),
                block_response: config.block_response,
                block_ttl: config.block_ttl,
                sinkhole_ipv4: config.sinkhole_ipv4,
                sinkhole_ipv6: config.sinkhole_ipv6,
                safe_search: SafeSearch::compile(&config.safe_search),
                schedules,
                rebinding,
                bypass_protection: config.bypass_protection,
                blocked_qtypes,
                inspect_cnames: config.inspect_cnames,
                dns64,
                enabled,
                uses_digests,
                uses_patterns,
            });
        }
        warnings.extend(self.unprotective());
        let mut access_v4 = PrefixMap::new();
        let mut access_v6 = PrefixMap::new();
        for network in &self.access {
            match network.trunc() {
                IpNet::V4(v4) => access_v4.insert(v4, ()),
                IpNet::V6(v6) => access_v6.insert(v6, ()),
            };
        }
        let mut digests = self.digests;
        digests.finish();
        Ok(Snapshot {
            lists: self.lists,
            names: self.names.build(self.hasher),
            digests,
            patterns: PatternSet::build(self.patterns),
            answer_v4: self.answer_v4,
            answer_v6: self.answer_v6,
            answer_ip_rules: self.answer_ip_rules,
            local_data: self.local_data,
            profiles,
            client_ids,
            clients_v4: merge_clients(&access_v4, &clients_v4),
            clients_v6: merge_clients(&access_v6, &clients_v6),
            warnings,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl SnapshotBuilder {
    /// What loads but protects nothing, for `check-config` and the log: an
    /// empty list, a category list no profile or schedule blocks, and
    /// allowed clients that no profile names (they get the fallback
    /// profile, which enforces only mandatory and category-less lists).
    fn unprotective(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for list in &self.lists {
            let policy = &list.policy;
            if list.counts.rules == 0 {
                warnings.push(format!("list `{}` holds no rules: it blocks nothing", policy.name));
            }
            if let Some(category) = &policy.category
                && policy.action == ListAction::Block
                && !policy.mandatory
                && !self
                    .profiles
                    .iter()
                    .any(|p| p.block.contains(category) || p.schedule.iter().any(|s| s.block.contains(category)))
            {
                warnings.push(format!(
                    "list `{}` (category `{category}`) is blocked by no profile or schedule: it protects no client",
                    policy.name
                ));
            }
        }
        for network in &self.access {
            let covered = self
                .profiles
                .iter()
                .flat_map(|p| &p.clients)
                .any(|clients| clients.contains(network));
            if !covered {
                warnings.push(format!(
                    "clients of server.allow {network} outside every profile's `clients` get the `{UNMATCHED_PROFILE}` profile (mandatory and category-less lists only)"
                ));
            }
        }
        warnings
    }
}

/// What one prefix of the merged client map says about its addresses
/// (those no longer prefix of the map also holds).
#[derive(Clone, Copy, Debug)]
struct ClientRule {
    /// Whether `server.allow` admits them.
    allowed: bool,
    /// The profile whose `clients` name them; `None`: the fallback profile.
    profile: Option<ProfileId>,
}

/// Merges the access list and the profiles' client networks into one
/// longest-prefix map: every prefix of either map, holding both answers
/// for it. For an address, the longest merged prefix containing it, `P`,
/// gives the same answers as looking the address up in each map, because a
/// longer prefix of either map that contains the address would itself be in
/// the merged map and longer than `P`.
fn merge_clients<P>(access: &PrefixMap<P, ()>, clients: &PrefixMap<P, ProfileId>) -> PrefixMap<P, ClientRule>
where
    P: prefix_trie::Prefix,
{
    let mut merged = PrefixMap::new();
    for prefix in access.iter().map(|(p, _)| p).chain(clients.iter().map(|(p, _)| p)) {
        let rule = ClientRule {
            allowed: access.get_lpm(&prefix).is_some(),
            profile: clients.get_lpm(&prefix).map(|(_, id)| *id),
        };
        merged.insert(prefix, rule);
    }
    merged
}

/// The implicit profile for clients outside every configured profile: only
/// mandatory, allow and category-less lists apply.
fn fallback_profile() -> ProfileConfig {
    ProfileConfig::new(UNMATCHED_PROFILE, Vec::new())
}

/// Checks a list without building anything: every loading rule of
/// [`SnapshotBuilder::add_list`] (the single-label guard, the empty, nothing
/// valid and mostly rejected verdicts), so a download is judged exactly as
/// the build will judge it. Returns the list's info.
pub fn check_list(policy: ListPolicy, text: &[u8]) -> Result<ListInfo, IndexError> {
    let mut check = CheckSink::new(policy);
    crate::format::parse(check.info.policy.format, text, &mut check);
    check.finish()
}

/// [`check_list`] reading the list from `reader` (a file): line-local
/// formats are checked 128 KiB at a time, so a big list is never held
/// whole (adblock and RPZ are read whole, as the builder reads them).
/// Returns the info and the bytes read.
pub fn check_list_from<R: std::io::Read>(policy: ListPolicy, mut reader: R) -> Result<(ListInfo, u64), IndexError> {
    let format = policy.format;
    let failed = |name: &str, error: std::io::Error| IndexError::Read {
        name: name.to_owned(),
        reason: error.to_string(),
    };
    if !crate::format::is_line_local(format) {
        let mut text = Vec::new();
        reader.read_to_end(&mut text).map_err(|e| failed(&policy.name, e))?;
        let bytes = text.len() as u64;
        return check_list(policy, &text).map(|info| (info, bytes));
    }
    let name = policy.name.clone();
    let mut check = CheckSink::new(policy);
    let bytes = crate::format::parse_chunked(format, &mut reader, &mut check).map_err(|e| failed(&name, e))?;
    check.finish().map(|info| (info, bytes))
}

/// The loading rules every list goes through, shared by the builder and
/// [`check_list`]: counts, the first rejected lines (cut and escaped), the
/// single-label guard, and the verdict on the whole list.
struct CheckSink {
    info: ListInfo,
    last_line: Option<u32>,
    /// Rejected lines that are not rules at all, and the first of them.
    malformed: u64,
    first_malformed: Option<(u32, String)>,
}

impl CheckSink {
    fn new(policy: ListPolicy) -> Self {
        Self {
            info: ListInfo {
                policy,
                counts: LineCounts::default(),
                rejected_examples: Vec::new(),
                name_rules: 0,
                pattern_rules: 0,
                digest_rules: 0,
                answer_ip_rules: 0,
            },
            last_line: None,
            malformed: 0,
            first_malformed: None,
        }
    }

    /// Counts a rule, or rejects it (and returns false) when it names a
    /// single label the list does not allow.
    fn admit(&mut self, rule: &Rule<'_>) -> bool {
        if let RuleTarget::Name { name, .. } = rule.target
            && !self.info.policy.allow_tld_rules
            && crate::format::is_single_label(name)
        {
            self.reject(rule.line, name, LineRejection::SingleLabel);
            return false;
        }
        self.info.counts.rules += 1;
        if self.last_line != Some(rule.line) {
            self.last_line = Some(rule.line);
            self.info.counts.accepted += 1;
        }
        true
    }

    /// Takes back a rule [`CheckSink::admit`] counted and rejects its line.
    fn retract(&mut self, line: u32, text: &str, reason: LineRejection) {
        self.info.counts.rules -= 1;
        self.info.counts.accepted -= 1;
        self.last_line = None;
        self.reject(line, text, reason);
    }

    /// The verdict on the whole list.
    fn finish(self) -> Result<ListInfo, IndexError> {
        let info = self.info;
        let LineCounts { accepted, rejected, .. } = info.counts;
        let first = info.rejected_examples.first();
        let (first_line, first_reason) = (
            first.map_or(0, |r| r.line),
            first.map_or_else(String::new, |r| r.reason.clone()),
        );
        if accepted == 0 && rejected == 0 && (info.policy.mandatory || !info.policy.allow_empty) {
            return Err(IndexError::Empty {
                name: info.policy.name,
                mandatory: info.policy.mandatory,
            });
        }
        if accepted == 0 && rejected > 0 {
            return Err(IndexError::NothingValid {
                name: info.policy.name,
                rejected,
                first_line,
                first_reason,
            });
        }
        if self.malformed > accepted {
            let (first_line, first_reason) = self.first_malformed.unwrap_or((first_line, first_reason));
            return Err(IndexError::MostlyMalformed {
                name: info.policy.name,
                format: info.policy.format,
                accepted,
                malformed: self.malformed,
                first_line,
                first_reason,
            });
        }
        Ok(info)
    }
}

impl RuleSink for CheckSink {
    fn rule(&mut self, rule: Rule<'_>) {
        self.admit(&rule);
    }

    fn reject(&mut self, line: u32, text: &str, reason: LineRejection) {
        self.info.counts.rejected += 1;
        if self.last_line == Some(line) {
            self.info.counts.partial += 1;
        }
        if reason.is_malformed() {
            self.malformed += 1;
            self.first_malformed.get_or_insert_with(|| (line, reason.to_string()));
        }
        if self.info.rejected_examples.len() < REJECTED_EXAMPLES {
            self.info.rejected_examples.push(RejectedLine {
                line,
                text: printable_start(text),
                reason: reason.to_string(),
            });
        }
    }

    fn skip(&mut self, _line: u32, _reason: SkipReason) {
        self.info.counts.skipped += 1;
    }
}

/// A line's first [`REJECTED_TEXT_CHARS`] characters with control
/// characters escaped, for logs and terminals.
fn printable_start(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(REJECTED_TEXT_CHARS * 2));
    for (i, c) in text.chars().enumerate() {
        if i == REJECTED_TEXT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Feeds one list's rules into the builder, through the loading rules.
struct BuilderSink<'b> {
    builder: &'b mut SnapshotBuilder,
    list: u16,
    list_action: ListAction,
    check: CheckSink,
}

impl BuilderSink<'_> {
    /// Applies the list's own action: in an allowlist every rule allows.
    fn effective_action(&self, action: RuleAction) -> RuleAction {
        match (self.list_action, action) {
            (ListAction::Block, action) => action,
            (ListAction::Allow, RuleAction::BlockImportant | RuleAction::AllowImportant) => RuleAction::AllowImportant,
            (ListAction::Allow, _) => RuleAction::Allow,
        }
    }
}

impl RuleSink for BuilderSink<'_> {
    fn rule(&mut self, rule: Rule<'_>) {
        if !self.check.admit(&rule) {
            return;
        }
        let action = self.effective_action(rule.action);
        let info = &mut self.check.info;
        match rule.target {
            RuleTarget::Name { name, scope } => {
                let key = self.builder.hasher.name(name);
                self.builder.names.push(
                    key,
                    crate::name::label_count(name),
                    rule.line,
                    Tag::new(self.list, scope, action),
                );
                if action == RuleAction::Rewrite {
                    self.builder
                        .local_data
                        .entry((self.list, key))
                        .or_default()
                        .extend(rule.local_data);
                }
                info.name_rules += 1;
            }
            RuleTarget::Pattern {
                regex,
                required_literal,
            } => match Regex::new(&regex) {
                Ok(regex) => {
                    self.builder.patterns.push(PendingPattern {
                        regex,
                        literal: required_literal,
                        line: rule.line,
                        tag: Tag::new(self.list, Scope::Exact, action),
                    });
                    info.pattern_rules += 1;
                }
                Err(error) => {
                    // Adblock compiles `/regex/` rules while parsing and its
                    // wildcard patterns are escaped literals joined by `.*`,
                    // so this is reached only by a regex over the size limit.
                    self.check
                        .retract(rule.line, &regex, LineRejection::BadPattern(error.to_string()));
                }
            },
            RuleTarget::AnswerIp(network) => {
                let tag = Tag::new(self.list, Scope::Subtree, action);
                match network.trunc() {
                    IpNet::V4(v4) => self.builder.answer_v4.entry(v4).or_default().push((rule.line, tag)),
                    IpNet::V6(v6) => self.builder.answer_v6.entry(v6).or_default().push((rule.line, tag)),
                }
                self.builder.answer_ip_rules += 1;
                info.answer_ip_rules += 1;
            }
            RuleTarget::NameDigest(digest) => {
                self.builder
                    .digests
                    .push(digest, rule.line, Tag::new(self.list, Scope::Subtree, action));
                info.digest_rules += 1;
            }
        }
    }

    fn reject(&mut self, line: u32, text: &str, reason: LineRejection) {
        self.check.reject(line, text, reason);
    }

    fn skip(&mut self, line: u32, reason: SkipReason) {
        self.check.skip(line, reason);
    }
}

/// Prepares the name index for a batch of lookups: [`NameWarmer::add`]
/// every name of the batch, then [`NameWarmer::load`] once, then decide
/// each name. The lookups then find the index's lines in the cache, their
/// misses having been taken together (see `suffix::Warmer`). Only a
/// speed-up: verdicts are the same with or without it.
#[derive(Debug)]
pub struct NameWarmer<'a>(crate::suffix::Warmer<'a>);

impl NameWarmer<'_> {
    /// Notes the index buckets deciding `name` will read.
    pub fn add(&mut self, name: &str) {
        self.0.add(name);
    }

    /// Loads the noted buckets; pass the result to
    /// [`std::hint::black_box`] so the loads are kept.
    pub fn load(self) -> u64 {
        self.0.load()
    }
}
