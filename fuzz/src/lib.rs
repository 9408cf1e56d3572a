//! The properties the fuzz targets check, one function per parser of outside input. The
//! targets call them with libFuzzer's inputs; `tests/tests/fuzz_corpus.rs` replays the
//! committed corpora and every past finding through them in the normal test run.

use hpa_model::Spec;
use hpa_model::quantity::Quantity;
use lag_adapter::authz::Attributes;
use lag_adapter::selector::Selector;
use lag_adapter::targets::{TargetsFile, is_valid_metric_name};
use mongodb::bson::DateTime;
use mongodb::bson::{RawBsonRef, RawDocument};
use projection_worker::decode::{Coordinates, DERIVED_FIELDS, decode};
use projection_worker::events::Kind;

/// Label selectors: no panic; what parses prints back to something that parses the same.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selector) = Selector::parse(text) {
        let printed = selector.to_string();
        let again = Selector::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} from {text:?}: {e}"));
        assert_eq!(again.to_string(), printed, "printing is stable");
    }
}

/// Quantities: parse, print, parse again gives the same value.
pub fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(q) = Quantity::parse(text) {
        let printed = q.to_string();
        let again = Quantity::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} from {text:?}: {e}"));
        assert_eq!(again.milli_value(), q.milli_value(), "{text:?} -> {printed:?}");
    }
}

/// Metric names and request paths: a valid name is one path segment; the authorization
/// attributes of a metric path name a namespace and a single-segment metric.
pub fn metric_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if is_valid_metric_name(text) {
        assert!(!text.contains('/') && text != "." && text != "..", "{text:?}");
    }
    let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{text}");
    if let Attributes::Metric { namespace, metric } = Attributes::of("GET", &path) {
        assert!(!namespace.is_empty() && !metric.is_empty() && !metric.contains('/'));
    }
}

/// Kafka payloads: a document or a rejection with a reason, for either topic. A document is
/// well-formed BSON throughout (the streaming writer builds its bytes by hand), with `_id`
/// first and the derived fields once each.
pub fn event(data: &[u8]) {
    let at = Coordinates { topic: "gpu_metrics", partition: 0, offset: 7 };
    for kind in [Kind::GpuMetrics, Kind::TokenUsage] {
        if let Ok(decoded) = decode(kind, Some(data), at, 256 * 1024, DateTime::from_millis(0)) {
            let document = decoded.document.to_document().expect("well-formed BSON");
            assert_eq!(document.keys().next().map(String::as_str), Some("_id"));
            assert_eq!(document.get_str("_id"), Ok(decoded.id.as_str()));
            for derived in ["ts", "kafka", "ingested_at"] {
                assert!(document.contains_key(derived), "{derived}");
            }
            // Every name once in every embedded document, checked on the raw bytes (a repeat
            // would make MongoDB keep one value of two, silently).
            unique_names(&decoded.document);
            // Against a tree parser: what the streaming decoder accepts is a JSON object whose
            // own fields are exactly the document's, less the derived ones.
            let tree: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(data).expect("accepted input parses as a JSON object");
            let mut source: Vec<&str> =
                tree.keys().map(String::as_str).filter(|k| !DERIVED_FIELDS.contains(k)).collect();
            let mut written: Vec<&str> =
                document.keys().map(String::as_str).filter(|k| !DERIVED_FIELDS.contains(k)).collect();
            source.sort_unstable();
            written.sort_unstable();
            assert_eq!(source, written, "the source fields, all and only them");
        }
    }
}

/// Asserts that no document in `document` (recursively, arrays included) names a field twice.
fn unique_names(document: &RawDocument) {
    let mut names = std::collections::HashSet::new();
    for element in document {
        let (name, value) = element.expect("well-formed element");
        assert!(names.insert(name.to_owned()), "field {name:?} twice");
        nested(value);
    }
}

fn nested(value: RawBsonRef<'_>) {
    match value {
        RawBsonRef::Document(d) => unique_names(d),
        RawBsonRef::Array(a) => {
            for v in a {
                nested(v.expect("well-formed array element"));
            }
        }
        _ => {}
    }
}

/// Configuration files: the adapter's scaling targets and lag-tuner's HPA manifests.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = TargetsFile::parse(text, "fuzz");
    let _ = Spec::from_yaml("fuzz", text);
}
