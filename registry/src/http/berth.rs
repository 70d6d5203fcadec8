//! Berth's extension endpoints, under `/berth/v1/` (outside the distribution spec's `/v2/`).
//!
//! `PUT /berth/v1/nodes/<node>/in-use` with `{"manifests": [{"repository": R, "digest": D}]}`:
//! a `berth-node` reports the manifests its containers use (at `run`, `rm`, and whenever it
//! likes). Each stays pinned for `governance.node_report_window_secs` after the report that
//! last named it: retention and garbage collection keep it and everything under it. The
//! caller must be allowed to pull every repository it names (a node's registry credentials
//! are), so a report cannot hold content its sender could not see.

use super::error::{AppError, Code};
use crate::auth::Need;
use crate::config::Action;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_oci::{validate_repository, Digest};
use std::net::SocketAddr;

/// Most manifests one report may name: bounds the work of one request.
const MAX_REPORTED: usize = 10_000;
/// Largest report body.
const MAX_BODY: usize = 4 << 20;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    manifests: Vec<InUse>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InUse {
    repository: String,
    digest: String,
}

fn invalid(msg: impl Into<String>) -> AppError {
    AppError::new(Code::Unsupported, msg).status(StatusCode::BAD_REQUEST)
}

pub(super) async fn report(
    State(state): State<AppState>,
    Path(node): Path<String>,
    req: Request<Body>,
) -> Result<Response, AppError> {
    if node.is_empty()
        || node.len() > 128
        || !node
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(invalid("node names are 1 to 128 letters, digits, '.', '_' or '-'"));
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| invalid(format!("reading the report failed (at most {MAX_BODY} bytes): {e}")))?;
    let report: Report = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "the report is not {{\"manifests\": [{{\"repository\", \"digest\"}}]}}: {e}"
        ))
    })?;
    if report.manifests.len() > MAX_REPORTED {
        return Err(invalid(format!("a report names at most {MAX_REPORTED} manifests")));
    }
    let mut in_use = Vec::with_capacity(report.manifests.len());
    let mut needs = vec![Need::Login];
    for m in report.manifests {
        validate_repository(&m.repository).map_err(AppError::name_invalid)?;
        let d: Digest = super::parse_digest(&m.digest)?;
        if !needs
            .iter()
            .any(|n| matches!(n, Need::Repo(r, _) if *r == m.repository))
        {
            needs.push(Need::Repo(m.repository.clone(), Action::Pull));
        }
        in_use.push((m.repository, d.to_string()));
    }
    state.auth.authorize(&headers, peer, &needs).await?;
    let window = i64::try_from(state.config.governance.node_report_window_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    state.meta.report_in_use(&node, &in_use, window).await?;
    tracing::info!(node, manifests = in_use.len(), "node reported the manifests it uses");
    Ok(StatusCode::NO_CONTENT.into_response())
}
