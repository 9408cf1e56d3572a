//! Discovery (`/apis`, the group, the resource list) and OpenAPI documents. Bodies are
//! rendered once per set of served metric names, not per request.

use serde_json::{Value, json};

use crate::status::{GROUP, go_json};

pub const VERSION: &str = "v1beta1";
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

fn group_entry() -> Value {
    let version = json!({ "groupVersion": GROUP_VERSION, "version": VERSION });
    json!({ "name": GROUP, "versions": [version.clone()], "preferredVersion": version })
}

pub fn api_group_list() -> Vec<u8> {
    go_json(&json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [group_entry()] }))
}

pub fn api_group() -> Vec<u8> {
    let mut group = group_entry();
    if let Value::Object(map) = &mut group {
        let mut ordered = serde_json::Map::new();
        ordered.insert("kind".into(), json!("APIGroup"));
        ordered.insert("apiVersion".into(), json!("v1"));
        ordered.extend(std::mem::take(map));
        return go_json(&Value::Object(ordered));
    }
    go_json(&group)
}

/// The APIResourceList: one entry per served metric, never empty (client-go >= 0.26 treats an
/// empty list as an error).
pub fn api_resource_list(metrics: &[String]) -> Vec<u8> {
    let resources: Vec<Value> = metrics
        .iter()
        .map(|m| {
            json!({ "name": m, "singularName": "", "namespaced": true, "kind": "ExternalMetricValueList", "verbs": ["get"] })
        })
        .collect();
    go_json(
        &json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources }),
    )
}

fn schemas() -> Value {
    json!({
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue": {
            "type": "object",
            "required": ["metricName", "metricLabels", "timestamp", "value"],
            "properties": {
                "metricName": { "type": "string" },
                "metricLabels": { "type": "object", "additionalProperties": { "type": "string" } },
                "timestamp": { "type": "string", "format": "date-time" },
                "window": { "type": "integer", "format": "int64" },
                "value": { "type": "string", "description": "A Kubernetes quantity." }
            }
        },
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "kind": { "type": "string" },
                "apiVersion": { "type": "string" },
                "metadata": { "type": "object" },
                "items": { "type": "array", "items": { "$ref": "#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue" } }
            },
            "x-kubernetes-group-version-kind": [{ "group": GROUP, "version": VERSION, "kind": "ExternalMetricValueList" }]
        }
    })
}

const PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}";

fn operation(list_ref: &str, v3: bool) -> Value {
    let param = |name: &str, location: &str, required: bool| {
        if v3 {
            json!({ "name": name, "in": location, "required": required, "schema": { "type": "string" } })
        } else {
            json!({ "name": name, "in": location, "required": required, "type": "string" })
        }
    };
    json!({
        "get": {
            "operationId": "getExternalMetricValueList",
            "description": "Current value of an external metric (Kafka consumer-group lag).",
            "parameters": [
                param("namespace", "path", true),
                param("metric", "path", true),
                param("labelSelector", "query", false)
            ],
            "responses": { "200": { "description": "OK", "schema": { "$ref": list_ref } } }
        }
    })
}

pub fn openapi_v2() -> Vec<u8> {
    go_json(&json!({
        "swagger": "2.0",
        "info": { "title": "lagscale external metrics", "version": VERSION },
        "paths": { PATH: operation("#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList", false) },
        "definitions": schemas()
    }))
}

pub fn openapi_v3_index() -> Vec<u8> {
    go_json(&json!({ "paths": { "apis/external.metrics.k8s.io/v1beta1": {
        "serverRelativeURL": "/openapi/v3/apis/external.metrics.k8s.io/v1beta1"
    } } }))
}

pub fn openapi_v3_group() -> Vec<u8> {
    let text = serde_json::to_string(&schemas()).unwrap_or_default().replace("#/definitions/", "#/components/schemas/");
    let components: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut op = operation(
        "#/components/schemas/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList",
        true,
    );
    op["get"]["responses"]["200"] = json!({ "description": "OK", "content": { "application/json": { "schema": {
        "$ref": "#/components/schemas/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList"
    } } } });
    go_json(&json!({
        "openapi": "3.0.0",
        "info": { "title": "lagscale external metrics", "version": VERSION },
        "paths": { PATH: op },
        "components": { "schemas": components }
    }))
}
