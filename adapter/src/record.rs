//! What the adapter served, kept: per scaling target, a bounded time series of the served value,
//! the total lag, the lag of every partition and the replica count. The replica count comes
//! from the HPAs that scale on the target (read from the cluster when the adapter can), else
//! from the group's members.
//!
//! `GET /record/{target}?format=csv|jsonl` on the metrics port exports it, and `lag-tuner
//! record` saves it. The CSV's first three columns (`seconds,lag,replicas`) are what
//! `lag-tuner simulate --lag-file` reads.
//!
//! Beside it, every answer to an external-metrics query: when, to whom, for which metric and
//! selector, and the sum of the values (what the HPA controller sums and scales on).
//! `GET /answers?metric=NAME` exports them: the exact samples the HPA read, to replay its
//! decisions (`lag-tuner record --answers`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// 12 hours at the default 5 s poll interval.
pub const DEFAULT_POINTS: usize = 8640;
/// About 10 hours of one HPA syncing every 15 s (shared by every metric and asker).
pub const ANSWERS_KEPT: usize = 2400;

/// One answered external-metrics query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Unix time of the answer.
    pub at: f64,
    /// Who asked (the HPA controller: `system:serviceaccount:kube-system:horizontal-pod-autoscaler`);
    /// empty without authentication.
    pub user: String,
    pub namespace: String,
    pub metric: String,
    /// The label selector as asked (empty: none).
    pub selector: String,
    /// Sum of the items' values in milli-units, as the HPA sums them.
    pub value_milli: i128,
    pub items: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Unix time of the collection cycle.
    pub at: f64,
    /// The value served to the HPA (after the cap).
    pub served: f64,
    pub total_lag: u64,
    pub members: Option<u32>,
    /// The group's rebalance protocol (classic, consumer, share...).
    pub protocol: crate::collector::GroupProtocol,
    /// Inputs the cycle could not read (their last values are in this point).
    pub stale_inputs: usize,
    /// The HPA's current replicas, when known from the cluster.
    pub replicas: Option<u32>,
    /// topic -> partition -> lag.
    pub partitions: BTreeMap<String, BTreeMap<i32, u64>>,
    /// Sum of the target's log-end offsets: everything produced to it so far (with the lag,
    /// what the group processed between two points; `lag-tuner estimate` reads it).
    pub produced: i64,
}

#[derive(Debug)]
pub struct Recorder {
    capacity: usize,
    series: Mutex<HashMap<String, VecDeque<Point>>>,
    /// target -> replicas, from the HPAs scaling on it.
    replicas: RwLock<HashMap<String, u32>>,
    answers: Mutex<VecDeque<Answer>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(DEFAULT_POINTS)
    }
}

impl Recorder {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            series: Mutex::new(HashMap::new()),
            replicas: RwLock::new(HashMap::new()),
            answers: Mutex::new(VecDeque::with_capacity(ANSWERS_KEPT)),
        }
    }

    /// Keeps one answer (the oldest goes once [`ANSWERS_KEPT`] are kept).
    pub fn answered(&self, answer: Answer) {
        let Ok(mut answers) = self.answers.lock() else { return };
        if answers.len() == ANSWERS_KEPT {
            answers.pop_front();
        }
        answers.push_back(answer);
    }

    /// The kept answers for `metric` (all metrics: `None`), oldest first.
    pub fn answers(&self, metric: Option<&str>) -> Vec<Answer> {
        let Ok(answers) = self.answers.lock() else { return Vec::new() };
        answers.iter().filter(|a| metric.is_none_or(|m| a.metric == m)).cloned().collect()
    }

    /// Appends one point per target of `snapshot`; targets no longer configured are dropped.
    pub fn push(&self, snapshot: &Snapshot) {
        let at = snapshot.collected_at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let replicas = self.replicas.read().map(|r| r.clone()).unwrap_or_default();
        let Ok(mut series) = self.series.lock() else { return };
        series.retain(|name, _| snapshot.targets.contains_key(name));
        for (name, t) in &snapshot.targets {
            let point = Point {
                at,
                served: t.value.value.as_f64(),
                total_lag: t.total_lag,
                members: t.members,
                protocol: t.protocol,
                stale_inputs: t.freshness.stale_inputs,
                replicas: replicas.get(name).copied(),
                partitions: t
                    .topics
                    .iter()
                    .map(|(topic, lag)| (topic.clone(), lag.partitions.iter().map(|p| (p.partition, p.lag)).collect()))
                    .collect(),
                produced: t.topics.values().flat_map(|lag| &lag.partitions).map(|p| p.log_end).sum(),
            };
            let points = series.entry(name.clone()).or_default();
            if points.len() == self.capacity {
                points.pop_front();
            }
            points.push_back(point);
        }
    }

    /// The replicas of the HPAs scaling on each target, by target name (empty when unknown).
    pub fn replicas(&self) -> HashMap<String, u32> {
        self.replicas.read().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn set_replicas(&self, replicas: HashMap<String, u32>) {
        if let Ok(mut r) = self.replicas.write() {
            *r = replicas;
        }
    }

    /// The series of `target`, oldest first (`None`: no such target recorded).
    pub fn points(&self, target: &str) -> Option<Vec<Point>> {
        self.series.lock().ok()?.get(target).map(|p| p.iter().cloned().collect())
    }
}

