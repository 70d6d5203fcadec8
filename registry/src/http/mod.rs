//! HTTP layer: routing, one module per resource, and per-request context.
//!
//! Repository names contain `/`, so `/v2/<name>/…` cannot be matched by a router pattern:
//! [`parse_route`] reads the path from its end (the resource keyword is always the second- or
//! third-to-last segment) and handlers receive an already validated name.

mod berth;
mod blobs;
mod body;
mod catalog;
pub mod error;
mod manifests;
mod referrers;
mod token;
mod uploads;

use crate::auth::Need;
use crate::config::Action;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use berth_oci::{validate_repository, Digest};
use error::{AppError, Code};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

/// The request as a route: which resource, for which repository.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(String),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(String, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(String, String),
    /// `/v2/<name>/blobs/uploads/` (empty id) or `/v2/<name>/blobs/uploads/<id>`
    Upload(String, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(String, String),
}

/// Maps a `/v2/…` path (percent-decoded) to a route; `None` when it names no resource.
pub(crate) fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| segs[..n - k].join("/");
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Some(Route::Tags(name(2)));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        return Some(Route::Upload(name(3), segs[n - 1].to_owned()));
    }
    if n >= 3 {
        let last = segs[n - 1].to_owned();
        match segs[n - 2] {
            "manifests" => return Some(Route::Manifest(name(2), last)),
            "blobs" => return Some(Route::Blob(name(2), last)),
            "referrers" => return Some(Route::Referrers(name(2), last)),
            _ => {}
        }
    }
    None
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a digest from a path or query, as the spec's DIGEST_INVALID on failure.
pub(crate) fn parse_digest(s: &str) -> Result<Digest, AppError> {
    s.parse().map_err(AppError::digest_invalid)
}

