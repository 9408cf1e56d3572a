//! lagscale as a KEDA external scaler, for clusters where KEDA's metrics server owns
//! `v1beta1.external.metrics.k8s.io`: KEDA's `external` and `external-push` triggers call
//! [`scaler`] over gRPC ([`listener`]), and every answer comes from the same snapshot and target
//! engine as the HTTP API. A trigger names a target or carries one inline ([`trigger`]).

pub mod listener;
pub mod scaler;
pub mod trigger;

/// The messages and services generated from `proto/externalscaler.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("externalscaler");
}
