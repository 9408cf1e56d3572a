//! `externalscaler.ExternalScaler`, answered from the published snapshot: nothing here waits on
//! Kafka. A value the HTTP API would refuse (stale, warming up, unknown group) is refused here
//! with the gRPC status of the same meaning and the same message, never replaced by a guess.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response};

use super::proto::external_scaler_server::ExternalScaler;
use super::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use super::trigger::Trigger;
use crate::api::{ApiState, is_valid_namespace, servable_target};
use crate::status::Status;
use crate::targets::Target;
use hpa_model::quantity::Quantity;

type Pushed<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The service; cheap to clone (streams keep a clone).
#[derive(Debug, Clone)]
pub struct Scaler {
    state: ApiState,
    shutdown: watch::Receiver<bool>,
}

/// A served value as the HPA will read it, and until when it may be served.
#[derive(Debug, Clone, Copy)]
struct Served {
    value: Quantity,
    stale_at: SystemTime,
}

impl Served {
    /// Active: the target serves a non-zero value (with `activationLag`, more than that is
    /// waiting; a rate target, anything is produced).
    fn active(&self) -> bool {
        self.value.milli_value() > 0
    }
}

/// The HTTP status of a refusal as the gRPC code of the same meaning.
fn grpc(status: Status) -> tonic::Status {
    let code = match status.code.as_u16() {
        400 => Code::InvalidArgument,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    tonic::Status::new(code, status.message)
}

/// Label of a gRPC code, as grpc-go's Prometheus interceptors write it.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "InvalidArgument",
        Code::NotFound => "NotFound",
        Code::PermissionDenied => "PermissionDenied",
        Code::Unavailable => "Unavailable",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::Cancelled => "Canceled",
        _ => "Internal",
    }
}

impl Scaler {
    pub fn new(state: ApiState, shutdown: watch::Receiver<bool>) -> Self {
        Self { state, shutdown }
    }

