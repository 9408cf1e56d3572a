//! Kubernetes label selectors, the full grammar of `k8s.io/apimachinery/pkg/labels.Parse`:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`, `k>1`, `k<1`, comma-joined.
//! What the HPA sends is `LabelSelectorAsSelector(...).String()`, a subset of this.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    Exists,
    DoesNotExist,
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn lex(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if is_special(c) {
            chars.next();
            let next = chars.peek().map(|&(_, n)| n);
            let token = match (c, next) {
                ('=', Some('=')) => {
                    chars.next();
                    Token::DoubleEq
                }
                ('!', Some('=')) => {
                    chars.next();
                    Token::NotEq
                }
                ('=', _) => Token::Eq,
                ('!', _) => Token::Not,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                ('>', _) => Token::Gt,
                ('<', _) => Token::Lt,
                _ => return Err(format!("unexpected character {c:?} at {i}")),
            };
            tokens.push(token);
        } else {
            let mut end = input.len();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_whitespace() || is_special(d) {
                    end = j;
                    break;
                }
                chars.next();
            }
            let word = &input[i..end];
            tokens.push(match word {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident(word.to_owned()),
            });
        }
    }
    Ok(tokens)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` of at most 63 characters (empty allowed).
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty() || is_qualified_name_part(value)
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A label key: `name` or `prefix/name` with a DNS-subdomain prefix.
pub fn is_valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    }
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(key)) if is_valid_label_key(&key) => Ok(key),
            Some(Token::Ident(key)) => Err(format!("invalid label key {key:?}")),
            Some(other) => Err(format!("expected a label key, found {other:?}")),
            None => Err("expected a label key, found the end".into()),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(v)) => {
                let v = v.clone();
                self.pos += 1;
                if is_valid_label_value(&v) { Ok(v) } else { Err(format!("invalid label value {v:?}")) }
            }
            // `k=` selects the empty value.
            Some(Token::Comma) | None => Ok(String::new()),
            Some(other) => Err(format!("expected a label value, found {other:?}")),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected '(' after in/notin".into());
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) if is_valid_label_value(&v) => values.push(v),
                Some(Token::Ident(v)) => return Err(format!("invalid label value {v:?}")),
                Some(Token::Close) if values.is_empty() => return Err("in/notin need at least one value".into()),
                Some(Token::Close) => return Ok(values),
                other => return Err(format!("expected a value or ')', found {other:?}")),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                other => return Err(format!("expected ',' or ')', found {other:?}")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            return Ok(Requirement { key: self.key()?, operator: Operator::DoesNotExist, values: vec![] });
        }
        let key = self.key()?;
        let (operator, values) = match self.peek() {
            None | Some(Token::Comma) => (Operator::Exists, vec![]),
            Some(Token::Eq | Token::DoubleEq) => {
                self.pos += 1;
                (Operator::Equals, vec![self.value()?])
            }
            Some(Token::NotEq) => {
                self.pos += 1;
                (Operator::NotEquals, vec![self.value()?])
            }
            Some(Token::In) => {
                self.pos += 1;
                (Operator::In, self.set()?)
            }
            Some(Token::NotIn) => {
                self.pos += 1;
                (Operator::NotIn, self.set()?)
            }
            Some(t @ (Token::Gt | Token::Lt)) => {
                let operator = if *t == Token::Gt { Operator::GreaterThan } else { Operator::LessThan };
                self.pos += 1;
                match self.next() {
                    Some(Token::Ident(v)) if v.parse::<i64>().is_ok() => (operator, vec![v]),
                    other => return Err(format!("'>' and '<' need an integer value, found {other:?}")),
                }
            }
            Some(other) => return Err(format!("expected an operator after {key:?}, found {other:?}")),
        };
        Ok(Requirement { key, operator, values })
    }
}

impl Selector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError { selector: input.to_owned(), reason };
        let tokens = lex(input).map_err(fail)?;
        let mut parser = Parser { tokens: &tokens, pos: 0 };
        let mut requirements = Vec::new();
        if tokens.is_empty() {
            return Ok(Self::default());
        }
        loop {
            requirements.push(parser.requirement().map_err(fail)?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => {}
                Some(other) => return Err(fail(format!("expected ',' between requirements, found {other:?}"))),
            }
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        self.matches_with(|key| labels.get(key).copied())
    }

    /// Matches labels given as a lookup function (no map needed on hot paths).
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(label(&r.key)))
    }

    /// The values a selector pins `key` to with `=`/`==`/`in`, if it does.
    pub fn pinned_values(&self, key: &str) -> Option<Vec<&str>> {
        let mut pinned: Option<Vec<&str>> = None;
        for r in self.requirements.iter().filter(|r| r.key == key) {
            if matches!(r.operator, Operator::Equals | Operator::In) {
                let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
                pinned = Some(match pinned {
                    None => values,
                    Some(prev) => prev.into_iter().filter(|v| values.contains(v)).collect(),
                });
            }
        }
        pinned
    }
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        let number = |v: &str| v.parse::<i64>().ok();
        match self.operator {
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(bound)) = (value.and_then(number), number(&self.values[0])) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan { have > bound } else { have < bound }
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r.operator {
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
                Operator::Equals => write!(f, "{}={}", r.key, r.values[0])?,
                Operator::NotEquals => write!(f, "{}!={}", r.key, r.values[0])?,
                Operator::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                Operator::GreaterThan => write!(f, "{}>{}", r.key, r.values[0])?,
                Operator::LessThan => write!(f, "{}<{}", r.key, r.values[0])?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn every_operator_matches_like_kubernetes() {
        let item = labels(&[("consumergroup", "processor"), ("topic", "gpu_metrics"), ("shard", "3")]);
        let cases = [
            ("", true),
            ("consumergroup=processor", true),
            ("consumergroup==processor", true),
            ("consumergroup=other", false),
            ("consumergroup!=other", true),
            ("consumergroup!=processor", false),
            ("missing!=x", true),
            ("topic in (gpu_metrics,token_usage)", true),
            ("topic in (token_usage)", false),
            ("topic notin (token_usage)", true),
            ("topic notin (gpu_metrics)", false),
            ("missing notin (a)", true),
            ("topic", true),
            ("missing", false),
            ("!missing", true),
            ("!topic", false),
            ("shard>2", true),
            ("shard>3", false),
            ("shard<4", true),
            ("topic>1", false),
            ("consumergroup=processor,topic=gpu_metrics", true),
            ("consumergroup=processor,topic=token_usage", false),
            ("  consumergroup = processor ,  topic in ( gpu_metrics ) ", true),
            ("missing=", false),
        ];
        for (text, want) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(selector.matches(&item), want, "{text:?}");
        }
        assert!(Selector::parse("tier=").expect("empty value").matches(&labels(&[("tier", "")])));
        assert!(Selector::parse("tier==").expect("empty value").matches(&labels(&[("tier", "")])));
    }

    #[test]
    fn malformed_selectors_are_rejected_with_a_reason() {
        for bad in [
            "=x",
            "a in ()",
            "a in (b",
            "a in b",
            "a notin",
            "a=b=c",
            "a b",
            ",",
            "a,",
            "a>x",
            "a<",
            "!",
            "!a=b",
            "-bad=x",
            "a=-bad",
            &format!("a={}", "x".repeat(64)),
            &format!("{}=x", "k".repeat(64)),
            "UPPER.example.com/a=b",
            "a=b)",
            "a=(b)",
        ] {
            let err = Selector::parse(bad).expect_err(bad);
            assert_eq!(err.selector, bad);
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn keys_with_prefixes_and_display_round_trip() {
        let text = "example.com/team=data,!legacy,tier notin (dev,test),shard>1,app";
        let selector = Selector::parse(text).expect("valid");
        assert_eq!(selector.requirements[0].key, "example.com/team");
        let again = Selector::parse(&selector.to_string()).expect("display parses");
        assert_eq!(again, selector);
    }

    #[test]
    fn pinned_values_intersect_equalities_and_sets() {
        let s = Selector::parse("consumergroup in (a,b,c),consumergroup!=b,consumergroup in (b,c)").expect("valid");
        assert_eq!(s.pinned_values("consumergroup"), Some(vec!["b", "c"]));
        assert_eq!(s.pinned_values("topic"), None);
    }
}
