//! Name normalization shared by every list format and by the query path.
//!
//! A normalized name is lower-case ASCII (IDNs converted to punycode), has no
//! trailing dot, and consists of 1 to 127 labels of 1 to 63 bytes each, at most
//! 253 bytes in all. Underscores are accepted because real blocklists use them
//! (`_dmarc`-style and tracker hostnames); `*` is not, because wildcards are a
//! list-format concern handled by each parser before it calls [`normalize`].

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// The longest name (without the trailing dot) that fits in a DNS message.
pub const MAX_NAME_LEN: usize = 253;
/// The longest label the DNS allows.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name from a list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NameRejection {
    /// Nothing left after trimming.
    Empty,
    /// An IPv4 or IPv6 address, or a name whose last label is numeric.
    IpLiteral,
    /// Longer than 253 bytes.
    TooLong,
    /// A label longer than 63 bytes.
    LabelTooLong,
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A byte that cannot appear in a host name.
    InvalidCharacter,
    /// A Unicode name that IDNA (UTS 46) refused to convert.
    InvalidIdn,
}

impl NameRejection {
    /// A short, stable reason string for reports and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty name",
            Self::IpLiteral => "IP literal, not a domain name",
            Self::TooLong => "name longer than 253 bytes",
            Self::LabelTooLong => "label longer than 63 bytes",
            Self::EmptyLabel => "empty label",
            Self::InvalidCharacter => "invalid character in name",
            Self::InvalidIdn => "invalid internationalized name",
        }
    }
}

impl fmt::Display for NameRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Normalizes one name: trims whitespace and one trailing dot, lower-cases,
/// converts IDNs to punycode and checks the result.
///
/// Borrows the input when it is already normalized, which is the common case
/// for published lists, so that parsing 10M names does not allocate 10M times.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, NameRejection> {
    let trimmed = raw.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(NameRejection::Empty);
    }
    let name: Cow<'_, str> = if trimmed.is_ascii() {
        if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    } else {
        match idna::domain_to_ascii(trimmed) {
            Ok(ascii) => Cow::Owned(ascii),
            Err(_) => return Err(NameRejection::InvalidIdn),
        }
    };
    check_ascii_name(&name)?;
    Ok(name)
}

/// Checks an already lower-case ASCII name against the rules in the module
/// documentation.
fn check_ascii_name(name: &str) -> Result<(), NameRejection> {
    // IPv4 literals are caught by the numeric last label below; only names
    // with a colon can be IPv6 literals, so only those pay for the parse.
    if name.contains(':') && name.parse::<IpAddr>().is_ok() {
        return Err(NameRejection::IpLiteral);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameRejection::TooLong);
    }
    let mut last_label = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameRejection::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameRejection::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(NameRejection::InvalidCharacter);
        }
        last_label = label;
    }
    // No top-level domain is numeric (RFC 3696 §2); a numeric last label means
    // an IP address or a fragment of one, e.g. `*.1.0.209.238` in some lists.
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameRejection::IpLiteral);
    }
    Ok(())
}

/// Returns the number of labels in a normalized name.
pub fn label_count(name: &str) -> usize {
    name.bytes().filter(|&b| b == b'.').count() + 1
}

/// Returns the suffix of `name` made of its last `labels` labels.
///
/// `labels` greater than the label count returns the whole name.
pub fn suffix(name: &str, labels: usize) -> &str {
    if labels == 0 {
        return "";
    }
    let mut seen = 0;
    for (i, b) in name.bytes().enumerate().rev() {
        if b == b'.' {
            seen += 1;
            if seen == labels {
                return &name[i + 1..];
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_dot_and_space() {
        assert_eq!(normalize(" Example.COM. ").unwrap(), "example.com");
        assert!(matches!(normalize("a.b").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn converts_idn_to_punycode() {
        assert_eq!(normalize("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize("xn--bcher-kva.de").unwrap(), "xn--bcher-kva.de");
    }

    #[test]
    fn rejects_ip_literals_and_bad_names() {
        assert_eq!(normalize("1.2.3.4"), Err(NameRejection::IpLiteral));
        assert_eq!(normalize("::1"), Err(NameRejection::IpLiteral));
        assert_eq!(normalize("1.0.209"), Err(NameRejection::IpLiteral));
        assert_eq!(normalize("a..b"), Err(NameRejection::EmptyLabel));
        assert_eq!(normalize(".a.b"), Err(NameRejection::EmptyLabel));
        assert_eq!(normalize("a b.c"), Err(NameRejection::InvalidCharacter));
        assert_eq!(normalize("*.a.b"), Err(NameRejection::InvalidCharacter));
        assert_eq!(normalize(""), Err(NameRejection::Empty));
        assert_eq!(normalize(&"a".repeat(64)), Err(NameRejection::LabelTooLong));
        let long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(normalize(&long), Err(NameRejection::TooLong));
    }

    #[test]
    fn keeps_underscores_and_hyphens() {
        assert_eq!(normalize("a_b.-x-.com").unwrap(), "a_b.-x-.com");
    }

    #[test]
    fn suffix_and_label_count() {
        assert_eq!(label_count("a.b.c"), 3);
        assert_eq!(suffix("a.b.c", 1), "c");
        assert_eq!(suffix("a.b.c", 2), "b.c");
        assert_eq!(suffix("a.b.c", 3), "a.b.c");
        assert_eq!(suffix("a.b.c", 9), "a.b.c");
    }
}