    /// The target a trigger asks for; an inline one is registered (or marked used).
    fn target(&self, r: &ScaledObjectRef) -> Result<Arc<Target>, tonic::Status> {
        if !is_valid_namespace(&r.namespace) {
            return Err(tonic::Status::invalid_argument(format!(
                "scaledObjectRef.namespace {:?} is not a namespace name",
                r.namespace
            )));
        }
        if r.name.is_empty() {
            return Err(tonic::Status::invalid_argument("scaledObjectRef.name is empty"));
        }
        let trigger = Trigger::parse(&r.namespace, &r.name, &r.scaler_metadata)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let target = match trigger {
            Trigger::Named(name) => {
                let targets = self.state.shared.targets();
                targets.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
                    tonic::Status::not_found(format!(
                        "trigger metadata key \"target\": no scaling target {name:?} in the adapter's targets file"
                    ))
                })?
            }
            Trigger::Inline(target) => {
                let registered = self.state.shared.inline_target(*target).map_err(|e| match e {
                    crate::poller::InlineRefused::Full => tonic::Status::resource_exhausted(e.to_string()),
                    crate::poller::InlineRefused::NameTaken(_) => tonic::Status::already_exists(e.to_string()),
                });
                self.state.metrics.keda_inline_targets.set(self.state.shared.inline_count() as i64);
                registered?
            }
        };
        if !target.namespaces.is_empty() && !target.namespaces.contains(&r.namespace) {
            return Err(tonic::Status::permission_denied(format!(
                "scaling target {:?} is not served to namespace {:?} (its `namespaces` setting)",
                target.name, r.namespace
            )));
        }
        Ok(target)
    }

    /// What the target serves now, through the same checks as the HTTP API.
    fn served(&self, namespace: &str, target: &Target) -> Result<Served, Status> {
        let (snapshot, target) = servable_target(&self.state, namespace, &target.name)?;
        let lag = snapshot.targets.get(&target.name).ok_or_else(|| Status::pending("target left the snapshot"))?;
        let oldest = lag.freshness.as_of.min(snapshot.collected_at);
        Ok(Served { value: lag.value.value, stale_at: oldest + self.state.config.max_snapshot_age })
    }

    fn spec(target: &Target) -> GetMetricSpecResponse {
        GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: target.name.clone(),
                target_size: i64::try_from(target.lag_per_replica).unwrap_or(i64::MAX),
                target_size_float: target.lag_per_replica as f64,
            }],
        }
    }

    /// Counts and times a unary call.
    fn observed<T>(
        &self,
        method: &str,
        started: Instant,
        result: Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let code = result.as_ref().err().map_or(Code::Ok, tonic::Status::code);
        let m = &self.state.metrics;
        m.grpc_duration.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
        m.grpc_requests.with_label_values(&[method, code_label(code)]).inc();
        result
    }

    /// Runs `next` for a stream: called at the start and after every change of the snapshot or
    /// the targets (and when what was pushed goes stale), it returns what to push (`None`:
    /// nothing new), or the status that ends the stream. A pending refusal pushes nothing and
    /// waits for the next snapshot.
    fn stream<T: Send + 'static>(
        &self,
        method: &'static str,
        mut next: impl FnMut(&Self) -> Result<(Option<T>, Option<SystemTime>), Refusal> + Send + 'static,
    ) -> Pushed<T> {
        let (tx, rx) = mpsc::channel(4);
        let scaler = self.clone();
        let mut changes = self.state.shared.subscribe();
        let mut shutdown = self.shutdown.clone();
        let metrics = self.state.metrics.clone();
        tokio::spawn(async move {
            let open = metrics.keda_streams.with_label_values(&[method]);
            open.inc();
            loop {
                changes.borrow_and_update();
                let wake = match next(&scaler) {
                    Ok((item, wake)) => {
                        if let Some(item) = item {
                            if tx.send(Ok(item)).await.is_err() {
                                break;
                            }
                            metrics.keda_pushes.with_label_values(&[method]).inc();
                        }
                        wake
                    }
                    Err(Refusal::Pending) => None,
                    Err(Refusal::End(status)) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // Wake when the pushed answer stops being servable: the poller may be stuck and
                // publish nothing, and a stale value must end the stream, not stand.
                let until = wake.map(|at| {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::Instant::now() + left + Duration::from_millis(1)
                });
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = async { if let Some(until) = until { tokio::time::sleep_until(until).await } else { std::future::pending().await } } => {}
                    () = tx.closed() => break,
                    _ = shutdown.changed() => break,
                }
            }
            open.dec();
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Why a stream pushes nothing this time.
#[derive(Debug)]
enum Refusal {
    /// Answerable from the next snapshot on: wait for it.
    Pending,
    /// Ends the stream with this status.
    End(tonic::Status),
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Self {
        Self::End(status)
    }
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        if status.retry_soon { Self::Pending } else { Self::End(grpc(status)) }
    }
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, tonic::Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = self
            .target(&r)
            .and_then(|t| self.served(&r.namespace, &t).map_err(grpc))
            .map(|served| Response::new(IsActiveResponse { result: served.active() }));
        self.observed("IsActive", started, result)
    }

    type StreamIsActiveStream = Pushed<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, tonic::Status> {
        let started = Instant::now();
        let r = request.into_inner();
        // Bad metadata fails the call itself; everything later ends the stream.
        let opened = self.target(&r).map(|_| ());
        self.observed("StreamIsActive", started, opened)?;
        let mut last: Option<bool> = None;
        Ok(Response::new(self.stream("StreamIsActive", move |scaler| {
            let target = scaler.target(&r)?;
            let served = scaler.served(&r.namespace, &target)?;
            let active = served.active();
            let push = (last != Some(active)).then_some(IsActiveResponse { result: active });
            last = Some(active);
            Ok((push, Some(served.stale_at)))
        })))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, tonic::Status> {
        let started = Instant::now();
        let result = self.target(request.get_ref()).map(|t| Response::new(Self::spec(&t)));
        self.observed("GetMetricSpec", started, result)
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, tonic::Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            let r = request
                .scaled_object_ref
                .as_ref()
                .ok_or_else(|| tonic::Status::invalid_argument("scaledObjectRef is missing"))?;
            let target = self.target(r)?;
            if !request.metric_name.is_empty() && request.metric_name != target.name {
                return Err(tonic::Status::invalid_argument(format!(
                    "metricName {:?} is not this trigger's metric: it serves {:?} (from GetMetricSpec)",
                    request.metric_name, target.name
                )));
            }
            let served = self.served(&r.namespace, &target).map_err(grpc)?;
            let milli = served.value.milli_value();
            self.state.shared.recorder.answered(crate::record::Answer {
                at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                user: format!("keda:{}/{}", r.namespace, r.name),
                namespace: r.namespace.clone(),
                metric: target.name.clone(),
                selector: String::new(),
                value_milli: milli,
                items: 1,
            });
            Ok(Response::new(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name: target.name.clone(),
                    metric_value: i64::try_from((milli + 500) / 1000).unwrap_or(i64::MAX),
                    metric_value_float: milli as f64 / 1000.0,
                }],
            }))
        })();
        self.observed("GetMetrics", started, result)
    }

    type StreamMetricSpecStream = Pushed<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, tonic::Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let opened = self.target(&r).map(|_| ());
        self.observed("StreamMetricSpec", started, opened)?;
        let mut last: Option<GetMetricSpecResponse> = None;
        Ok(Response::new(self.stream("StreamMetricSpec", move |scaler| {
            let target = scaler.target(&r)?;
            let spec = Self::spec(&target);
            let push = (last.as_ref() != Some(&spec)).then(|| spec.clone());
            last = Some(spec);
            Ok((push, None))
        })))
    }
}
