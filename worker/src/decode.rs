//! Kafka message -> MongoDB document, or a reason it must be dead-lettered. Validation is
//! strict on what the schema defines and lenient on what it does not (unknown fields are kept).

use std::borrow::Cow;

use mongodb::bson::{DateTime, RawDocumentBuf};

use crate::events::Kind;

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

/// A schema field's JSON type, as the serde types in `events` define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    U32,
    U64,
    /// Any JSON number.
    F64,
    Str,
    /// A string, or absent.
    OptStr,
}

/// `events::GpuMetric`'s fields (its `ts` is read apart: it is replaced by a date).
const GPU_SCHEMA: &[(&str, FieldType)] = &[
    ("schema_version", FieldType::U32),
    ("event_id", FieldType::Str),
    ("host", FieldType::Str),
    ("gpu_index", FieldType::U32),
    ("name", FieldType::Str),
    ("utilization", FieldType::F64),
    ("mem_used_mb", FieldType::U64),
    ("mem_total_mb", FieldType::U64),
    ("power_w", FieldType::F64),
    ("price_per_hour_usd", FieldType::F64),
];

/// `events::TokenUsage`'s fields (and `ts`).
const TOKEN_SCHEMA: &[(&str, FieldType)] = &[
    ("schema_version", FieldType::U32),
    ("event_id", FieldType::Str),
    ("model", FieldType::Str),
    ("prompt_tokens", FieldType::U64),
    ("completion_tokens", FieldType::U64),
    ("latency_ms", FieldType::F64),
    ("gpu_index", FieldType::U32),
    ("host", FieldType::OptStr),
];

const MAX_SCHEMA_FIELDS: usize = 10;
const _: () = assert!(GPU_SCHEMA.len() <= MAX_SCHEMA_FIELDS && TOKEN_SCHEMA.len() <= MAX_SCHEMA_FIELDS);

fn schema(kind: Kind) -> &'static [(&'static str, FieldType)] {
    match kind {
        Kind::GpuMetrics => GPU_SCHEMA,
        Kind::TokenUsage => TOKEN_SCHEMA,
    }
}

/// The schema fields seen at the top level while writing: where each value's BSON bytes
/// start in the buffer, and its element type.
#[derive(Debug)]
struct Seen<'p> {
    schema: &'static [(&'static str, FieldType)],
    values: [Option<(usize, u8)>; MAX_SCHEMA_FIELDS],
    ts: Option<Cow<'p, str>>,
}

/// A schema field's value, read back from the written BSON and checked against its type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field<'b> {
    Int(i64),
    Double(f64),
    Str(&'b str),
    Absent,
}

impl<'b> Field<'b> {
    fn f64(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::Double(d) => d,
            _ => f64::NAN,
        }
    }

    fn u64(self) -> u64 {
        match self {
            Self::Int(i) => u64::try_from(i).unwrap_or(0),
            _ => 0,
        }
    }

    fn text(self) -> &'b str {
        match self {
            Self::Str(s) => s,
            _ => "",
        }
    }
}

impl<'p> Seen<'p> {
    fn new(kind: Kind) -> Self {
        Self { schema: schema(kind), values: [None; MAX_SCHEMA_FIELDS], ts: None }
    }

