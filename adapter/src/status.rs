//! JSON the way the Kubernetes apiserver writes it (Go's encoding/json: `<`, `>`, `&`, U+2028
//! and U+2029 escaped, a trailing newline), and `metav1.Status` error bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const GROUP: &str = "external.metrics.k8s.io";

/// Serialises like Go's json.Encoder: HTML-sensitive characters escaped, newline-terminated.
pub fn go_json<T: Serialize>(value: &T) -> Vec<u8> {
    let text = serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out.into_bytes()
}

pub fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `metav1.Status` failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// For NotFound: the name of what was not found.
    pub name: Option<String>,
    /// Unavailable only until the next collection (a target added since the last one, a rate
    /// target's first poll): a stream waits for it instead of ending.
    pub retry_soon: bool,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    code: u16,
}

#[derive(Debug, Serialize)]
pub struct Empty {}

#[derive(Serialize)]
struct Details<'a> {
    name: &'a str,
    group: &'static str,
    kind: &'static str,
}

impl Status {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            name: None,
            retry_soon: false,
        }
    }

    pub fn not_found(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
            name: Some(name.into()),
            retry_soon: false,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::SERVICE_UNAVAILABLE,
            reason: "ServiceUnavailable",
            message: message.into(),
            name: None,
            retry_soon: false,
        }
    }

    /// Unavailable until the next collection (see [`Status::retry_soon`]).
    pub fn pending(message: impl Into<String>) -> Self {
        Self { retry_soon: true, ..Self::unavailable(message) }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            name: None,
            retry_soon: false,
        }
    }

    /// A 403 worded as the kube-apiserver words it: `User "u" cannot <what>`.
    pub fn forbidden(user: &str, what: &str, reason: &str) -> Self {
        let mut message = format!("{user:?} cannot {what}");
        message.insert_str(0, "User ");
        if !reason.is_empty() {
            message.push_str(": ");
            message.push_str(reason);
        }
        Self { code: StatusCode::FORBIDDEN, reason: "Forbidden", message, name: None, retry_soon: false }
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("the server does not allow this method on the requested resource ({method})"),
            name: None,
            retry_soon: false,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        go_json(&StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.name.as_deref().map(|name| Details { name, group: GROUP, kind: "externalmetrics" }),
            code: self.code.as_u16(),
        })
    }
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        json_response(self.code, self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_body_matches_the_apiserver() {
        let body = String::from_utf8(Status::bad_request("invalid selector \"a<b\"").body()).expect("utf8");
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"invalid selector \\\"a\\u003cb\\\"\",\"reason\":\"BadRequest\",\"code\":400}\n"
        );
        let nf = String::from_utf8(Status::not_found("m", "metric \"m\" not found").body()).expect("utf8");
        assert!(nf.contains("\"details\":{\"name\":\"m\",\"group\":\"external.metrics.k8s.io\",\"kind\":\"externalmetrics\"},\"code\":404"), "{nf}");
    }

    #[test]
    fn go_escapes_html_and_line_separators() {
        let s = String::from_utf8(go_json(&"<&>\u{2028}\u{2029}é")).expect("utf8");
        assert_eq!(s, "\"\\u003c\\u0026\\u003e\\u2028\\u2029é\"\n");
    }
}
