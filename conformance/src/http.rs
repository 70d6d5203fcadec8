//! The one HTTP client the runner uses, and the authentication dance of the distribution spec.
//!
//! Every request goes through [`Registry::send`], which captures the whole reply (status,
//! headers, body) so that a check can assert on all three and quote them when it fails.
//!
//! Redirects are never followed: a `Location` header is a protocol value the checks inspect
//! (upload sessions, pushed blobs), not a hop for the client to take behind our back. Relative
//! locations are resolved against the registry's base URL, as clients must.
//!
//! # Authentication
//! A request is sent with whatever credentials are cached for its repository. On
//! `401 Unauthorized`, the `WWW-Authenticate` challenge decides:
//! - `Basic`: the `--user`/`--password` pair is sent from then on, on every request;
//! - `Bearer realm=…,service=…,scope=…`: a token is fetched from the realm (with the basic pair
//!   when given) and cached per repository; the request is retried once. A token that later
//!   draws a 401 (say, a pull-only token used for a push) is replaced by one for the new
//!   challenge's scope.

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A username and password given on the command line.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password (or a personal access token).
    pub password: String,
}

/// What is cached after a challenge has been answered.
#[derive(Default)]
struct AuthCache {
    /// The registry asked for `Basic`: send it on every request.
    basic: bool,
    /// `Authorization` header values (`Bearer …`), keyed by repository name ("" for `/v2/` and
    /// the catalog).
    bearer: HashMap<String, String>,
}

/// A registry reached over HTTP, with authentication handled transparently.
pub struct Registry {
    client: reqwest::Client,
    base: Url,
    credentials: Option<Credentials>,
    auth: Mutex<AuthCache>,
}

/// A request body. Kept as data, not as a `reqwest::Body`, so that the request can be rebuilt
/// and sent again after an authentication challenge.
#[derive(Clone, Default)]
pub enum Body {
    /// No body at all.
    #[default]
    None,
    /// A body of known length: `Content-Length` is set.
    Bytes(Bytes),
    /// A body sent as a stream of these chunks: `Transfer-Encoding: chunked`, no length, the way
    /// docker streams a layer.
    Stream(Vec<Bytes>),
}

/// A request under construction: see [`Registry::call`].
pub struct Call<'a> {
    registry: &'a Registry,
    method: Method,
    url: Result<Url>,
    headers: HeaderMap,
    body: Body,
    anonymous: bool,
}

/// A captured reply: everything a check may assert on.
#[derive(Debug)]
pub struct Reply {
    /// The request method, for messages.
    pub method: Method,
    /// The request URL, for messages and for resolving relative headers.
    pub url: Url,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole response body (empty when it could not be read).
    pub body: Bytes,
    /// Why the body could not be read, when it could not.
    pub body_error: Option<String>,
}

