//! `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: an image index of the manifests whose
//! `subject` is the digest. Never 404 for an unknown digest: an empty index.

use super::error::AppError;
use super::parse_digest;
use crate::AppState;
use axum::extract::{Query, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_oci::media;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    artifact_type: Option<String>,
}

pub(super) async fn list(state: &AppState, name: &str, digest: &str, req: Request) -> Result<Response, AppError> {
    let digest = parse_digest(digest)?;
    let f: Filter = Query::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    let filter = f.artifact_type.filter(|a| !a.is_empty());
    let manifests = state.meta.referrers(name, &digest, filter.as_deref()).await?;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = ([(header::CONTENT_TYPE, media::OCI_INDEX)], body.to_string()).into_response();
    if filter.is_some() {
        resp.headers_mut()
            .insert("oci-filters-applied", header::HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
