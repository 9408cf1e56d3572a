//! Kafka message -> MongoDB document, or a reason it must be dead-lettered. Validation is
//! strict on what the schema defines and lenient on what it does not (unknown fields are kept).

use mongodb::bson::{DateTime, RawArrayBuf, RawBson, RawDocumentBuf, rawdoc};
use serde::Deserialize;
use serde_json::Value;

use crate::events::{GpuMetric, Kind, TokenUsage};

/// Where a message came from; also the fallback identity of an event without `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Coordinates<'_> {
    /// `topic#partition#offset`: deterministic, so a replay maps to the same `_id`.
    pub fn id(&self) -> String {
        format!("{}#{}#{}", self.topic, self.partition, self.offset)
    }
}

/// Why a message cannot be projected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("empty message")]
    Empty,
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    Oversize { size: usize, max: usize },
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("schema violation: {0}")]
    Schema(String),
    #[error("value out of range: {0}")]
    OutOfRange(String),
    /// Passed validation, but MongoDB refused the document (error code and message).
    #[error("refused by MongoDB (code {code}): {message}")]
    Refused { code: i32, message: String },
}

impl Rejection {
    /// A stable label for metrics and the dead-letter document.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Oversize { .. } => "oversize",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::Schema(_) => "schema_violation",
            Self::OutOfRange(_) => "out_of_range",
            Self::Refused { .. } => "refused_by_mongodb",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub id: String,
    pub document: RawDocumentBuf,
}

fn parse_ts(ts: &str) -> Result<DateTime, Rejection> {
    let parsed = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Rejection::Schema(format!("ts {ts:?} is not RFC 3339: {e}")))?;
    let millis = parsed.unix_timestamp_nanos() / 1_000_000;
    Ok(DateTime::from_millis(i64::try_from(millis).map_err(|_| Rejection::OutOfRange(format!("ts {ts:?}")))?))
}

fn finite_within(name: &str, value: f64, min: f64, max: f64) -> Result<(), Rejection> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Rejection::OutOfRange(format!("{name} = {value} (expected {min}..={max})")))
    }
}

/// Fields the projection writes itself; a source field of the same name is replaced.
pub const DERIVED_FIELDS: [&str; 6] = ["_id", "ts", "total_tokens", "kafka", "ingested_at", "processed_by"];

/// Deepest nesting of objects and arrays kept (MongoDB refuses documents past 100 levels).
const MAX_DEPTH: usize = 32;

/// A field name MongoDB would refuse or misread: NUL cannot be encoded, and `$`-prefixed
/// names are operators.
fn check_key(key: &str) -> Result<(), Rejection> {
    if key.contains('\0') {
        return Err(Rejection::Schema(format!("field name {key:?} contains NUL")));
    }
    if key.starts_with('$') {
        return Err(Rejection::Schema(format!("field name {key:?} starts with '$'")));
    }
    Ok(())
}