impl Registry {
    /// A client for the registry at `base` (scheme, host, port; the API lives under `/v2/`).
    pub fn new(base: Url, credentials: Option<Credentials>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // Generous: a 1 MiB upload on a slow CI machine, but a hung registry must not hang
            // the run forever.
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Registry {
            client,
            base,
            credentials,
            auth: Mutex::new(AuthCache::default()),
        })
    }

    /// The base URL given on the command line.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Whether `--user`/`--password` were given.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Resolves a path (`/v2/…`), a relative `Location` or an absolute URL against the base.
    pub fn resolve(&self, target: &str) -> Result<Url> {
        self.base
            .join(target)
            .with_context(|| format!("cannot resolve {target:?} against {}", self.base))
    }

    /// Starts a request to `target` (see [`Registry::resolve`]).
    pub fn call(&self, method: Method, target: &str) -> Call<'_> {
        Call {
            registry: self,
            method,
            url: self.resolve(target),
            headers: HeaderMap::new(),
            body: Body::None,
            anonymous: false,
        }
    }

    /// Starts a request to an already resolved URL.
    pub fn call_url(&self, method: Method, url: Url) -> Call<'_> {
        Call {
            registry: self,
            method,
            url: Ok(url),
            headers: HeaderMap::new(),
            body: Body::None,
            anonymous: false,
        }
    }

    /// Attaches whatever credentials are known for `key`.
    fn authorize(&self, request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
        let cache = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = cache.bearer.get(key) {
            return request.header(AUTHORIZATION, token.as_str());
        }
        match &self.credentials {
            Some(c) if cache.basic => request.basic_auth(&c.user, Some(&c.password)),
            _ => request,
        }
    }

    /// Sends a request, answering at most one authentication challenge.
    async fn send(&self, method: Method, url: Url, headers: HeaderMap, body: Body, anonymous: bool) -> Result<Reply> {
        let key = auth_key(&url);
        let mut answered = false;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if !anonymous {
                request = self.authorize(request, &key);
            }
            request = match &body {
                Body::None => request,
                Body::Bytes(b) => request.body(b.clone()),
                Body::Stream(chunks) => {
                    let chunks: Vec<Result<Bytes, std::io::Error>> = chunks.iter().cloned().map(Ok).collect();
                    request.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
                }
            };
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {}", show_url(&url)))?;
            let status = response.status();
            let headers_in = response.headers().clone();
            // A body that breaks off (say, a `Content-Length` the registry then does not honour)
            // is recorded, not raised: the status and headers still arrived, and a check that
            // asserts only on them should report on them.
            let (reply_body, body_error) = match response.bytes().await {
                Ok(b) => (b, None),
                Err(e) => (Bytes::new(), Some(format!("{:#}", anyhow::Error::from(e)))),
            };
            let reply = Reply {
                method: method.clone(),
                url: url.clone(),
                status,
                headers: headers_in,
                body: reply_body,
                body_error,
            };
            if status != StatusCode::UNAUTHORIZED || answered || anonymous {
                return Ok(reply);
            }
            answered = true;
            if !self.answer_challenge(&reply, &key).await? {
                return Ok(reply);
            }
        }
    }

    /// Obtains credentials for a 401; `false` when there is nothing we can do about it.
    async fn answer_challenge(&self, reply: &Reply, key: &str) -> Result<bool> {
        let Some(raw) = reply.headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
            return Ok(false);
        };
        let challenge =
            Challenge::parse(raw).with_context(|| format!("unparseable WWW-Authenticate header {raw:?}"))?;
        match challenge.scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Ok(false);
                }
                let mut cache = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                cache.basic = true;
                cache.bearer.remove(key);
                Ok(true)
            }
            "bearer" => {
                let token = self.fetch_token(&challenge).await?;
                let mut cache = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                cache.bearer.insert(key.to_owned(), format!("Bearer {token}"));
                Ok(true)
            }
            other => bail!("unsupported authentication scheme {other:?} in {raw:?}"),
        }
    }

    /// `GET <realm>?service=…&scope=…` (one `scope` per space-separated scope, as the token
    /// specification allows), basic credentials attached when we have them.
    async fn fetch_token(&self, challenge: &Challenge) -> Result<String> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| anyhow!("Bearer challenge without a realm"))?;
        let mut url = self.resolve(realm).with_context(|| format!("token realm {realm:?}"))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            for scope in challenge.param("scope").unwrap_or("").split(' ') {
                if !scope.is_empty() {
                    query.append_pair("scope", scope);
                }
            }
        }
        let mut request = self.client.get(url.clone());
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.user, Some(&c.password));
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("token request to {}", show_url(&url)))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the token reply")?;
        if !status.is_success() {
            bail!(
                "token request to {} answered {status}: {}",
                show_url(&url),
                excerpt(&body)
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).with_context(|| format!("token reply is not JSON: {}", excerpt(&body)))?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|t| t.as_str()))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("token reply has no token: {}", excerpt(&body)))
    }
}

