//! HTTP to one registry: scheme selection, authentication (Basic and Bearer challenges, tokens
//! cached per scope and refreshed on 401), and retries with backoff on 5xx and connection
//! errors — never on other 4xx, which retrying cannot fix.

use crate::credentials::Credential;
use crate::error::{Error, Result};
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Speak plain HTTP.
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// Attempts for a request that fails with 5xx or a connection error.
    pub retries: u32,
}

/// A request body that can be produced again for a retry.
pub type BodyFactory<'a> = &'a (dyn Fn() -> reqwest::Body + Send + Sync);

/// One registry, authenticated.
pub struct Transport {
    client: reqwest::Client,
    /// Host (and port) as in references.
    pub registry: String,
    base: Mutex<String>,
    credential: Option<Credential>,
    basic: Mutex<bool>,
    tokens: Mutex<HashMap<String, String>>,
    retries: u32,
    scheme_fixed: bool,
    fell_back: std::sync::atomic::AtomicBool,
}

/// A challenge's parameters.
fn challenge_params(v: &str) -> (String, HashMap<String, String>) {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else { break };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (&stripped[..end], &stripped[end + 1..]),
                None => (stripped, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(k, val.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The spec's error envelope, for messages.
fn error_of(registry: &str, status: StatusCode, body: &[u8]) -> Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let first = &v["errors"][0];
    let code = first["code"].as_str().map(str::to_owned).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_uppercase()
            .replace(' ', "_")
    });
    let message = first["message"].as_str().map(str::to_owned).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let line = text.lines().next().unwrap_or("").trim();
        if line.is_empty() {
            format!("HTTP {status}")
        } else {
            line.chars().take(200).collect()
        }
    });
    if status == StatusCode::BAD_REQUEST && String::from_utf8_lossy(body).contains("HTTP request to an HTTPS server") {
        return Error::Registry {
            registry: registry.to_owned(),
            status: status.as_u16(),
            code: "HTTPS_REQUIRED".into(),
            message: "the registry speaks HTTPS on this port, not plain HTTP".into(),
            hint: " (drop --plain-http)".into(),
        };
    }
    let hint = match status {
        StatusCode::UNAUTHORIZED => format!(" (run `berth login {registry}`)"),
        StatusCode::FORBIDDEN => " (the account lacks this access; ask the registry's admin)".to_owned(),
        StatusCode::TOO_MANY_REQUESTS => " (wait and retry)".to_owned(),
        _ => String::new(),
    };
    Error::Registry {
        registry: registry.to_owned(),
        status: status.as_u16(),
        code,
        message,
        hint,
    }
}