/// JSON -> BSON bytes, moving strings rather than copying them. Integers become Int64 and other
/// numbers Double; an integer beyond i64 has no BSON form and is rejected.
fn to_raw(value: Value, depth: usize) -> Result<RawBson, Rejection> {
    if depth > MAX_DEPTH {
        return Err(Rejection::Schema(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match value {
        Value::Null => RawBson::Null,
        Value::Bool(b) => RawBson::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.is_u64()) {
            (Some(i), _) => RawBson::Int64(i),
            (None, true) => return Err(Rejection::OutOfRange(format!("{n} does not fit a BSON integer"))),
            (None, false) => RawBson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => RawBson::String(s),
        Value::Array(items) => {
            let mut array = RawArrayBuf::new();
            for item in items {
                array.push(to_raw(item, depth + 1)?);
            }
            RawBson::Array(array)
        }
        Value::Object(fields) => {
            let mut document = RawDocumentBuf::new();
            for (key, value) in fields {
                check_key(&key)?;
                document.append(key, to_raw(value, depth + 1)?);
            }
            RawBson::Document(document)
        }
    })
}

/// Decodes and validates one message of `kind`.
pub fn decode(
    kind: Kind,
    payload: Option<&[u8]>,
    at: Coordinates<'_>,
    max_bytes: usize,
    ingested_at: DateTime,
) -> Result<Decoded, Rejection> {
    let payload = payload.filter(|p| !p.is_empty()).ok_or(Rejection::Empty)?;
    if payload.len() > max_bytes {
        return Err(Rejection::Oversize { size: payload.len(), max: max_bytes });
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(Rejection::NotAnObject);
    }
    let schema = |e: serde_json::Error| Rejection::Schema(e.to_string());
    // Typed views borrow the parsed value: one parse, no copy.
    let (event_id, ts, total_tokens) = match kind {
        Kind::GpuMetrics => {
            let e = GpuMetric::deserialize(&value).map_err(schema)?;
            finite_within("utilization", e.utilization, 0.0, 1.0)?;
            finite_within("power_w", e.power_w, 0.0, 100_000.0)?;
            finite_within("price_per_hour_usd", e.price_per_hour_usd, 0.0, 1_000_000.0)?;
            if e.mem_used_mb > e.mem_total_mb {
                return Err(Rejection::OutOfRange(format!(
                    "mem_used_mb {} > mem_total_mb {}",
                    e.mem_used_mb, e.mem_total_mb
                )));
            }
            if e.host.is_empty() {
                return Err(Rejection::Schema("host is empty".into()));
            }
            (e.event_id, e.ts, None)
        }
        Kind::TokenUsage => {
            let e = TokenUsage::deserialize(&value).map_err(schema)?;
            finite_within("latency_ms", e.latency_ms, 0.0, 86_400_000.0)?;
            if e.model.is_empty() {
                return Err(Rejection::Schema("model is empty".into()));
            }
            let total = e.prompt_tokens.checked_add(e.completion_tokens).and_then(|t| i64::try_from(t).ok());
            (e.event_id, e.ts, Some(total.ok_or_else(|| Rejection::OutOfRange("token counts overflow".into()))?))
        }
    };
    let ts = parse_ts(&ts)?;
    let id = if event_id.is_empty() { at.id() } else { event_id };

    // The original object, unknown fields included, plus what the projection derives; built
    // as BSON bytes once, here, so the write only copies them.
    let Value::Object(fields) = value else {
        return Err(Rejection::NotAnObject);
    };
    let mut document = RawDocumentBuf::new();
    document.append("_id", id.as_str());
    for (key, value) in fields {
        check_key(&key)?;
        if !DERIVED_FIELDS.contains(&key.as_str()) {
            document.append(key, to_raw(value, 1)?);
        }
    }
    document.append("ts", ts);
    if let Some(total) = total_tokens {
        document.append("total_tokens", total);
    }
    document.append("kafka", rawdoc! { "topic": at.topic, "partition": at.partition, "offset": at.offset });
    document.append("ingested_at", ingested_at);
    Ok(Decoded { id, document })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Generator;
    use mongodb::bson::{Bson, Document};

    fn document(d: &Decoded) -> Document {
        d.document.to_document().expect("valid BSON")
    }

    const AT: Coordinates<'static> = Coordinates { topic: "token_usage", partition: 3, offset: 42 };

    fn now() -> DateTime {
        DateTime::from_millis(1_795_443_550_000)
    }

    #[test]
    fn valid_events_get_ids_derived_fields_and_keep_unknown_ones() {
        let json = br#"{"schema_version":1,"event_id":"01J0","ts":"2026-11-23T14:19:10.250Z","model":"m","prompt_tokens":10,"completion_tokens":5,"latency_ms":12.5,"gpu_index":0,"region":"eu"}"#;
        let d = decode(Kind::TokenUsage, Some(json), AT, 1024, now()).expect("valid");
        assert_eq!(d.id, "01J0");
        let doc = document(&d);
        assert_eq!(doc.get_str("_id"), Ok("01J0"));
        assert_eq!(doc.get_i64("total_tokens"), Ok(15));
        assert_eq!(doc.get_datetime("ts").map(|t| t.timestamp_millis()), Ok(1_795_443_550_250));
        assert_eq!(doc.get_str("region"), Ok("eu"));
        let kafka = doc.get_document("kafka").expect("kafka");
        assert_eq!(
            (kafka.get_str("topic"), kafka.get_i32("partition"), kafka.get_i64("offset")),
            (Ok("token_usage"), Ok(3), Ok(42))
        );
        assert_eq!(doc.get_datetime("ingested_at"), Ok(&now()));
    }

    #[test]
    fn events_without_an_id_are_keyed_by_coordinates() {
        let json = br#"{"schema_version":1,"event_id":"","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0}"#;
        assert_eq!(decode(Kind::TokenUsage, Some(json), AT, 1024, now()).expect("valid").id, "token_usage#3#42");
    }

    #[test]
    fn generated_events_decode_and_malformed_ones_are_rejected_with_a_reason() {
        let mut g = Generator::new(11, 3, 4);
        for _ in 0..100 {
            let (_, p, id) = g.gpu_metric();
            assert_eq!(decode(Kind::GpuMetrics, Some(&p), AT, 4096, now()).expect("gpu").id, id);
            let (_, p, id) = g.token_usage();
            assert_eq!(decode(Kind::TokenUsage, Some(&p), AT, 4096, now()).expect("token").id, id);
        }
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let kind = if i % 2 == 0 { Kind::GpuMetrics } else { Kind::TokenUsage };
            let (_, payload, _) = g.malformed(kind, 5000);
            let rejection = decode(kind, Some(&payload), AT, 4096, now()).expect_err("malformed");
            seen.insert(rejection.code());
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec!["invalid_json", "out_of_range", "oversize", "schema_violation"],
            "negative token counts fail the schema (u64), utilization 1.7 fails the range"
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(decode(Kind::GpuMetrics, None, AT, 10, now()), Err(Rejection::Empty));
        assert_eq!(decode(Kind::GpuMetrics, Some(b""), AT, 10, now()), Err(Rejection::Empty));
        assert_eq!(decode(Kind::GpuMetrics, Some(b"[1,2]"), AT, 10, now()), Err(Rejection::NotAnObject));
        assert_eq!(
            decode(Kind::GpuMetrics, Some(b"\xff\xfe"), AT, 10, now()).map_err(|r| r.code()),
            Err("invalid_json")
        );
        let huge = br#"{"schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0,"extra":{"n":[18446744073709551615]}}"#;
        assert_eq!(decode(Kind::TokenUsage, Some(huge), AT, 1024, now()).map_err(|r| r.code()), Err("out_of_range"));
        let nested = br#"{"schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0,"extra":{"a":[1,2.5,null,true,"s"]}}"#;
        let d = decode(Kind::TokenUsage, Some(nested), AT, 1024, now()).expect("valid");
        let doc = document(&d);
        let a = doc.get_document("extra").and_then(|e| e.get_array("a")).expect("kept");
        assert_eq!(
            a,
            &vec![Bson::Int64(1), Bson::Double(2.5), Bson::Null, Bson::Boolean(true), Bson::String("s".into())]
        );
        // Field names MongoDB would refuse must not reach it (they would block the partition).
        for hostile in [
            r#"{"$where":1}"#.to_owned(),
            r#"{"a":{"$set":1}}"#.to_owned(),
            r#"{"a\u0000b":1}"#.to_owned(),
            format!(r#"{{"deep":{}1{}}}"#, "[".repeat(40), "]".repeat(40)),
        ] {
            let json = format!(
                r#"{{"schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0,"extra":{hostile}}}"#
            );
            assert_eq!(
                decode(Kind::TokenUsage, Some(json.as_bytes()), AT, 4096, now()).map_err(|r| r.code()),
                Err("schema_violation"),
                "{hostile}"
            );
        }
        // Source fields named like derived ones are replaced, never duplicated.
        let shadow = br#"{"schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0,"_id":"forged","kafka":"forged","total_tokens":999}"#;
        let d = decode(Kind::TokenUsage, Some(shadow), AT, 4096, now()).expect("valid");
        let keys: Vec<String> = d.document.iter().map(|e| e.expect("element").0.to_owned()).collect();
        for derived in DERIVED_FIELDS.iter().filter(|f| **f != "processed_by") {
            assert_eq!(keys.iter().filter(|k| k == derived).count(), 1, "{derived} once in {keys:?}");
        }
        let doc = document(&d);
        assert_eq!((doc.get_str("_id"), doc.get_i64("total_tokens")), (Ok("x"), Ok(2)));
        let bad_ts = br#"{"schema_version":1,"event_id":"x","ts":"yesterday","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0}"#;
        assert_eq!(
            decode(Kind::TokenUsage, Some(bad_ts), AT, 1024, now()).map_err(|r| r.code()),
            Err("schema_violation")
        );
    }
}