    /// Reads `name` back from `buf` and checks it has the schema's type.
    fn field<'b>(&self, buf: &'b [u8], name: &str) -> Result<Field<'b>, Rejection> {
        let Some(index) = self.schema.iter().position(|(n, _)| *n == name) else {
            return Ok(Field::Absent);
        };
        let expected = self.schema[index].1;
        let Some((at, kind)) = self.values[index] else {
            return match expected {
                FieldType::OptStr => Ok(Field::Absent),
                _ => Err(Rejection::Schema(format!("missing field `{name}`"))),
            };
        };
        let wrong = |what: &str| Rejection::Schema(format!("invalid type for `{name}`: expected {what}"));
        let int = || buf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes);
        match (expected, kind) {
            (FieldType::U32, bson_writer::INT64) => match int() {
                Some(i) if (0..=i64::from(u32::MAX)).contains(&i) => Ok(Field::Int(i)),
                _ => Err(wrong("an integer in 0..=4294967295")),
            },
            (FieldType::U64, bson_writer::INT64) => match int() {
                Some(i) if i >= 0 => Ok(Field::Int(i)),
                _ => Err(wrong("a non-negative integer")),
            },
            (FieldType::F64, bson_writer::INT64) => int().map(Field::Int).ok_or_else(|| wrong("a number")),
            (FieldType::F64, bson_writer::DOUBLE) => {
                int().map(|bits| Field::Double(f64::from_bits(bits as u64))).ok_or_else(|| wrong("a number"))
            }
            (FieldType::Str | FieldType::OptStr, bson_writer::STRING) => {
                let len = buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(i32::from_le_bytes);
                let text = len
                    .and_then(|len| usize::try_from(len).ok())
                    .and_then(|len| buf.get(at + 4..at + 4 + len.saturating_sub(1)))
                    .and_then(|b| std::str::from_utf8(b).ok());
                text.map(Field::Str).ok_or_else(|| wrong("a string"))
            }
            (FieldType::U32 | FieldType::U64, _) => Err(wrong("an integer")),
            (FieldType::F64, _) => Err(wrong("a number")),
            (FieldType::Str | FieldType::OptStr, _) => Err(wrong("a string")),
        }
    }
}

/// Every schema field present with its type, then the value ranges; returns the event id and
/// the derived total, if any.
fn check(kind: Kind, seen: &Seen<'_>, buf: &[u8]) -> Result<(String, Option<i64>), Rejection> {
    let field = |name: &str| seen.field(buf, name);
    for (name, _) in seen.schema {
        field(name)?;
    }
    let total_tokens = match kind {
        Kind::GpuMetrics => {
            finite_within("utilization", field("utilization")?.f64(), 0.0, 1.0)?;
            finite_within("power_w", field("power_w")?.f64(), 0.0, 100_000.0)?;
            finite_within("price_per_hour_usd", field("price_per_hour_usd")?.f64(), 0.0, 1_000_000.0)?;
            let (used, total) = (field("mem_used_mb")?.u64(), field("mem_total_mb")?.u64());
            if used > total {
                return Err(Rejection::OutOfRange(format!("mem_used_mb {used} > mem_total_mb {total}")));
            }
            if field("host")?.text().is_empty() {
                return Err(Rejection::Schema("host is empty".into()));
            }
            None
        }
        Kind::TokenUsage => {
            finite_within("latency_ms", field("latency_ms")?.f64(), 0.0, 86_400_000.0)?;
            if field("model")?.text().is_empty() {
                return Err(Rejection::Schema("model is empty".into()));
            }
            let total = field("prompt_tokens")?.u64().checked_add(field("completion_tokens")?.u64());
            Some(
                total
                    .and_then(|t| i64::try_from(t).ok())
                    .ok_or_else(|| Rejection::OutOfRange("token counts overflow".into()))?,
            )
        }
    };
    Ok((field("event_id")?.text().to_owned(), total_tokens))
}

/// Why a pass over the payload failed: broken JSON anywhere wins (the pass may have stopped
/// before it), then a check the writer made, then a non-object, then the schema.
fn parse_rejection(e: &serde_json::Error, payload: &[u8], checked: Option<Rejection>) -> Rejection {
    if e.is_syntax() || e.is_eof() {
        return Rejection::InvalidJson(e.to_string());
    }
    if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
        return Rejection::InvalidJson(syntax.to_string());
    }
    if let Some(rejection) = checked {
        return rejection;
    }
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Rejection::NotAnObject;
    }
    Rejection::Schema(e.to_string())
}

