//! `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, paginated with `n`/`last` and `Link`.

use super::error::{AppError, Code};
use crate::AppState;
use axum::extract::{Query, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Page {
    n: Option<String>,
    last: Option<String>,
}

/// The page size asked for, capped by the configured page size (bounds one request's work).
fn page(state: &AppState, req: &Request) -> Result<(u32, Option<String>), AppError> {
    let p: Page = Query::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    let n = match p.n.as_deref() {
        None | Some("") => state.config.page_size,
        Some(s) => s
            .parse::<u32>()
            .map_err(|_| AppError::new(Code::PaginationNumberInvalid, format!("n={s} is not a number")))?
            .min(state.config.page_size),
    };
    Ok((n, p.last.filter(|l| !l.is_empty())))
}

/// Answers one page; `items` holds up to n+1 entries, the extra one only telling that a next
/// page exists.
fn answer(mut items: Vec<String>, n: u32, base: &str, key: &str, extra: serde_json::Value) -> Response {
    let more = items.len() > n as usize;
    items.truncate(n as usize);
    let mut body = extra;
    body[key] = serde_json::json!(items);
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if more {
        if let Some(last) = items.last() {
            let link = format!("<{base}?n={n}&last={last}>; rel=\"next\"");
            if let Ok(v) = link.parse() {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
    }
    resp
}

pub(super) async fn tags(state: &AppState, name: &str, req: Request) -> Result<Response, AppError> {
    let (n, last) = page(state, &req)?;
    let tags = if n == 0 {
        // Still answers NAME_UNKNOWN for a repository that does not exist.
        state.meta.tags(name, 0, None).await?
    } else {
        state.meta.tags(name, n + 1, last.as_deref()).await?
    };
    Ok(answer(
        tags,
        n,
        &format!("/v2/{name}/tags/list"),
        "tags",
        serde_json::json!({ "name": name }),
    ))
}

pub(super) async fn catalog(state: &AppState, req: Request) -> Result<Response, AppError> {
    let (n, last) = page(state, &req)?;
    let repos = if n == 0 {
        Vec::new()
    } else {
        state.meta.catalog(n + 1, last.as_deref()).await?
    };
    Ok(answer(repos, n, "/v2/_catalog", "repositories", serde_json::json!({})))
}
