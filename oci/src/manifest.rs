//! What a registry must understand of a manifest: its type, the content it references, its
//! subject and artifact type. The body itself is always stored and served byte-exact; this
//! parse never rewrites it.

use crate::digest::Digest;
use crate::media;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type (referrers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations, kept for the referrers response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// External URLs: such layers need not be in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Platform of an index child, opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Schema 1 markers, to refuse it with a clear message.
    fs_layers: Option<serde_json::Value>,
}

/// Why a manifest body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Malformed or inconsistent: the spec's MANIFEST_INVALID.
    #[error("{0}")]
    Invalid(String),
    /// A manifest kind this registry does not store (Docker schema 1).
    #[error("{0}")]
    Unsupported(String),
}

/// The registry-relevant facts of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    /// Resolved media type: the Content-Type, the body's `mediaType`, or inferred.
    pub media_type: String,
    /// Blobs the manifest needs (config + layers), excluding foreign layers.
    pub blobs: Vec<Descriptor>,
    /// Child manifests (index only).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to, for the referrers API.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    /// Top-level annotations, echoed in referrers listings.
    pub annotations: Option<BTreeMap<String, String>>,
}

fn strip_params(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Parses `body`, uploaded with `content_type` (if any).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ManifestError::Invalid(format!("manifest is not valid JSON of the expected shape: {e}")))?;
    let ct = content_type.map(strip_params).filter(|c| !c.is_empty());
    // A generic JSON content type says nothing about the manifest kind.
    let ct = ct.filter(|c| *c != "application/json" && *c != "application/octet-stream");

    if raw.fs_layers.is_some()
        || raw.schema_version == Some(1)
        || ct.is_some_and(|c| c == media::DOCKER_SCHEMA1 || c == media::DOCKER_SCHEMA1_SIGNED)
    {
        return Err(ManifestError::Unsupported(
            "Docker schema 1 manifests are not supported: push with a current client (docker ≥ 1.10 writes schema 2)"
                .into(),
        ));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
    }
    let media_type = match (ct, raw.media_type.as_deref()) {
        (Some(c), Some(b)) if c != b => {
            return Err(ManifestError::Invalid(format!(
                "mediaType {b:?} in the manifest does not match Content-Type {c:?}"
            )))
        }
        (Some(c), _) => c.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
        (None, None) => media::OCI_MANIFEST.to_owned(),
    };
    if !media::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(ManifestError::Invalid(format!(
            "unsupported manifest media type {media_type:?}; expected one of {}",
            media::MANIFEST_TYPES.join(", ")
        )));
    }
    let (blobs, manifests, artifact_type) = if media::is_index(&media_type) {
        let manifests = raw
            .manifests
            .ok_or_else(|| ManifestError::Invalid("an index must have a \"manifests\" array".into()))?;
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid(
                "an index must not have \"config\" or \"layers\"".into(),
            ));
        }
        (Vec::new(), manifests, raw.artifact_type)
    } else {
        let config = raw
            .config
            .ok_or_else(|| ManifestError::Invalid("an image manifest must have a \"config\" descriptor".into()))?;
        let layers = raw
            .layers
            .ok_or_else(|| ManifestError::Invalid("an image manifest must have a \"layers\" array".into()))?;
        if raw.manifests.is_some() {
            return Err(ManifestError::Invalid(
                "an image manifest must not have \"manifests\"".into(),
            ));
        }
        let artifact_type = raw.artifact_type.or_else(|| Some(config.media_type.clone()));
        let mut blobs = vec![config];
        blobs.extend(
            layers
                .into_iter()
                .filter(|l| !media::FOREIGN_LAYERS.contains(&l.media_type.as_str()) && l.urls.is_none()),
        );
        (blobs, Vec::new(), artifact_type)
    };
    Ok(ParsedManifest {
        media_type,
        blobs,
        manifests,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn image_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]}}"#,
            media::OCI_MANIFEST
        );
        let m = parse(body.as_bytes(), Some(media::OCI_MANIFEST)).expect("valid");
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(parse(body.as_bytes(), None).is_ok());
        assert!(matches!(
            parse(body.as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn index_and_errors() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":2}}]}}"#,
            media::OCI_MANIFEST
        );
        let m = parse(body.as_bytes(), Some(media::OCI_INDEX)).expect("valid");
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.media_type, media::OCI_INDEX);
        assert!(matches!(parse(b"{", None), Err(ManifestError::Invalid(_))));
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(matches!(
            parse(
                br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:zz","size":1},"layers":[]}"#,
                None
            ),
            Err(ManifestError::Invalid(_))
        ));
    }
}
