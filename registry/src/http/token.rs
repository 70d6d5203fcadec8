//! `/token`: the Docker token service. `GET` (distribution docs/spec/auth/token.md) with Basic
//! credentials or anonymously and repeated `scope`; `POST` (oauth.md) with
//! `grant_type=password` or `refresh_token`. Answers 404 unless the registry runs in token mode.

use super::error::{AppError, Code};
use crate::auth::basic_credentials;
use crate::auth::rules::Principal;
use crate::config::AuthMode;
use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

fn require_token_mode(state: &AppState) -> Result<(), AppError> {
    if state.auth.mode() == AuthMode::Token {
        Ok(())
    } else {
        Err(AppError::new(
            Code::Unsupported,
            "this registry does not run in token auth mode (start it with --auth token)",
        )
        .status(StatusCode::NOT_FOUND))
    }
}

fn no_store(answer: crate::auth::TokenAnswer) -> Response {
    let body = serde_json::to_string(&answer).unwrap_or_default();
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn get(State(state): State<AppState>, req: Request) -> Response {
    let ip = peer(&req);
    let credentials = basic_credentials(req.headers());
    let query = req.uri().query().unwrap_or("").to_owned();
    let run = async {
        require_token_mode(&state)?;
        let mut scopes = Vec::new();
        let mut offline = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "scope" => scopes.push(v.into_owned()),
                "offline_token" => offline = v == "true",
                _ => {}
            }
        }
        let p = match credentials {
            Some((u, pw)) => state.auth.login(&u, &pw, ip).await?,
            None => Principal::Anonymous,
        };
        state.auth.answer(&p, &scopes, offline).await
    };
    match run.await {
        Ok(a) => no_store(a),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn post(State(state): State<AppState>, req: Request) -> Response {
    let ip = peer(&req);
    let run = async {
        require_token_mode(&state)?;
        let (parts, body) = req.into_parts();
        let body =
            super::body::read_capped(&parts.headers, body, 64 * 1024, Code::Unsupported, "token request").await?;
        let mut f = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(&body) {
            f.insert(k.into_owned(), v.into_owned());
        }
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let scopes: Vec<String> = field("scope")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let (p, refresh) = match field("grant_type") {
            "password" => (
                state.auth.login(field("username"), field("password"), ip).await?,
                field("access_type") == "offline",
            ),
            "refresh_token" => (state.auth.refresh_principal(field("refresh_token")).await?, false),
            other => {
                return Err(AppError::new(
                    Code::Unsupported,
                    format!("grant_type {other:?} is not supported: use password or refresh_token"),
                )
                .status(StatusCode::BAD_REQUEST))
            }
        };
        let mut answer = state.auth.answer(&p, &scopes, refresh).await?;
        if field("grant_type") == "refresh_token" {
            // The client keeps using the refresh token it has.
            answer.refresh_token = Some(field("refresh_token").to_owned());
        }
        Ok::<_, AppError>(answer)
    };
    match run.await {
        Ok(a) => no_store(a),
        Err(e) => e.into_response(),
    }
}
