//! Starter lists compiled into the binary, so the embedded default
//! configuration works from any directory. Sources and licenses are in
//! `blocklists/README.md`.

/// The path prefix that selects a built-in list.
pub const BUILTIN_PREFIX: &str = "builtin:";

const LISTS: &[(&str, &[u8])] = &[
    (
        "example-csam.txt",
        include_bytes!("../../../blocklists/example-csam.txt"),
    ),
    (
        "example-csam.sha256",
        include_bytes!("../../../blocklists/example-csam.sha256"),
    ),
    ("allowlist.txt", include_bytes!("../../../blocklists/allowlist.txt")),
    (
        "urlhaus-malware.dnsmasq.conf",
        include_bytes!("../../../blocklists/urlhaus-malware.dnsmasq.conf"),
    ),
    (
        "blocklistproject-drugs.dnsmasq.txt",
        include_bytes!("../../../blocklists/blocklistproject-drugs.dnsmasq.txt"),
    ),
    (
        "sinfonietta-pornography.hosts",
        include_bytes!("../../../blocklists/sinfonietta-pornography.hosts"),
    ),
];

/// A built-in list's bytes.
pub fn get(name: &str) -> Option<&'static [u8]> {
    LISTS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The built-in list names.
pub(crate) fn names() -> Vec<&'static str> {
    LISTS.iter().map(|(n, _)| *n).collect()
}