impl<'a> Call<'a> {
    /// Adds a header. Invalid names or values are programming errors in the runner; they are
    /// reported when the call is sent.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => self.url = Err(anyhow!("invalid header {name}: {value:?}")),
        }
        self
    }

    /// Appends a query parameter, form-encoded (so `+` in a media type survives).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        if let Ok(url) = &mut self.url {
            url.query_pairs_mut().append_pair(key, value);
        }
        self
    }

    /// Sends no credentials and answers no challenge: for hops off the registry (a blob
    /// redirected to object storage), which must not see the registry's credentials.
    pub fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// Sets a body of known length.
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Body::Bytes(body);
        self
    }

    /// Sets a body streamed in these chunks, with no `Content-Length`.
    pub fn stream(mut self, chunks: Vec<Bytes>) -> Self {
        self.body = Body::Stream(chunks);
        self
    }

    /// Sends the request and captures the reply. Errors are transport failures only: any HTTP
    /// status, 4xx and 5xx included, is a reply.
    pub async fn send(self) -> Result<Reply> {
        let url = self.url?;
        self.registry
            .send(self.method, url, self.headers, self.body, self.anonymous)
            .await
    }
}

impl Reply {
    /// A header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `METHOD /path?query`, for messages.
    pub fn request_line(&self) -> String {
        format!("{} {}", self.method, show_url(&self.url))
    }

    /// The first bytes of the body as one line of text, for messages.
    pub fn excerpt(&self) -> String {
        match &self.body_error {
            Some(e) => format!("(body unreadable: {e})"),
            None => excerpt(&self.body),
        }
    }
}

/// The path and query of a URL (the host is the same for every request of a run), with long
/// opaque query values (upload state tokens) cut short so that a `FAIL` line stays readable.
pub fn show_url(url: &Url) -> String {
    let Some(query) = url.query() else {
        return url.path().to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if v.len() > 80 => {
                format!("{k}={}…", v.chars().take(12).collect::<String>())
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", url.path(), parts.join("&"))
}

/// At most 200 characters of a body, on one line.
pub fn excerpt(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The repository a URL addresses ("" for `/v2/` and `/v2/_catalog`): the unit tokens are
/// scoped to, hence the key of the token cache.
fn auth_key(url: &Url) -> String {
    let Some(rest) = url.path().strip_prefix("/v2/") else {
        return String::new();
    };
    // A cross-repository mount needs a token that also covers pull on the source: its own
    // cache entry makes the first attempt draw the registry's challenge, whose scope names
    // both repositories (as docker asks for both).
    if let Some(from) = url
        .query_pairs()
        .find(|(k, _)| k == "from")
        .map(|(_, v)| v.into_owned())
    {
        if let Some(i) = rest.find("/blobs/uploads/") {
            return format!("{} mount-from {from}", &rest[..i]);
        }
    }
    for marker in ["/blobs/", "/manifests/", "/tags/", "/referrers/"] {
        if let Some(i) = rest.find(marker) {
            return rest[..i].to_owned();
        }
    }
    String::new()
}

/// A parsed `WWW-Authenticate` challenge: `Scheme k="v", k2=v2`.
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let (scheme, rest) = match raw.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r),
            None => (raw, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_owned();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek() {
                    if *c == ',' {
                        break;
                    }
                    value.push(*c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            params.push((key.to_ascii_lowercase(), value));
        }
        Some(Challenge {
            scheme: scheme.to_owned(),
            params,
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push repository:c:pull""#,
        )
        .expect("a valid challenge");
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push repository:c:pull"));
    }

    #[test]
    fn parses_basic_challenge() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).expect("a valid challenge");
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        let bare = Challenge::parse("Basic").expect("a bare scheme");
        assert!(bare.params.is_empty());
    }

    #[test]
    fn keys_tokens_by_repository() {
        let key = |p: &str| auth_key(&Url::parse(&format!("http://h{p}")).expect("a URL"));
        assert_eq!(key("/v2/"), "");
        assert_eq!(key("/v2/_catalog"), "");
        assert_eq!(key("/v2/a/b/blobs/uploads/x"), "a/b");
        assert_eq!(key("/v2/a/manifests/latest"), "a");
        assert_eq!(key("/v2/a/b/tags/list"), "a/b");
    }
}