/// JSON -> BSON bytes in one streaming pass, no tree in between: an element's type byte is
/// patched in once its value has been seen. Integers become Int64 and other numbers Double;
/// an integer beyond i64 has no BSON form and is rejected, as are field names MongoDB would
/// refuse, names given twice (which value is meant is ambiguous), and nesting past MAX_DEPTH.
mod bson_writer {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{DERIVED_FIELDS, MAX_DEPTH, Rejection, Seen, check_key};

    pub(super) const DOUBLE: u8 = 0x01;
    pub(super) const STRING: u8 = 0x02;
    const DOCUMENT: u8 = 0x03;
    const ARRAY: u8 = 0x04;
    const BOOLEAN: u8 = 0x08;
    const NULL: u8 = 0x0A;
    pub(super) const INT64: u8 = 0x12;
    const DATETIME: u8 = 0x09;
    const INT32: u8 = 0x10;

    /// The document being written and, once a check failed, why.
    pub(super) struct State<'b> {
        pub buf: &'b mut Vec<u8>,
        pub rejection: Option<Rejection>,
    }

    impl State<'_> {
        fn reject<E: de::Error>(&mut self, rejection: Rejection) -> E {
            let error = E::custom(&rejection);
            self.rejection.get_or_insert(rejection);
            error
        }
    }

    /// Writes the elements of the top-level object in `payload` to `state.buf` (derived fields
    /// skipped), noting in `seen` where the schema's fields are and what `ts` says.
    pub(super) fn write_fields<'p>(
        payload: &'p [u8],
        state: &mut State<'_>,
        seen: &mut Seen<'p>,
    ) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        de::Deserializer::deserialize_map(&mut de, Fields { state, depth: 0, seen: Some(seen) })?;
        de.end()
    }

    /// The fields of an object whose values sit at `depth + 1`, written straight to the buffer;
    /// `seen` only for the top level.
    struct Fields<'s, 'b, 'p> {
        state: &'s mut State<'b>,
        depth: usize,
        seen: Option<&'s mut Seen<'p>>,
    }

    impl<'de> Visitor<'de> for Fields<'_, '_, 'de> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            // The names written so far, to catch a repeated one.
            let mut names = Names::default();
            while let Some(name) = map.next_key_seed(Name)? {
                if let Err(r) = check_key(&name) {
                    return Err(self.state.reject(r));
                }
                if let Some(seen) = self.seen.as_deref_mut()
                    && DERIVED_FIELDS.contains(&&*name)
                {
                    if name == "ts" {
                        if seen.ts.is_some() {
                            return Err(self.state.reject(Rejection::Schema("field name \"ts\" given twice".into())));
                        }
                        seen.ts = Some(map.next_value_seed(Name)?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    continue;
                }
                let buf = &mut *self.state.buf;
                if names.contains(buf, name.as_bytes()) {
                    return Err(self.state.reject(Rejection::Schema(format!("field name {name:?} given twice"))));
                }
                let element = buf.len();
                buf.push(0);
                names.insert(buf, buf.len(), name.len(), name.as_bytes());
                buf.extend_from_slice(name.as_bytes());
                buf.push(0);
                let value_at = buf.len();
                let kind = map.next_value_seed(Value { state: &mut *self.state, depth: self.depth + 1 })?;
                self.state.buf[element] = kind;
                if let Some(seen) = self.seen.as_deref_mut()
                    && let Some(index) = seen.schema.iter().position(|(n, _)| *n == name)
                {
                    seen.values[index] = Some((value_at, kind));
                }
            }
            Ok(())
        }
    }

    /// The names of one object written so far, as (offset, length) in the output buffer: a
    /// scan while they are few (every real event), a hash index past that, so an object with
    /// tens of thousands of keys costs one lookup per key, not a scan. The index is keyed
    /// (SipHash, a random key per process), so colliding names cannot be crafted; a true
    /// 64-bit collision falls back to a scan.
    #[derive(Default)]
    struct Names {
        list: Vec<(usize, usize)>,
        /// name hash -> the first name with it, by position in `list`.
        index: Option<(std::collections::HashMap<u64, usize>, std::hash::RandomState)>,
    }

    /// Past this many names a scan costs more than hashing.
    const SCAN_LIMIT: usize = 16;

    impl Names {
        fn contains(&self, buf: &[u8], name: &[u8]) -> bool {
            let same = |&(at, len): &(usize, usize)| &buf[at..at + len] == name;
            match &self.index {
                None => self.list.iter().any(same),
                Some((index, keys)) => match index.get(&std::hash::BuildHasher::hash_one(keys, name)) {
                    None => false,
                    Some(&i) if same(&self.list[i]) => true,
                    Some(_) => self.list.iter().any(same),
                },
            }
        }

        /// Adds the name about to be written at `at` (earlier names are already in `buf`).
        fn insert(&mut self, buf: &[u8], at: usize, len: usize, name: &[u8]) {
            self.list.push((at, len));
            let last = self.list.len() - 1;
            if self.index.is_none() && self.list.len() > SCAN_LIMIT {
                let keys = std::hash::RandomState::new();
                let mut index = std::collections::HashMap::with_capacity(self.list.len() * 4);
                for (i, &(a, l)) in self.list[..last].iter().enumerate() {
                    index.entry(std::hash::BuildHasher::hash_one(&keys, &buf[a..a + l])).or_insert(i);
                }
                self.index = Some((index, keys));
            }
            if let Some((index, keys)) = &mut self.index {
                index.entry(std::hash::BuildHasher::hash_one(&*keys, name)).or_insert(last);
            }
        }
    }

    /// A field name, borrowed from the payload when it has no escapes.
    struct Name;

    impl<'de> DeserializeSeed<'de> for Name {
        type Value = Cow<'de, str>;

        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Name {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }

    /// One value at `depth`: writes its BSON bytes and returns its element type.
    struct Value<'s, 'b> {
        state: &'s mut State<'b>,
        depth: usize,
    }

    impl<'de> DeserializeSeed<'de> for Value<'_, '_> {
        type Value = u8;

        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u8, D::Error> {
            if self.depth > MAX_DEPTH {
                let r = Rejection::Schema(format!("nested deeper than {MAX_DEPTH} levels"));
                return Err(self.state.reject(r));
            }
            deserializer.deserialize_any(self)
        }
    }

    /// Opens an embedded document; `close` writes its length.
    fn open(buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]);
        start
    }

    fn close<E: de::Error>(state: &mut State<'_>, start: usize) -> Result<(), E> {
        state.buf.push(0);
        let size = state.buf.len() - start;
        let Ok(len) = i32::try_from(size) else {
            return Err(state.reject(Rejection::Oversize { size, max: i32::MAX as usize }));
        };
        state.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    impl<'de> Visitor<'de> for Value<'_, '_> {
        type Value = u8;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_unit<E: de::Error>(self) -> Result<u8, E> {
            Ok(NULL)
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<u8, E> {
            self.state.buf.push(u8::from(v));
            Ok(BOOLEAN)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
            self.state.buf.extend_from_slice(&v.to_le_bytes());
            Ok(INT64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
            match i64::try_from(v) {
                Ok(v) => self.visit_i64(v),
                Err(_) => Err(self.state.reject(Rejection::OutOfRange(format!("{v} does not fit a BSON integer")))),
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u8, E> {
            self.state.buf.extend_from_slice(&v.to_le_bytes());
            Ok(DOUBLE)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u8, E> {
            let Ok(len) = i32::try_from(v.len() + 1) else {
                return Err(self.state.reject(Rejection::Oversize { size: v.len(), max: i32::MAX as usize }));
            };
            let buf = &mut *self.state.buf;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(v.as_bytes());
            buf.push(0);
            Ok(STRING)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u8, A::Error> {
            let start = open(self.state.buf);
            let mut index = 0usize;
            loop {
                // An array is a document keyed "0", "1", ...
                let element = self.state.buf.len();
                self.state.buf.push(0);
                self.state.buf.extend_from_slice(index.to_string().as_bytes());
                self.state.buf.push(0);
                match seq.next_element_seed(Value { state: &mut *self.state, depth: self.depth + 1 })? {
                    Some(kind) => self.state.buf[element] = kind,
                    None => {
                        self.state.buf.truncate(element);
                        break;
                    }
                }
                index += 1;
            }
            close(self.state, start)?;
            Ok(ARRAY)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u8, A::Error> {
            let start = open(self.state.buf);
            Fields { state: &mut *self.state, depth: self.depth, seen: None }.visit_map(map)?;
            close(self.state, start)?;
            Ok(DOCUMENT)
        }
    }

    fn element(buf: &mut Vec<u8>, kind: u8, name: &str) {
        buf.push(kind);
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
    }

    /// Appends a string element (the caller knows `value` fits an i32 length).
    pub(super) fn string(buf: &mut Vec<u8>, name: &str, value: &str) {
        element(buf, STRING, name);
        buf.extend_from_slice(&(value.len() as i32 + 1).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(0);
    }

    pub(super) fn int64(buf: &mut Vec<u8>, name: &str, value: i64) {
        element(buf, INT64, name);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn int32(buf: &mut Vec<u8>, name: &str, value: i32) {
        element(buf, INT32, name);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn datetime(buf: &mut Vec<u8>, name: &str, millis: i64) {
        element(buf, DATETIME, name);
        buf.extend_from_slice(&millis.to_le_bytes());
    }

    /// Starts an embedded document element; `end_document` finishes it.
    pub(super) fn document(buf: &mut Vec<u8>, name: &str) -> usize {
        element(buf, DOCUMENT, name);
        open(buf)
    }

    /// Finishes a document begun at `start` (an embedded one, or the whole, started at 0).
    pub(super) fn end_document(buf: &mut Vec<u8>, start: usize) {
        buf.push(0);
        let len = (buf.len() - start) as i32;
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
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
    // One pass: the source object's fields straight to BSON, unknown ones included, noting
    // the schema's; then the checks on what was noted.
    let mut fields = Vec::with_capacity(payload.len() + 64);
    let mut seen = Seen::new(kind);
    let mut state = bson_writer::State { buf: &mut fields, rejection: None };
    if let Err(e) = bson_writer::write_fields(payload, &mut state, &mut seen) {
        let checked = state.rejection.take();
        return Err(parse_rejection(&e, payload, checked));
    }
    let (event_id, total_tokens) = check(kind, &seen, &fields)?;
    let ts = parse_ts(seen.ts.as_deref().ok_or_else(|| Rejection::Schema("missing field `ts`".into()))?)?;
    let id = if event_id.is_empty() { at.id() } else { event_id };

    // `_id` first (mongod would move it there), the source fields, what the projection
    // derives; room to spare for the caller's stamp. Sizes are bounded by `max_bytes`.
    let mut buf = Vec::with_capacity(id.len() + fields.len() + at.topic.len() + 256);
    buf.extend_from_slice(&[0; 4]);
    bson_writer::string(&mut buf, "_id", &id);
    buf.extend_from_slice(&fields);
    bson_writer::datetime(&mut buf, "ts", ts.timestamp_millis());
    if let Some(total) = total_tokens {
        bson_writer::int64(&mut buf, "total_tokens", total);
    }
    let kafka = bson_writer::document(&mut buf, "kafka");
    bson_writer::string(&mut buf, "topic", at.topic);
    bson_writer::int32(&mut buf, "partition", at.partition);
    bson_writer::int64(&mut buf, "offset", at.offset);
    bson_writer::end_document(&mut buf, kafka);
    bson_writer::datetime(&mut buf, "ingested_at", ingested_at.timestamp_millis());
    bson_writer::end_document(&mut buf, 0);
    let document =
        RawDocumentBuf::from_bytes(buf).map_err(|e| Rejection::Schema(format!("not representable as BSON: {e}")))?;
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

    use mongodb::bson::{RawArrayBuf, RawBson};
    use serde_json::Value;

    /// The tree-based conversion the streaming writer replaced: parse to a `Value`, then BSON.
    /// Kept as the reference the writer must match byte for byte.
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

    /// What `decode` wrote before the streaming writer, built from the tree with the bson
    /// crate's own encoder: the fields, then the derived tail.
    fn reference(payload: &[u8], id: &str) -> RawDocumentBuf {
        let Value::Object(fields) = serde_json::from_slice(payload).expect("json") else { panic!("object") };
        let mut document = RawDocumentBuf::new();
        document.append("_id", id);
        for (key, value) in fields.clone() {
            if !DERIVED_FIELDS.contains(&key.as_str()) {
                document.append(key, to_raw(value, 1).expect("convertible"));
            }
        }
        document.append("ts", parse_ts(fields["ts"].as_str().expect("ts")).expect("ts"));
        if let (Some(p), Some(c)) = (fields.get("prompt_tokens"), fields.get("completion_tokens")) {
            document.append("total_tokens", p.as_i64().expect("p") + c.as_i64().expect("c"));
        }
        document.append(
            "kafka",
            mongodb::bson::rawdoc! { "topic": AT.topic, "partition": AT.partition, "offset": AT.offset },
        );
        document.append("ingested_at", now());
        document
    }

    #[test]
    fn streaming_writer_matches_the_tree_conversion_byte_for_byte() {
        let mut g = Generator::new(5, 4, 8);
        let extras = [
            r#""region":"eu-west","tags":["a","b\"q\u00e9",1,-2,3.5e3,null,true,false,[],{}],"nested":{"x":{"y":[{"z":1}]}},"big":9223372036854775807,"neg":-9223372036854775808,"float":1e308"#,
            r#""unicode \u00fc key":"\ud83d\ude00","empty":"","zero":0,"frac":-0.0"#,
            r#""deep":[[[[[[[[[[1]]]]]]]]]]"#,
        ];
        for i in 0..300 {
            let (kind, (_, payload, _)) =
                if i % 2 == 0 { (Kind::GpuMetrics, g.gpu_metric()) } else { (Kind::TokenUsage, g.token_usage()) };
            let mut payload = String::from_utf8(payload).expect("utf-8");
            if i % 3 != 0 {
                payload.pop();
                payload.push(',');
                payload.push_str(extras[i % extras.len()]);
                payload.push('}');
            }
            let d = decode(kind, Some(payload.as_bytes()), AT, 64 * 1024, now()).expect(&payload);
            let expected = reference(payload.as_bytes(), &d.id);
            assert_eq!(d.document.as_bytes(), expected.as_bytes(), "{payload}");
        }
    }

    #[test]
    fn every_schema_field_is_required_and_typed() {
        let mut g = Generator::new(9, 2, 2);
        for kind in [Kind::GpuMetrics, Kind::TokenUsage] {
            let (_, payload, _) = if kind == Kind::GpuMetrics { g.gpu_metric() } else { g.token_usage() };
            let Value::Object(fields) = serde_json::from_slice(&payload).expect("json") else { panic!("object") };
            for name in fields.keys() {
                let mut without = fields.clone();
                without.remove(name);
                let json = serde_json::to_vec(&without).expect("json");
                let result = decode(kind, Some(&json), AT, 4096, now()).map(|d| d.id);
                // Only the token event's host is optional.
                if kind == Kind::TokenUsage && name == "host" {
                    assert!(result.is_ok(), "{name}: {result:?}");
                } else {
                    assert_eq!(result.map_err(|r| r.code()), Err("schema_violation"), "without {name}");
                }
                let mut mistyped = fields.clone();
                mistyped.insert(name.clone(), Value::from(vec![Value::from(1)]));
                let json = serde_json::to_vec(&mistyped).expect("json");
                assert_eq!(
                    decode(kind, Some(&json), AT, 4096, now()).map_err(|r| r.code()),
                    Err("schema_violation"),
                    "{name} as an array"
                );
            }
        }
    }

    #[test]
    fn ambiguous_or_broken_json_is_rejected_with_the_right_reason() {
        let base = r#""schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0"#;
        let cases = [
            // A repeated name: which value is meant is ambiguous, at any level.
            (format!(r#"{{{base},"region":"a","region":"b"}}"#), "schema_violation"),
            (format!(r#"{{{base},"o":{{"k":1,"k":2}}}}"#), "schema_violation"),
            (format!(r#"{{{base},"ts":"2026-11-23T14:19:11Z"}}"#), "schema_violation"),
            // A type mismatch first, broken JSON after it: the JSON decides.
            (r#"{"schema_version":"one","event_id":"x" "#.to_owned(), "invalid_json"),
            (format!(r#"{{{base}}} trailing"#), "invalid_json"),
            (format!(r#"[{{{base}}}]"#), "not_an_object"),
            (r#""a string""#.to_owned(), "not_an_object"),
            (format!(r#"{{{base},"n":18446744073709551615}}"#), "out_of_range"),
        ];
        for (json, code) in cases {
            assert_eq!(
                decode(Kind::TokenUsage, Some(json.as_bytes()), AT, 4096, now()).map_err(|r| r.code()),
                Err(code),
                "{json}"
            );
        }
        // The same name in different objects is fine; arrays keep their order.
        let json = format!(r#"{{{base},"a":{{"k":1}},"b":{{"k":2}},"l":[3,2,1]}}"#);
        let doc = document(&decode(Kind::TokenUsage, Some(json.as_bytes()), AT, 4096, now()).expect("valid"));
        assert_eq!(doc.get_document("b").and_then(|b| b.get_i64("k")), Ok(2));
        assert_eq!(doc.get_array("l").map(|l| l.len()), Ok(3));
    }

    /// An object with `keys` distinct keys `k0..`, plus `extra` (already comma-led).
    fn wide(keys: usize, extra: &str) -> String {
        let base = r#""schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0"#;
        let fields: Vec<String> = (0..keys).map(|i| format!(r#""k{i}":1"#)).collect();
        format!(r#"{{{base},"o":{{{}{extra}}}}}"#, fields.join(","))
    }

    #[test]
    fn repeated_names_are_caught_in_wide_objects_wherever_they_are() {
        // Past the scan limit the index answers: repeats of the first, a middle and the last
        // name, and a name that only shares a prefix (not a repeat).
        for keys in [3, 16, 17, 40, 25_000] {
            let limit = 1 << 20;
            for (extra, code) in [
                (",\"k0\":2".to_owned(), Some("schema_violation")),
                (format!(",\"k{}\":2", keys / 2), Some("schema_violation")),
                (format!(",\"k{}\":2", keys - 1), Some("schema_violation")),
                (format!(",\"k{}0\":2", keys), None),
            ] {
                let json = wide(keys, &extra);
                let got =
                    decode(Kind::TokenUsage, Some(json.as_bytes()), AT, limit, now()).map(|_| ()).map_err(|r| r.code());
                match code {
                    Some(code) => assert_eq!(got, Err(code), "{keys} keys, extra {extra}"),
                    None => assert_eq!(got, Ok(()), "{keys} keys, extra {extra}"),
                }
            }
        }
        // Every key kept, in order.
        let json = wide(1_000, "");
        let doc = document(&decode(Kind::TokenUsage, Some(json.as_bytes()), AT, 1 << 20, now()).expect("valid"));
        let o = doc.get_document("o").expect("o");
        assert_eq!(o.len(), 1_000);
        assert_eq!(o.keys().nth(999).map(String::as_str), Some("k999"));
    }

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
