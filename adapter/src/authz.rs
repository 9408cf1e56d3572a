//! Authorization, delegated with SubjectAccessReview: may this user `list` this metric (a
//! resource of `external.metrics.k8s.io`) in this namespace, or `get` this non-resource path
//! (discovery, OpenAPI)? Allow and deny are both cached for a TTL; `system:masters` is always
//! allowed (the aggregator's availability check runs as it).

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;

use crate::authn::{AuthError, User};
use crate::cache::TtlCache;

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const MASTERS: &str = "system:masters";

/// What a request asks to do, in Kubernetes' authorization terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// A metric: `list` of resource `metric` in `namespace`.
    Metric { namespace: String, metric: String },
    /// Anything else: `verb` on the URL path.
    Path { verb: String, path: String },
}

impl Attributes {
    /// The attributes of `method path` on this server.
    pub fn of(method: &str, path: &str) -> Self {
        let prefix = format!("/apis/{GROUP}/{VERSION}/namespaces/");
        if let Some(rest) = path.strip_prefix(&prefix)
            && let Some((namespace, metric)) = rest.split_once('/')
            && !namespace.is_empty()
            && !metric.is_empty()
            && !metric.contains('/')
        {
            return Self::Metric { namespace: namespace.to_owned(), metric: metric.to_owned() };
        }
        Self::Path { verb: method.to_ascii_lowercase(), path: path.to_owned() }
    }

    /// "list resource m in namespace n" for a 403's message, as the kube-apiserver words it.
    pub fn describe(&self) -> String {
        match self {
            Self::Metric { namespace, metric } => {
                format!("list resource \"{metric}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"")
            }
            Self::Path { verb, path } => format!("{verb} path \"{path}\""),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// Answered from the cache (a metric label).
    pub cached: bool,
}

pub struct Authorizer {
    client: kube::Client,
    decisions: TtlCache<(User, Attributes), (bool, String)>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("cached", &self.decisions.len()).finish_non_exhaustive()
    }
}

impl Authorizer {
    pub fn new(client: kube::Client, ttl: Duration, capacity: usize, metrics: &crate::metrics::Metrics) -> Self {
        Self { client, decisions: TtlCache::new(ttl, capacity, metrics.auth_cache("authorizations")) }
    }

    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> Result<Decision, AuthError> {
        if user.in_group(MASTERS) {
            return Ok(Decision { allowed: true, reason: format!("member of {MASTERS}"), cached: false });
        }
        let key = (user.clone(), attributes.clone());
        if let Some((allowed, reason)) = self.decisions.get(&key) {
            return Ok(Decision { allowed, reason, cached: true });
        }
        let (resource_attributes, non_resource_attributes) = match attributes {
            Attributes::Metric { namespace, metric } => (
                Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    version: Some(VERSION.into()),
                    resource: Some(metric.clone()),
                    namespace: Some(namespace.clone()),
                    verb: Some("list".into()),
                    ..Default::default()
                }),
                None,
            ),
            Attributes::Path { verb, path } => {
                (None, Some(NonResourceAttributes { path: Some(path.clone()), verb: Some(verb.clone()) }))
            }
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Review { review: "SubjectAccessReview", source })?;
        let status = answer.status.unwrap_or_default();
        let reason = status.reason.unwrap_or_default();
        self.decisions.put(key, (status.allowed, reason.clone()));
        Ok(Decision { allowed: status.allowed, reason, cached: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_paths_are_resources_everything_else_a_path() {
        assert_eq!(
            Attributes::of("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/pipeline/projection-worker-lag"),
            Attributes::Metric { namespace: "pipeline".into(), metric: "projection-worker-lag".into() }
        );
        for path in [
            "/apis/external.metrics.k8s.io/v1beta1",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/pipeline",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces//m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/a/b/c",
            "/openapi/v2",
        ] {
            assert_eq!(
                Attributes::of("GET", path),
                Attributes::Path { verb: "get".into(), path: path.into() },
                "{path}"
            );
        }
        let m = Attributes::Metric { namespace: "ns".into(), metric: "m".into() };
        assert!(m.describe().contains("list resource \"m\"") && m.describe().contains("\"ns\""));
    }
}