/// `seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced`: seconds
/// from the first point; replicas from the cluster, else the members, else empty.
pub fn csv(points: &[Point]) -> String {
    let start = points.first().map_or(0.0, |p| p.at);
    let mut out = String::from("seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced\n");
    for p in points {
        let replicas = p.replicas.or(p.members).map_or_else(String::new, |r| r.to_string());
        let members = p.members.map_or_else(String::new, |m| m.to_string());
        out.push_str(&format!(
            "{:.1},{},{replicas},{},{members},{:.3},{},{},{}\n",
            p.at - start,
            p.total_lag,
            p.served,
            p.at,
            p.protocol.name(),
            p.stale_inputs,
            p.produced
        ));
    }
    out
}

/// One JSON object per line (points with their per-partition lags, or answers).
pub fn jsonl<T: Serialize>(rows: &[T]) -> String {
    let mut out = String::new();
    for row in rows {
        if let Ok(line) = serde_json::to_string(row) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The replicas of every HPA whose External metric is a target's name, from the cluster
/// (`autoscaling/v2`: every supported Kubernetes release serves it).
pub async fn hpa_replicas(client: &kube::Client) -> Result<HashMap<String, u32>, kube::Error> {
    let request = http::Request::get("/apis/autoscaling/v2/horizontalpodautoscalers")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(replicas_by_metric(&client.request::<serde_json::Value>(request).await?))
}

fn replicas_by_metric(list: &serde_json::Value) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for hpa in list["items"].as_array().into_iter().flatten() {
        let Some(current) = hpa["status"]["currentReplicas"].as_u64().and_then(|r| u32::try_from(r).ok()) else {
            continue;
        };
        for m in hpa["spec"]["metrics"].as_array().into_iter().flatten() {
            if let Some(name) = m["external"]["metric"]["name"].as_str() {
                *out.entry(name.to_owned()).or_insert(0) += current;
            }
        }
    }
    out
}

/// Keeps the recorder's replica counts current until `stop`.
pub async fn follow_replicas(
    client: kube::Client,
    recorder: Arc<Recorder>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        match hpa_replicas(&client).await {
            Ok(r) => recorder.set_replicas(r),
            Err(e) => tracing::debug!(error = %e, "HPA replicas not readable; recording group members instead"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: f64, lag: u64, members: Option<u32>, replicas: Option<u32>) -> Point {
        Point {
            at,
            served: lag as f64,
            total_lag: lag,
            members,
            protocol: crate::collector::GroupProtocol::Consumer,
            stale_inputs: 0,
            replicas,
            partitions: BTreeMap::from([("orders".to_owned(), BTreeMap::from([(0, lag)]))]),
            produced: 1000 + lag as i64,
        }
    }

    #[test]
    fn csv_starts_at_zero_and_prefers_the_clusters_replicas() {
        let text =
            csv(&[point(100.0, 5, Some(2), None), point(105.0, 7, Some(2), Some(3)), point(110.0, 9, None, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced");
        assert_eq!(lines[1], "0.0,5,2,5,2,100.000,consumer,0,1005");
        assert_eq!(lines[2], "5.0,7,3,7,2,105.000,consumer,0,1007");
        assert_eq!(lines[3], "10.0,9,,9,,110.000,consumer,0,1009");
        let json: serde_json::Value = serde_json::from_str(jsonl(&[point(1.0, 4, None, None)]).trim()).expect("json");
        assert_eq!(json["partitions"]["orders"]["0"], 4);
    }

    #[test]
    fn answers_are_kept_per_metric_and_bounded() {
        let r = Recorder::new(4);
        let answer = |at: f64, metric: &str| Answer {
            at,
            user: String::new(),
            namespace: "default".into(),
            metric: metric.into(),
            selector: String::new(),
            value_milli: 1000,
            items: 1,
        };
        for i in 0..ANSWERS_KEPT + 2 {
            r.answered(answer(i as f64, if i % 2 == 0 { "a" } else { "b" }));
        }
        assert_eq!(r.answers(None).len(), ANSWERS_KEPT);
        let a = r.answers(Some("a"));
        assert_eq!((a.len(), a[0].at), (ANSWERS_KEPT / 2, 2.0), "the two oldest went");
        assert!(r.answers(Some("c")).is_empty());
        let line: serde_json::Value = serde_json::from_str(jsonl(&a[..1]).trim()).expect("json");
        assert_eq!((line["metric"].as_str(), line["value_milli"].as_i64()), (Some("a"), Some(1000)));
    }

    #[test]
    fn hpas_are_matched_by_their_external_metric() {
        let list = serde_json::json!({"items": [
            {"spec": {"metrics": [{"type": "External", "external": {"metric": {"name": "lag-a"}}}]}, "status": {"currentReplicas": 3}},
            {"spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu"}}]}, "status": {"currentReplicas": 9}},
            {"spec": {"metrics": [{"type": "External", "external": {"metric": {"name": "lag-b"}}}]}, "status": {}},
        ]});
        assert_eq!(replicas_by_metric(&list), HashMap::from([("lag-a".to_owned(), 3)]));
    }
}
