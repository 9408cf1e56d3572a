//! Which groups and topics are collected and exported: allow and deny regular expressions,
//! applied before any offset is fetched, so on a big shared cluster an admin bounds both the
//! cost of a cycle and the label cardinality of `/metrics`. Scaling targets bypass them.

use regex::Regex;

use crate::error::ConfigError;

/// Allow/deny patterns for groups and topics. A name is collected when it matches the allow
/// pattern (if any) and not the deny pattern (if any). Patterns match the whole name.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    groups_allow: Option<Regex>,
    groups_deny: Option<Regex>,
    topics_allow: Option<Regex>,
    topics_deny: Option<Regex>,
}

/// Compiles `pattern` anchored at both ends: it must match the whole name.
pub fn parse_pattern(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("{pattern:?} is not a valid regular expression: {e}"))
}

fn anchored(flag: &str, pattern: Option<&str>) -> Result<Option<Regex>, ConfigError> {
    let Some(pattern) = pattern.filter(|p| !p.is_empty()) else { return Ok(None) };
    parse_pattern(pattern).map(Some).map_err(|e| ConfigError::Invalid(format!("--{flag} {e}")))
}

impl Filters {
    /// From compiled, anchored patterns (see [`parse_pattern`]).
    pub fn from_patterns(
        groups_allow: Option<Regex>,
        groups_deny: Option<Regex>,
        topics_allow: Option<Regex>,
        topics_deny: Option<Regex>,
    ) -> Self {
        Self { groups_allow, groups_deny, topics_allow, topics_deny }
    }

    /// From pattern texts, naming the flag of a bad one.
    pub fn new(
        groups_allow: Option<&str>,
        groups_deny: Option<&str>,
        topics_allow: Option<&str>,
        topics_deny: Option<&str>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            groups_allow: anchored("groups-allow", groups_allow)?,
            groups_deny: anchored("groups-deny", groups_deny)?,
            topics_allow: anchored("topics-allow", topics_allow)?,
            topics_deny: anchored("topics-deny", topics_deny)?,
        })
    }

    fn admits(allow: Option<&Regex>, deny: Option<&Regex>, name: &str) -> bool {
        allow.is_none_or(|r| r.is_match(name)) && !deny.is_some_and(|r| r.is_match(name))
    }

    /// The group is collected (targets are collected whatever this says).
    pub fn group(&self, name: &str) -> bool {
        Self::admits(self.groups_allow.as_ref(), self.groups_deny.as_ref(), name)
    }

    /// The topic is watched (targets' topics are watched whatever this says).
    pub fn topic(&self, name: &str) -> bool {
        Self::admits(self.topics_allow.as_ref(), self.topics_deny.as_ref(), name)
    }

    pub fn is_empty(&self) -> bool {
        self.groups_allow.is_none()
            && self.groups_deny.is_none()
            && self.topics_allow.is_none()
            && self.topics_deny.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_then_deny_on_whole_names() {
        let f = Filters::new(Some("team-a-.*|billing"), Some(".*-test"), None, Some("__.*|tmp\\..*")).expect("valid");
        assert!(f.group("team-a-orders"));
        assert!(f.group("billing"));
        assert!(!f.group("billing-2"), "anchored: a prefix match is not a match");
        assert!(!f.group("team-a-load-test"), "denied");
        assert!(!f.group("team-b"));
        assert!(f.topic("orders"));
        assert!(!f.topic("tmp.scratch"));
        assert!(Filters::default().group("anything") && Filters::default().topic("anything"));
        assert!(Filters::new(Some(""), None, None, None).expect("empty is none").is_empty());
    }

    #[test]
    fn a_bad_pattern_names_its_flag() {
        let err = Filters::new(None, Some("(unclosed"), None, None).expect_err("invalid").to_string();
        assert!(err.contains("--groups-deny") && err.contains("(unclosed"), "{err}");
    }
}