/// The router: the whole HTTP surface of the registry.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/token", get(token::get).post(token::post))
        .route("/berth/v1/nodes/{node}/in-use", axum::routing::put(berth::report))
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*path}", any(dispatch))
        .fallback(|| async { AppError::new(Code::NotFound, "no such endpoint: the registry API lives under /v2/") })
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.meta.ping().await;
    let store = state.blobs.ping().await;
    match (db, store) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        (db, store) => {
            // Causes go to the log; the probe (often unauthenticated) learns only which part.
            if let Err(e) = &db {
                tracing::warn!(error = %e, "not ready: database");
            }
            if let Err(e) = &store {
                tracing::warn!(error = %e, "not ready: storage");
            }
            let part = |r: &Result<(), _>| if r.is_ok() { "ok" } else { "fail" };
            let msg = format!("not ready: database {}, storage {}\n", part(&db), part(&store));
            (StatusCode::SERVICE_UNAVAILABLE, msg).into_response()
        }
    }
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    match route(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(state: &AppState, req: Request) -> Result<Response, AppError> {
    let path = percent_decode(req.uri().path()).ok_or_else(|| {
        AppError::new(Code::Unsupported, "the request path is not valid UTF-8").status(StatusCode::BAD_REQUEST)
    })?;
    let route = parse_route(&path).ok_or_else(|| AppError::new(Code::NotFound, format!("no such endpoint: {path}")))?;
    let name = match &route {
        Route::Tags(n) | Route::Manifest(n, _) | Route::Blob(n, _) | Route::Upload(n, _) | Route::Referrers(n, _) => {
            Some(n.as_str())
        }
        Route::Base | Route::Catalog => None,
    };
    if let Some(name) = name {
        validate_repository(name).map_err(AppError::name_invalid)?;
        tracing::Span::current().record("repo", name);
    }
    let method = req.method().clone();
    let mut needs = needs_of(&route, &method);
    if let (Route::Upload(_, id), &Method::POST) = (&route, &method) {
        if id.is_empty() {
            if let Some(from) = mount_source(req.uri()) {
                needs.push(Need::Hint(from, Action::Pull));
            }
        }
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let access = state.auth.authorize(req.headers(), peer, &needs).await?;
    match route {
        Route::Base => match method {
            Method::GET | Method::HEAD => {
                Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
            }
            m => Err(AppError::method(&m, "/v2/")),
        },
        Route::Catalog => match method {
            Method::GET => catalog::catalog(state, req).await,
            m => Err(AppError::method(&m, "the catalog")),
        },
        Route::Tags(name) => match method {
            Method::GET => catalog::tags(state, &name, req).await,
            m => Err(AppError::method(&m, "tags")),
        },
        Route::Manifest(name, reference) => match method {
            Method::GET | Method::HEAD => manifests::get(state, &name, &reference, method == Method::HEAD).await,
            Method::PUT => manifests::put(state, &name, &reference, req).await,
            Method::DELETE => manifests::delete(state, &name, &reference).await,
            m => Err(AppError::method(&m, "manifests")),
        },
        Route::Blob(name, digest) => match method {
            Method::GET | Method::HEAD => blobs::get(state, &name, &digest, method == Method::HEAD, req).await,
            Method::DELETE => blobs::delete(state, &name, &digest).await,
            m => Err(AppError::method(&m, "blobs")),
        },
        Route::Upload(name, id) => match (method, id.is_empty()) {
            (Method::POST, true) => uploads::start(state, &access, &name, req).await,
            (Method::GET, false) => uploads::status(state, &name, &id).await,
            (Method::PATCH, false) => uploads::patch(state, &name, &id, req).await,
            (Method::PUT, false) => uploads::put(state, &name, &id, req).await,
            (Method::DELETE, false) => uploads::cancel(state, &name, &id).await,
            (m, _) => Err(AppError::method(&m, "this upload URL")),
        },
        Route::Referrers(name, digest) => match method {
            Method::GET => referrers::list(state, &name, &digest, req).await,
            m => Err(AppError::method(&m, "referrers")),
        },
    }
}

/// The `from` of a cross-repository mount request, if valid.
fn mount_source(uri: &axum::http::Uri) -> Option<String> {
    let q = uri.query()?;
    let mut mount = false;
    let mut from = None;
    for pair in q.split('&') {
        match pair.split_once('=') {
            Some(("mount", _)) => mount = true,
            Some(("from", v)) => from = percent_decode(v),
            _ => {}
        }
    }
    from.filter(|f| mount && validate_repository(f).is_ok())
}

/// What a request needs to be allowed: the action its method and resource imply.
fn needs_of(route: &Route, method: &Method) -> Vec<Need> {
    let repo = |n: &str, a: Action| vec![Need::Repo(n.to_owned(), a)];
    match (route, method) {
        (Route::Base, _) => vec![Need::Login],
        (Route::Catalog, _) => vec![Need::Catalog],
        (Route::Tags(n) | Route::Referrers(n, _), _) => repo(n, Action::Pull),
        (Route::Manifest(n, _) | Route::Blob(n, _), &Method::GET | &Method::HEAD) => repo(n, Action::Pull),
        (Route::Manifest(n, _) | Route::Blob(n, _), &Method::DELETE) => repo(n, Action::Delete),
        (Route::Manifest(n, _), _) | (Route::Upload(n, _), _) => repo(n, Action::Push),
        (Route::Blob(n, _), _) => repo(n, Action::Pull),
    }
}

/// The client a request came from: the connection's peer, or, when that is one of the
/// configured `trusted_proxies`, the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (earlier entries are whatever the client claimed).
fn client_address(state: &AppState, peer: Option<std::net::IpAddr>, headers: &axum::http::HeaderMap) -> String {
    let Some(peer) = peer else {
        return "-".to_owned();
    };
    if !state.config.is_trusted_proxy(peer) {
        return peer.to_string();
    }
    let forwarded: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !state.config.is_trusted_proxy(**ip))
        .or(forwarded.first())
        .unwrap_or(&peer)
        .to_string()
}

/// Gives every request an id (the client's `X-Request-Id`, or a new one), a tracing span that
/// carries it, one log line on completion, and the headers every /v2 response carries.
///
/// The line says who (`principal`: the account, or `anonymous`; recorded by the
/// authenticator), from where (`client`), what (method, path, repo), the status, the bytes
/// received (counted as the handler reads the body: chunked uploads have no length) and sent
/// (the response's length; a streamed body is sent after this line), and the time taken.
async fn request_context(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    // HTTP/2 carries the host in the URI's authority, not in a Host header; the token realm
    // in auth challenges is built from Host, so give every request one.
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:x}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = client_address(&state, peer, req.headers());
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        repo = tracing::field::Empty,
        principal = tracing::field::Empty,
        client = %client,
    );
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let head = req.method() == Method::HEAD;
    let req = {
        let counter = received.clone();
        let (parts, body) = req.into_parts();
        let counted = futures::TryStreamExt::map_ok(body.into_data_stream(), move |b| {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            b
        });
        Request::from_parts(parts, Body::from_stream(counted))
    };
    let started = std::time::Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let sent = if head {
        0
    } else {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| axum::body::HttpBody::size_hint(resp.body()).exact())
            .unwrap_or(0)
    };
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            bytes_in = received.load(Ordering::Relaxed),
            bytes_out = sent,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "done"
        );
    });
    let h = resp.headers_mut();
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |p: &str| parse_route(p);
        assert_eq!(r("/v2/"), Some(Route::Base));
        assert_eq!(r("/v2"), Some(Route::Base));
        assert_eq!(r("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(r("/v2/a/b/tags/list"), Some(Route::Tags("a/b".into())));
        assert_eq!(r("/v2/a/manifests/v1"), Some(Route::Manifest("a".into(), "v1".into())));
        assert_eq!(
            r("/v2/a/blobs/sha256:x"),
            Some(Route::Blob("a".into(), "sha256:x".into()))
        );
        assert_eq!(r("/v2/a/blobs/uploads/"), Some(Route::Upload("a".into(), "".into())));
        assert_eq!(
            r("/v2/a/blobs/uploads/u1"),
            Some(Route::Upload("a".into(), "u1".into()))
        );
        // A repository may itself contain the keywords.
        assert_eq!(
            r("/v2/blobs/manifests/manifests/x"),
            Some(Route::Manifest("blobs/manifests".into(), "x".into()))
        );
        assert_eq!(
            r("/v2/a/referrers/sha256:x"),
            Some(Route::Referrers("a".into(), "sha256:x".into()))
        );
        assert_eq!(r("/v2/a"), None);
        assert_eq!(r("/v3/a/tags/list"), None);
        assert_eq!(percent_decode("sha256%3Aab").as_deref(), Some("sha256:ab"));
        assert_eq!(percent_decode("%zz"), None);
    }
}
