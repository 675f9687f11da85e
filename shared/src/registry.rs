//! The schema registry, through its Confluent-compatible API: registering the schemas of a
//! table under `<topic>-key` / `<topic>-value`, setting their compatibility level, and fetching
//! writer schemas by id (cached: an id never changes its schema).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use tokio::sync::RwLock;

use crate::config::{redact_url, RegistryConfig};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry at {url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("schema registry refused {what}: {message}")]
    Refused {
        what: String,
        message: String,
        retryable: bool,
    },
    #[error("schema id {0} is unknown to the registry")]
    UnknownId(u32),
    #[error("schema id {id} is not a usable Avro schema: {message}")]
    BadSchema { id: u32, message: String },
    #[error("schema registry at {url}: {message}")]
    Setup { url: String, message: String },
}

/// What to check when the registry refuses our credentials.
fn auth_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => " (not authenticated: check registry.username and its password, or the token)",
        403 => " (not allowed: the registry user needs the right to read and write schemas)",
        _ => "",
    }
}

/// Standard base64 (for the basic authentication header).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub struct Registry {
    base: String,
    http: reqwest::Client,
    cache: RwLock<HashMap<u32, Arc<Schema>>>,
}

/// The level in a `/config` answer (`compatibilityLevel` in Confluent's API, `compatibility`
/// in some others).
fn level(body: &serde_json::Value) -> Option<String> {
    body.get("compatibilityLevel")
        .or_else(|| body.get("compatibility"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

impl Registry {
    /// A registry without authentication.
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        Self::with(url, reqwest::Client::builder())
    }

    /// The registry of the config: its URL, basic authentication or a bearer token, and a CA
    /// file for `https://`.
    pub fn from_config(c: &RegistryConfig) -> Result<Self, RegistryError> {
        let setup = |message: String| RegistryError::Setup {
            url: redact_url(&c.url),
            message,
        };
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("registry.ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("registry.ca_file {}: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let auth = match (&c.username, &c.password, &c.token) {
            (Some(user), password, _) => {
                let pair = format!("{user}:{}", password.as_ref().map_or("", |p| p.expose()));
                Some(format!("Basic {}", base64(pair.as_bytes())))
            }
            (None, _, Some(token)) => Some(format!("Bearer {}", token.expose())),
            _ => None,
        };
        if let Some(value) = auth {
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                setup("the registry credentials hold characters an HTTP header cannot".into())
            })?;
            // never printed, not even by reqwest's debug output
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Self::with(&c.url, builder)
    }

    fn with(url: &str, builder: reqwest::ClientBuilder) -> Result<Self, RegistryError> {
        let base = url.trim_end_matches('/').to_string();
        let unreachable = |message: String| RegistryError::Unreachable {
            url: redact_url(&base),
            message,
        };
        let http = builder
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            base,
            http,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Registers an Avro schema under a subject (or finds it there) and returns its id
    /// (`POST /subjects/{subject}/versions`).
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let body = serde_json::json!({ "schemaType": "AVRO", "schema": schema_json });
        let answer = self
            .send_json(reqwest::Method::POST, &url, &body, || {
                format!("the schema for subject {subject}")
            })
            .await?;
        answer
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Refused {
                what: format!("the schema for subject {subject}"),
                message: format!("the answer has no schema id: {answer}"),
                retryable: false,
            })
    }

    /// Whether `schema_json` may be registered under `subject` at its compatibility level, as
    /// the registry judges it against the latest version (`POST
    /// /compatibility/subjects/{subject}/versions/latest`); a subject without versions takes any.
    pub async fn is_compatible(
        &self,
        subject: &str,
        schema_json: &str,
    ) -> Result<bool, RegistryError> {
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest",
            self.base, subject
        );
        let body = serde_json::json!({ "schemaType": "AVRO", "schema": schema_json });
        let answer = self
            .send_json(reqwest::Method::POST, &url, &body, || {
                format!("the compatibility check for subject {subject}")
            })
            .await;
        match answer {
            Ok(a) => a
                .get("is_compatible")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| RegistryError::Refused {
                    what: format!("the compatibility check for subject {subject}"),
                    message: format!("the answer says nothing of compatibility: {a}"),
                    retryable: false,
                }),
            // some registries answer 404 for a subject without versions
            Err(RegistryError::Refused { message, .. }) if message.starts_with("HTTP 404") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets a subject's compatibility level (`PUT /config/{subject}`).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let url = format!("{}/config/{}", self.base, subject);
        let body = serde_json::json!({ "compatibility": level });
        self.send_json(reqwest::Method::PUT, &url, &body, || {
            format!("compatibility {level} for subject {subject}")
        })
        .await?;
        Ok(())
    }

    /// Sends a JSON body and returns the JSON answer (`null` when it has none); an error naming
    /// `what` on any failure.
    async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &serde_json::Value,
        what: impl FnOnce() -> String,
    ) -> Result<serde_json::Value, RegistryError> {
        let response = self
            .http
            .request(method, url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(RegistryError::Refused {
                what: what(),
                message: format!("HTTP {status}: {text}{}", auth_hint(status)),
                retryable: status.is_server_error(),
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// The registry's global compatibility level, if it says.
    pub async fn global_compatibility(&self) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/config", self.base);
        let body = self
            .get_json(&url, || "the global compatibility".to_string())
            .await?;
        Ok(body.as_ref().and_then(level))
    }

    /// The compatibility level set on a subject, if any.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/config/{}", self.base, subject);
        let body = self
            .get_json(&url, || format!("the compatibility of {subject}"))
            .await?;
        Ok(body.as_ref().and_then(level))
    }

    /// The id of the latest schema registered under `subject`, or `None` if it has none.
    pub async fn latest_id(&self, subject: &str) -> Result<Option<u32>, RegistryError> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, subject);
        let body = self
            .get_json(&url, || format!("latest version of {subject}"))
            .await?;
        Ok(body
            .and_then(|b| b.get("id").and_then(serde_json::Value::as_u64))
            .and_then(|id| u32::try_from(id).ok()))
    }

    /// GETs a JSON answer: `None` on 404, an error naming `what` on any other failure.
    async fn get_json(
        &self,
        url: &str,
        what: impl FnOnce() -> String,
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(RegistryError::Refused {
                what: what(),
                message: format!("HTTP {status}{}", auth_hint(status)),
                retryable: status.is_server_error(),
            });
        }
        let body = response.json().await.map_err(|e| self.unreachable(e))?;
        Ok(Some(body))
    }

    /// The writer schema with this id, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.cache.read().await.get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{}", self.base, id);
        let body = self
            .get_json(&url, || format!("schema id {id}"))
            .await?
            .ok_or(RegistryError::UnknownId(id))?;
        let text = body.get("schema").and_then(|v| v.as_str()).ok_or_else(|| {
            RegistryError::BadSchema {
                id,
                message: "the answer has no 'schema' string".into(),
            }
        })?;
        let schema = Arc::new(
            Schema::parse_str(text).map_err(|e| RegistryError::BadSchema {
                id,
                message: e.to_string(),
            })?,
        );
        self.cache.write().await.insert(id, schema.clone());
        Ok(schema)
    }

    /// A request that got no answer: unreachable (retried), unless the registry's certificate
    /// was refused, which only the config can change.
    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        // the error's own text would repeat the URL, credentials included
        let e = e.without_url();
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let more = c.to_string();
            if !message.contains(&more) {
                message.push_str(": ");
                message.push_str(&more);
            }
            cause = c.source();
        }
        let url = redact_url(&self.base);
        if message.contains("invalid peer certificate") {
            return RegistryError::Setup {
                url,
                message: format!(
                    "{message}; check registry.ca_file (the CA the registry's certificate chains to) and that the certificate names the host of registry.url"
                ),
            };
        }
        RegistryError::Unreachable { url, message }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_credentials_are_base64_as_rfc_4648_says() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"tunnel:p@ss"), "dHVubmVsOnBAc3M=");
    }
}