impl Transport {
    /// A transport to `registry` (host[:port]) with optional credentials.
    pub fn new(
        registry: &str,
        api_host: &str,
        loopback: bool,
        credential: Option<Credential>,
        opts: &Options,
    ) -> Result<Transport> {
        let mut builder = reqwest::Client::builder();
        // docker's per-registry CAs: /etc/docker/certs.d/<host:port>/*.crt.
        let certs = std::path::Path::new("/etc/docker/certs.d").join(registry);
        if let Ok(entries) = std::fs::read_dir(&certs) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    match std::fs::read(&p).map(|pem| reqwest::Certificate::from_pem(&pem)) {
                        Ok(Ok(c)) => builder = builder.add_root_certificate(c),
                        _ => tracing::warn!(path = %p.display(), "ignoring an unreadable CA certificate"),
                    }
                }
            }
        }
        let client = builder
            .danger_accept_invalid_certs(opts.insecure)
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(16)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Network {
                registry: registry.to_owned(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        Ok(Transport {
            client,
            registry: registry.to_owned(),
            base: Mutex::new(format!("{scheme}://{api_host}")),
            credential,
            basic: Mutex::new(false),
            tokens: Mutex::new(HashMap::new()),
            retries: opts.retries.max(1),
            // Loopback registries may speak plain HTTP when they do not speak TLS (docker's rule).
            scheme_fixed: opts.plain_http || !loopback,
            fell_back: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Base URL in force (`scheme://host[:port]`).
    pub fn base(&self) -> String {
        self.base.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// A URL for `path` (absolute paths and full URLs both accepted, as in `Location`).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base())
        }
    }

    fn auth_header(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(t) = self.tokens.lock().ok()?.get(scope) {
            return HeaderValue::from_str(&format!("Bearer {t}")).ok();
        }
        if *self.basic.lock().ok()? {
            let c = self.credential.as_ref()?;
            let raw = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.secret));
            return HeaderValue::from_str(&format!("Basic {raw}")).ok();
        }
        None
    }

    async fn fetch_token(&self, params: &HashMap<String, String>, scope: &str) -> Result<()> {
        let realm = params.get("realm").ok_or_else(|| Error::Network {
            registry: self.registry.clone(),
            message: "Bearer challenge without a realm".into(),
        })?;
        let net = |e: reqwest::Error| Error::Network {
            registry: self.registry.clone(),
            message: format!(
                "token request to {realm} failed: {}",
                describe(&self.registry, &e, realm.starts_with("https://"))
            ),
        };
        let service = params.get("service").cloned().unwrap_or_default();
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let response = match &self.credential {
            // An identity token (docker's refresh token) goes through the OAuth2 POST.
            Some(c) if c.identity_token.is_some() => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("service", service.clone()),
                    ("client_id", "berth".to_owned()),
                    ("refresh_token", c.identity_token.clone().unwrap_or_default()),
                ];
                if !scope.is_empty() {
                    form.push(("scope", scope.to_owned()));
                }
                let body = form
                    .iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                self.client
                    .post(realm)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(net)?
            }
            c => {
                let mut q: Vec<(&str, &str)> = vec![("service", &service)];
                for s in &scopes {
                    q.push(("scope", s));
                }
                let mut req = self.client.get(realm).query(&q);
                if let Some(c) = c {
                    req = req.basic_auth(&c.username, Some(&c.secret));
                }
                req.send().await.map_err(net)?
            }
        };
        let status = response.status();
        let body = response.bytes().await.map_err(net)?;
        if !status.is_success() {
            return Err(error_of(&self.registry, status, &body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| Error::Network {
                registry: self.registry.clone(),
                message: format!("the token service at {realm} answered no token"),
            })?;
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(scope.to_owned(), token.to_owned());
        }
        Ok(())
    }

    /// Sends a request with `scope` (the token-spec scope it needs, e.g.
    /// `repository:team/app:pull`), answering auth challenges and retrying transient failures.
    /// Statuses are returned, not turned into errors: callers know which ones they expect.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        headers: HeaderMap,
        body: Option<BodyFactory<'_>>,
    ) -> Result<reqwest::Response> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = self.url(path);
            let used_https = url.starts_with("https://");
            // Credentials go only to the registry itself, never to a host a Location or Link
            // header names.
            let own = origin(&url) == origin(&self.base());
            let mut req = self.client.request(method.clone(), url).headers(headers.clone());
            if let Some(h) = self.auth_header(scope).filter(|_| own) {
                req = req.header(AUTHORIZATION, h);
            }
            if let Some(b) = body {
                req = req.body(b());
            }
            let result = req.send().await;
            match result {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !challenged => {
                    challenged = true;
                    let challenge = r
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let (scheme, params) = challenge_params(challenge);
                    match scheme.as_str() {
                        "bearer" => {
                            let wanted = params.get("scope").cloned().unwrap_or_else(|| scope.to_owned());
                            let wanted = if wanted.is_empty() { scope.to_owned() } else { wanted };
                            self.fetch_token(&params, &wanted).await?;
                            if wanted != scope {
                                // Use the token for the scope the registry named, for this scope too.
                                if let Ok(mut t) = self.tokens.lock() {
                                    if let Some(tok) = t.get(&wanted).cloned() {
                                        t.insert(scope.to_owned(), tok);
                                    }
                                }
                            }
                        }
                        "basic" if self.credential.is_some() => {
                            if let Ok(mut b) = self.basic.lock() {
                                *b = true;
                            }
                        }
                        _ => return Ok(r),
                    }
                }
                Ok(r) if r.status().is_server_error() && attempt < self.retries => {
                    tracing::debug!(status = %r.status(), attempt, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Ok(r) => return Ok(r),
                Err(e) if is_certificate_error(&e) => {
                    return Err(Error::Network {
                        registry: self.registry.clone(),
                        message: describe(&self.registry, &e, used_https),
                    })
                }
                Err(e)
                    if (e.is_connect() || e.is_timeout())
                        && used_https
                        && !self.scheme_fixed
                        && !path.starts_with("http")
                        && !self.fell_back.swap(true, std::sync::atomic::Ordering::Relaxed) =>
                {
                    // A loopback registry that does not speak TLS: plain HTTP, as docker does.
                    // (Concurrent requests may all land here; the first one switches.)
                    if let Ok(mut b) = self.base.lock() {
                        *b = b.replacen("https://", "http://", 1);
                    }
                    attempt = 0;
                }
                Err(e)
                    if attempt < self.retries
                        && (e.is_connect() || e.is_timeout() || e.is_request())
                        // Causes a retry cannot change are told at once; but a request that
                        // raced a loopback fallback to plain HTTP retries on the new scheme.
                        && (!matches!(
                            classify(&e, used_https),
                            Failure::Dns | Failure::TlsToPlain | Failure::PlainToTls | Failure::Certificate
                        ) || (used_https && !self.base().starts_with("https://"))) =>
                {
                    tracing::debug!(error = %e, attempt, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    tracing::debug!(error = ?e, "{method} {path} failed");
                    return Err(Error::Network {
                        registry: self.registry.clone(),
                        message: describe(&self.registry, &e, used_https),
                    });
                }
            }
        }
    }

    /// Turns an unexpected answer into the registry's error.
    pub async fn fail(&self, r: reqwest::Response) -> Error {
        let status = r.status();
        let body = r.bytes().await.unwrap_or_default();
        error_of(&self.registry, status, &body)
    }
}

