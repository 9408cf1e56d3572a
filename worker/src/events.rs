//! The pipeline's two event types, compatible with the original pipeline's JSON (new fields
//! optional, unknown fields kept), and realistic generators for the producer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SCHEMA_VERSION: u32 = 1;

/// One GPU's telemetry sample. Key: `"{host}:{gpu_index}"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuMetric {
    pub schema_version: u32,
    pub event_id: String,
    pub ts: String,
    pub host: String,
    pub gpu_index: u32,
    pub name: String,
    /// 0..=1
    pub utilization: f64,
    pub mem_used_mb: u64,
    pub mem_total_mb: u64,
    pub power_w: f64,
    pub price_per_hour_usd: f64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One inference request's token accounting. Key: the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub schema_version: u32,
    pub event_id: String,
    pub ts: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: f64,
    pub gpu_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    GpuMetrics,
    TokenUsage,
}

/// A small deterministic PRNG (xorshift64*): reproducible event streams from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

const GPUS: [(&str, u64, f64, f64); 3] = [
    ("NVIDIA H100 80GB HBM3", 81_559, 700.0, 4.76),
    ("NVIDIA A100-SXM4-80GB", 81_920, 400.0, 2.21),
    ("NVIDIA L4", 23_034, 72.0, 0.81),
];
const MODELS: [&str; 4] =
    ["llama-3.1-70b-instruct", "llama-3.1-8b-instruct", "mistral-7b-instruct", "qwen2.5-32b-instruct"];

/// Produces the fleet's events: `hosts` x `gpus_per_host` GPUs, each with a stable type.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    hosts: u32,
    gpus_per_host: u32,
}

fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

impl Generator {
    pub fn new(seed: u64, hosts: u32, gpus_per_host: u32) -> Self {
        Self { rng: Rng::new(seed), hosts: hosts.max(1), gpus_per_host: gpus_per_host.max(1) }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn host(&self, i: u32) -> String {
        format!("gpu-node-{i:03}")
    }

    /// (key, JSON payload, event_id).
    pub fn gpu_metric(&mut self) -> (String, Vec<u8>, String) {
        let host_i = self.rng.below(u64::from(self.hosts)) as u32;
        let gpu_index = self.rng.below(u64::from(self.gpus_per_host)) as u32;
        let (name, mem_total_mb, max_power, price) = GPUS[(host_i as usize) % GPUS.len()];
        let utilization = (self.rng.unit() * 100.0).round() / 100.0;
        let event = GpuMetric {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::now_v7().to_string(),
            ts: now_rfc3339(),
            host: self.host(host_i),
            gpu_index,
            name: name.to_owned(),
            utilization,
            mem_used_mb: (mem_total_mb as f64 * (0.1 + 0.85 * self.rng.unit())) as u64,
            mem_total_mb,
            power_w: ((max_power * (0.15 + 0.85 * utilization)) * 10.0).round() / 10.0,
            price_per_hour_usd: price,
            extra: Map::new(),
        };
        let key = format!("{}:{}", event.host, event.gpu_index);
        let id = event.event_id.clone();
        (key, serde_json::to_vec(&event).unwrap_or_default(), id)
    }

    pub fn token_usage(&mut self) -> (String, Vec<u8>, String) {
        let model = MODELS[self.rng.below(MODELS.len() as u64) as usize];
        let prompt_tokens = 20 + self.rng.below(4000);
        let completion_tokens = 1 + self.rng.below(1200);
        let host_i = self.rng.below(u64::from(self.hosts)) as u32;
        let event = TokenUsage {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::now_v7().to_string(),
            ts: now_rfc3339(),
            model: model.to_owned(),
            prompt_tokens,
            completion_tokens,
            latency_ms: ((30.0 + completion_tokens as f64 * (8.0 + 20.0 * self.rng.unit())) * 10.0).round() / 10.0,
            gpu_index: self.rng.below(u64::from(self.gpus_per_host)) as u32,
            host: Some(self.host(host_i)),
            extra: Map::new(),
        };
        let id = event.event_id.clone();
        (model.to_owned(), serde_json::to_vec(&event).unwrap_or_default(), id)
    }

    /// A payload the worker must dead-letter: bad JSON, a schema violation, or oversize.
    pub fn malformed(&mut self, kind: Kind, oversize_bytes: usize) -> (String, Vec<u8>, &'static str) {
        let (key, good, _) = match kind {
            Kind::GpuMetrics => self.gpu_metric(),
            Kind::TokenUsage => self.token_usage(),
        };
        match self.rng.below(4) {
            0 => (key, b"{\"schema_version\": 1, \"event_id\": ".to_vec(), "invalid_json"),
            1 => {
                let mut v: Value = serde_json::from_slice(&good).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.remove(if kind == Kind::GpuMetrics { "host" } else { "model" });
                }
                (key, serde_json::to_vec(&v).unwrap_or_default(), "missing_field")
            }
            2 => {
                let mut v: Value = serde_json::from_slice(&good).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    match kind {
                        Kind::GpuMetrics => o.insert("utilization".into(), Value::from(1.7)),
                        Kind::TokenUsage => o.insert("prompt_tokens".into(), Value::from(-5)),
                    };
                }
                (key, serde_json::to_vec(&v).unwrap_or_default(), "out_of_range")
            }
            _ => {
                let mut v: Value = serde_json::from_slice(&good).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("padding".into(), Value::from("x".repeat(oversize_bytes)));
                }
                (key, serde_json::to_vec(&v).unwrap_or_default(), "oversize")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_round_trip_and_look_real() {
        let mut g = Generator::new(7, 4, 8);
        for _ in 0..200 {
            let (key, payload, id) = g.gpu_metric();
            let e: GpuMetric = serde_json::from_slice(&payload).expect("gpu metric");
            assert_eq!(key, format!("{}:{}", e.host, e.gpu_index));
            assert_eq!(e.event_id, id);
            assert!((0.0..=1.0).contains(&e.utilization));
            assert!(e.mem_used_mb <= e.mem_total_mb && e.gpu_index < 8);
            assert!(time::OffsetDateTime::parse(&e.ts, &time::format_description::well_known::Rfc3339).is_ok());
            let (key, payload, _) = g.token_usage();
            let t: TokenUsage = serde_json::from_slice(&payload).expect("token usage");
            assert_eq!(key, t.model);
            assert!(t.prompt_tokens >= 20 && t.completion_tokens >= 1 && t.latency_ms > 0.0);
        }
    }

    #[test]
    fn unknown_fields_are_kept() {
        let json = r#"{"schema_version":2,"event_id":"e","ts":"2026-11-23T00:00:00Z","model":"m","prompt_tokens":1,"completion_tokens":2,"latency_ms":3.5,"gpu_index":0,"region":"eu-west-1"}"#;
        let t: TokenUsage = serde_json::from_str(json).expect("parses");
        assert_eq!(t.extra.get("region"), Some(&Value::from("eu-west-1")));
        assert!(serde_json::to_string(&t).expect("serialises").contains("\"region\":\"eu-west-1\""));
    }

    #[test]
    fn malformed_events_cover_every_kind() {
        let mut g = Generator::new(3, 2, 2);
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..64 {
            let kind = if i % 2 == 0 { Kind::GpuMetrics } else { Kind::TokenUsage };
            let (_, payload, what) = g.malformed(kind, 1024);
            kinds.insert(what);
            if what == "oversize" {
                assert!(payload.len() > 1024);
            }
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }
}
