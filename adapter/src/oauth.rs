//! SASL/OAUTHBEARER tokens from an OIDC provider (client credentials grant, RFC 6749 §4.4), as
//! librdkafka's `sasl.oauthbearer.method=oidc` gets them: one token shared by every broker
//! connection, fetched again before it expires. The client secret and the token never reach
//! `Debug`, logs or metrics.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::KafkaError;

/// Refresh at this share of the token's lifetime, so a connection made just before expiry
/// still authenticates.
const REFRESH_AT: f64 = 0.8;
/// Lifetime assumed when the provider does not say (`expires_in` absent).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

pub struct OAuthClient {
    pub token_endpoint: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    http: reqwest::Client,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

impl OAuthClient {
    pub fn new(
        token_endpoint: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        // reqwest is built without a TLS provider of its own: the process-wide one (ring).
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { token_endpoint, client_id, client_secret, scope, http, cached: Mutex::new(None) })
    }

    /// A token valid for a while yet: the cached one, else a new one from the provider.
    pub async fn token(&self) -> Result<String, KafkaError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        *cached = Some((token.clone(), Instant::now() + lifetime.mul_f64(REFRESH_AT)));
        Ok(token)
    }

    /// Forgets the cached token (the broker refused it): the next connection asks again.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(String, Duration), KafkaError> {
        let refused =
            |message: String| KafkaError::Auth { addr: self.token_endpoint.clone(), mechanism: "OAUTHBEARER", message };
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let response = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&form).map_err(|e| refused(format!("token request: {e}")))?)
            .send()
            .await
            .map_err(|e| refused(format!("token endpoint unreachable: {e}")))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| refused(format!("token endpoint: {e}")))?;
        if !status.is_success() {
            // The provider's error object says why (invalid_client, ...); bounded, never a token.
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(refused(format!("token endpoint answered {status}: {text}")));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("token endpoint answer is not a token response: {e}")))?;
        if parsed.access_token.is_empty() {
            return Err(refused("token endpoint gave an empty access_token".into()));
        }
        let lifetime = parsed
            .expires_in
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_LIFETIME, |s| Duration::from_secs_f64(s.min(86_400.0)));
        Ok((parsed.access_token, lifetime))
    }
}

/// The OAUTHBEARER initial client response (RFC 7628 §3.1): GS2 header, then the bearer token.
pub fn initial_response(token: &str) -> Vec<u8> {
    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_response_is_rfc_7628() {
        assert_eq!(initial_response("abc.def."), b"n,,\x01auth=Bearer abc.def.\x01\x01".to_vec());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = OAuthClient::new(
            "https://idp/token".into(),
            "lag-adapter".into(),
            "s3cret".into(),
            None,
            Duration::from_secs(1),
        )
        .expect("client");
        let text = format!("{c:?}");
        assert!(text.contains("lag-adapter") && !text.contains("s3cret"), "{text}");
    }
}