/// `scheme://host[:port]` of a URL, for same-origin checks.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Why a request got no answer, as a category: each is told to the user in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on the port (connection refused).
    Refused,
    /// TLS was spoken to a port that answers plain HTTP.
    TlsToPlain,
    /// Plain HTTP was spoken to a port that speaks TLS (the server dropped the connection).
    PlainToTls,
    /// The server's certificate is not trusted.
    Certificate,
    /// No answer in time.
    Timeout,
    /// Anything else (a reset connection, a proxy error…).
    Other,
}

/// The texts of an error and its sources, lowercased, for matching.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> (String, Option<std::io::ErrorKind>) {
    let mut text = String::new();
    let mut kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        text.push_str(&s.to_string().to_ascii_lowercase());
        text.push('\n');
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            kind = kind.or(Some(io.kind()));
        }
        source = s.source();
    }
    (text, kind)
}

/// Classifies a failed request; `https` says which scheme it used. A library function so that
/// every frontend (`berth`, the node's pulls) names causes the same way.
pub fn classify(e: &reqwest::Error, https: bool) -> Failure {
    let (text, kind) = chain_text(e);
    if text.contains("dns error")
        || text.contains("failed to lookup address")
        || text.contains("name or service not known")
    {
        Failure::Dns
    } else if kind == Some(std::io::ErrorKind::ConnectionRefused) || text.contains("connection refused") {
        Failure::Refused
    } else if https && (text.contains("certificate") || text.contains("unknownissuer")) {
        Failure::Certificate
    } else if https
        && (text.contains("corrupt message")
            || text.contains("invalidcontenttype")
            || text.contains("invalid content type")
            || text.contains("wrong version number")
            || text.contains("record overflow"))
    {
        Failure::TlsToPlain
    } else if e.is_timeout() || kind == Some(std::io::ErrorKind::TimedOut) {
        Failure::Timeout
    } else if !https
        && !e.is_connect()
        && (text.contains("connection closed before message completed")
            || text.contains("invalid http version")
            || text.contains("connection reset")
            || text.contains("unexpected eof")
            || text.contains("invalid status code")
            || text.contains("error parsing"))
    {
        Failure::PlainToTls
    } else {
        Failure::Other
    }
}

/// A one-line message for a request to `registry` that got no answer, naming the cause and
/// what to do (not reqwest's "error sending request for url").
pub fn describe(registry: &str, e: &reqwest::Error, https: bool) -> String {
    let (host, port) = match crate::reference::split_host_port(registry) {
        Some((h, Some(p))) => (h, p.to_owned()),
        Some((h, None)) => (h, if https { "443" } else { "80" }.to_owned()),
        None => (registry, String::new()),
    };
    match classify(e, https) {
        Failure::Dns => format!("cannot resolve the host name {host:?}: check the spelling of the registry's name (or use its IP address)"),
        Failure::Refused => format!(
            "connection refused: nothing listens on {host} port {port}; is the registry running, and is the port right?"
        ),
        Failure::TlsToPlain => format!(
            "{host} port {port} answers plain HTTP, not TLS: pass --plain-http if this registry is meant to run without TLS"
        ),
        Failure::PlainToTls => format!(
            "{host} port {port} dropped a plain-HTTP request: it probably speaks HTTPS; drop --plain-http"
        ),
        Failure::Certificate => format!(
            "the registry's TLS certificate is not trusted ({}): add its CA to /etc/docker/certs.d/{registry}/ca.crt or the system store, or pass --insecure",
            first_line(e)
        ),
        Failure::Timeout => format!("{host} port {port} did not answer in time: check the address, the network and any firewall"),
        Failure::Other => first_line(e),
    }
}

/// The error and its sources on one line, each said once.
fn first_line(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

/// Whether the server spoke TLS but its certificate was refused: not a reason to fall back
/// to plain HTTP.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("unknownissuer") {
            return true;
        }
        source = s.source();
    }
    false
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(6))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) =
            challenge_params(r#"Bearer realm="https://h/token",service="berth",scope="repository:a:pull,push""#);
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://h/token");
        assert_eq!(p["scope"], "repository:a:pull,push");
        let (s, p) = challenge_params(r#"Basic realm="x""#);
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "x"));
        assert_eq!(urlencode("a b:c"), "a%20b%3Ac");
        assert_eq!(origin("https://h:5000/v2/x?y"), "https://h:5000");
        assert_eq!(origin("http://h"), "http://h");
    }

    #[test]
    fn errors_name_code_and_hint() {
        let e = error_of(
            "h:5000",
            StatusCode::UNAUTHORIZED,
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        assert_eq!(
            e.to_string(),
            "h:5000: UNAUTHORIZED: authentication required (run `berth login h:5000`)"
        );
        let e = error_of("h", StatusCode::NOT_FOUND, b"404 page not found");
        assert_eq!(e.to_string(), "h: NOT_FOUND: 404 page not found");
    }
}
