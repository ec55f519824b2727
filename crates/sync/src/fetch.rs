//! Downloads: one rustls client for every list, conditional GET, the size
//! cap enforced while the body streams in, and retries with exponential
//! backoff for failures a retry can fix.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};

use crate::{Progress, SyncConfig, SyncError};

/// The HTTP client shared by every list.
pub(crate) fn client(config: &SyncConfig, base_dir: &Path) -> Result<reqwest::Client, SyncError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("shieldns/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        // The whole exchange, body included: a slow-drip or endless body
        // ends here even if every read makes progress.
        .timeout(config.timeout)
        .gzip(true)
        .redirect(reqwest::redirect::Policy::limited(5));
    if let Some(path) = config.resolved_ca_file(base_dir) {
        let pem = std::fs::read(&path).map_err(|e| SyncError::CaFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SyncError::CaFile {
            path: path.clone(),
            reason: error_chain(&e),
        })?;
        if certificates.is_empty() {
            return Err(SyncError::CaFile {
                path,
                reason: "no PEM certificate in it".into(),
            });
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| SyncError::Client {
        reason: error_chain(&e),
    })
}

/// The validators of the version we hold, for a conditional GET.
#[derive(Clone, Debug, Default)]
pub(crate) struct Validators {
    pub(crate) etag: Option<String>,
    pub(crate) last_modified: Option<String>,
}

/// What one GET produced.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// 304: the version we hold is current.
    NotModified,
    /// 200 with the whole (decoded) body.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// A zone transfer's SOA serial.
        soa_serial: Option<u32>,
    },
}

/// One download request.
pub(crate) struct Request<'a> {
    pub(crate) list: &'a str,
    pub(crate) url: &'a reqwest::Url,
    pub(crate) max_bytes: u64,
    pub(crate) validators: Option<&'a Validators>,
    pub(crate) progress: &'a dyn Progress,
}

/// GET with retries: network errors, timeouts, truncated bodies, HTTP 5xx,
/// 408 and 429 are retried after `retry_backoff`, doubling each time; any
/// other failure is final at once.
pub(crate) async fn get(
    client: &reqwest::Client,
    config: &SyncConfig,
    request: &Request<'_>,
) -> Result<Fetched, SyncError> {
    let mut attempt = 0;
    loop {
        let result = get_once(client, config, request).await;
        match result {
            Err(error) if attempt < config.retries && retryable(&error) => {
                let wait = backoff(config.retry_backoff, attempt);
                tracing::warn!(
                    list = request.list,
                    attempt = attempt + 1,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "download failed, retrying: {error}"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `base · 2^attempt`, capped at 2^10 · base so a large retry count cannot
/// overflow.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.min(10))
}

pub(crate) fn retryable(error: &SyncError) -> bool {
    match error {
        SyncError::Http { status, .. } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
        }
        SyncError::Transport { .. } | SyncError::Timeout { .. } => true,
        _ => false,
    }
}

async fn get_once(client: &reqwest::Client, config: &SyncConfig, request: &Request<'_>) -> Result<Fetched, SyncError> {
    // The client's timeout covers the exchange; this one also covers the
    // time between body chunks we spend on our side, as a backstop.
    match tokio::time::timeout(config.timeout, exchange(client, config, request)).await {
        Ok(result) => result,
        Err(_) => Err(SyncError::Timeout {
            list: request.list.to_owned(),
            url: request.url.to_string(),
            after: config.timeout,
        }),
    }
}

async fn exchange(client: &reqwest::Client, config: &SyncConfig, request: &Request<'_>) -> Result<Fetched, SyncError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            SyncError::Timeout {
                list: request.list.to_owned(),
                url: request.url.to_string(),
                after: config.timeout,
            }
        } else {
            SyncError::Transport {
                list: request.list.to_owned(),
                url: request.url.to_string(),
                reason: error_chain(&e),
            }
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(validators) = request.validators {
        if let Some(value) = validators.etag.as_deref().and_then(|v| v.parse().ok()) {
            headers.insert(IF_NONE_MATCH, value);
        }
        if let Some(value) = validators.last_modified.as_deref().and_then(|v| v.parse().ok()) {
            headers.insert(IF_MODIFIED_SINCE, value);
        }
    }
    let mut response = client
        .get(request.url.clone())
        .headers(headers)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED && request.validators.is_some() {
        return Ok(Fetched::NotModified);
    }
    if status != StatusCode::OK {
        return Err(SyncError::Http {
            list: request.list.to_owned(),
            url: request.url.to_string(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_owned(),
        });
    }
    let too_large = || SyncError::TooLarge {
        list: request.list.to_owned(),
        url: request.url.to_string(),
        max_bytes: request.max_bytes,
    };
    // A declared length over the cap fails before any byte is read. (With
    // gzip the length is unknown here: the decoded stream is capped below.)
    let declared = response.content_length();
    if declared.is_some_and(|length| length > request.max_bytes) {
        return Err(too_large());
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header(ETAG);
    let last_modified = header(LAST_MODIFIED);
    request.progress.started(request.list, declared);
    let capacity = declared.map_or(64 * 1024, |length| length.min(request.max_bytes));
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(usize::MAX));
    let result = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if u64::try_from(bytes.len() + chunk.len()).unwrap_or(u64::MAX) > request.max_bytes {
                    break Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
                request
                    .progress
                    .advanced(request.list, u64::try_from(bytes.len()).unwrap_or(u64::MAX));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(transport(e)),
        }
    };
    request.progress.finished(request.list);
    result?;
    Ok(Fetched::Body {
        bytes,
        etag,
        last_modified,
        soa_serial: None,
    })
}

/// An error and its causes on one line; reqwest's own message alone says
/// only "error sending request".
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_saturates() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 0), Duration::from_millis(100));
        assert_eq!(backoff(base, 1), Duration::from_millis(200));
        assert_eq!(backoff(base, 3), Duration::from_millis(800));
        assert_eq!(backoff(base, 99), backoff(base, 10));
    }
}
