//! The decoder against a hostile payload: one 256 KiB object of about 25,000 distinct keys
//! (decoded), the same with the first key repeated at the end (dead-lettered), beside an
//! ordinary event. Figures are printed with the target beside them; nothing is asserted.
//! Run: `cargo bench -p projection-worker --bench decode`.

use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use projection_worker::decode::{Coordinates, decode};
use projection_worker::events::Kind;

const AT: Coordinates<'static> = Coordinates { topic: "token_usage", partition: 0, offset: 0 };
const BASE: &str = r#""schema_version":1,"event_id":"x","ts":"2026-11-23T14:19:10Z","model":"m","prompt_tokens":1,"completion_tokens":1,"latency_ms":1,"gpu_index":0"#;

/// The best and the median of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut all: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    (all[0], all[runs / 2])
}

fn main() {
    // ~25,000 keys in 256 KiB: keys of 7-8 bytes with a small value each.
    let mut keys = Vec::new();
    let mut size = BASE.len() + 16;
    let mut i = 0;
    while size < 256 * 1024 - 16 {
        let field = format!(r#""k{i:05}":{}"#, i % 10);
        size += field.len() + 1;
        keys.push(field);
        i += 1;
    }
    let hostile = format!("{{{BASE},{}}}", keys.join(","));
    let repeated = format!("{{{BASE},{},\"k00000\":1}}", keys.join(","));
    let ordinary = format!("{{{BASE},\"region\":\"eu\"}}");
    let now = DateTime::now();
    let limit = 1 << 20;
    let run = |payload: &str| decode(Kind::TokenUsage, Some(payload.as_bytes()), AT, limit, now);
    assert!(run(&hostile).is_ok() && run(&repeated).is_err() && run(&ordinary).is_ok());

    let (best, median) = time(20, || {
        let _ = run(&hostile);
    });
    let verdict = |d: Duration| if d <= Duration::from_millis(10) { "meets" } else { "MISSES" };
    println!(
        "hostile object: {} keys, {} bytes: decoded in median {median:.2?} (best {best:.2?}; target <= 10 ms: {})",
        keys.len(),
        hostile.len(),
        verdict(median)
    );
    let (best, median) = time(20, || {
        let _ = run(&repeated);
    });
    println!(
        "same, first key repeated at the end: dead-lettered in median {median:.2?} (best {best:.2?}; target <= 10 ms: {})",
        verdict(median)
    );
    let (_, median) = time(2_000, || {
        let _ = run(&ordinary);
    });
    println!("ordinary event ({} bytes): median {median:.2?}", ordinary.len());
}
