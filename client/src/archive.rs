//! docker's image archive (`docker save` / `docker load`): a tar holding `manifest.json`
//! (`[{"Config", "RepoTags", "Layers"}]`), the config JSON and one `layer.tar` per layer.
//!
//! Converted to and from an OCI layout, so push and pull keep one code path:
//! - import: layers are the uncompressed tars docker saved; they become
//!   `application/vnd.oci.image.layer.v1.tar` layers (their digest is their diff ID).
//! - export: layers are written as the registry had them (gzip or not); `docker load`
//!   detects the compression and checks the config's diff IDs itself.

use crate::error::{Error, Result};
use crate::layout::Layout;
use berth_oci::{media, Descriptor, Digest};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::Path;

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Whether `path` is a tar archive (the `ustar` magic of its first header), as a `docker save`
/// archive is: enough to suggest `--docker-archive` when one is given where a layout
/// directory is expected, without reading a file of gigabytes.
pub fn looks_like_tar(path: &Path) -> bool {
    let mut header = [0u8; 512];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header[257..262] == b"ustar")
}

/// Copies an entry of the archive into the layout's blob store, hashing on the way.
fn ingest(layout: &Layout, mut r: impl Read, what: &str) -> Result<(Digest, u64)> {
    let tmp_dir = layout.blob_path(&Digest::empty());
    let dir = tmp_dir.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".import-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::local(&tmp, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(|e| Error::local(what, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        f.write_all(&buf[..k]).map_err(|e| Error::local(&tmp, e))?;
        n += k as u64;
    }
    drop(f);
    let d = Digest::from_sha256(&h.finalize());
    std::fs::rename(&tmp, layout.blob_path(&d)).map_err(|e| Error::local(layout.blob_path(&d), e))?;
    Ok((d, n))
}

/// Imports the image `tag` (a RepoTags entry; the only image when `None`) of a docker archive
/// into `layout` under `ref_name`; returns the manifest's descriptor.
pub fn import(archive: &Path, tag: Option<&str>, layout: &Layout, ref_name: &str) -> Result<Descriptor> {
    // Pass 1: manifest.json (its position in the tar is not fixed).
    let open = || -> Result<tar::Archive<std::fs::File>> {
        Ok(tar::Archive::new(
            std::fs::File::open(archive).map_err(|e| Error::local(archive, e))?,
        ))
    };
    let bad = |e: std::io::Error| Error::local(archive, format!("not a readable docker archive: {e}"));
    let mut entries: Option<Vec<Entry>> = None;
    for e in open()?.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        if e.path().map_err(bad)?.as_os_str() == "manifest.json" {
            let mut s = Vec::new();
            e.read_to_end(&mut s).map_err(bad)?;
            entries = Some(
                serde_json::from_slice(&s).map_err(|e| Error::local(archive, format!("invalid manifest.json: {e}")))?,
            );
            break;
        }
    }
    let entries = entries.ok_or_else(|| Error::local(archive, "no manifest.json: not made by `docker save`"))?;
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|r| r == t || r.ends_with(&format!("/{t}")))
            })
            .ok_or_else(|| Error::local(archive, format!("no image tagged {t:?}")))?,
        None if entries.len() == 1 => &entries[0],
        None => {
            let tags: Vec<String> = entries
                .iter()
                .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                .collect();
            return Err(Error::Usage(format!(
                "{} holds {} images: pick one with --tag ({})",
                archive.display(),
                entries.len(),
                tags.join(", ")
            )));
        }
    };
    // Pass 2: the config and layers this image names, into the layout.
    let mut found: std::collections::HashMap<String, (Digest, u64)> = std::collections::HashMap::new();
    for e in open()?.entries().map_err(bad)? {
        let e = e.map_err(bad)?;
        let path = e.path().map_err(bad)?.to_string_lossy().into_owned();
        if path == entry.config || entry.layers.contains(&path) {
            let got = ingest(layout, e, &path)?;
            found.insert(path, got);
        }
    }
    let get = |p: &String| {
        found
            .get(p)
            .cloned()
            .ok_or_else(|| Error::local(archive, format!("manifest.json names {p}, which the archive lacks")))
    };
    let (config_digest, config_size) = get(&entry.config)?;
    let config: serde_json::Value = serde_json::from_slice(&layout.read_blob(&config_digest)?)
        .map_err(|e| Error::local(archive, format!("invalid image config: {e}")))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut layers = Vec::new();
    for (i, p) in entry.layers.iter().enumerate() {
        let (d, size) = get(p)?;
        if diff_ids.get(i).map(String::as_str) != Some(d.to_string().as_str()) {
            return Err(Error::DigestMismatch {
                what: format!("layer {p} of {}", archive.display()),
                expected: diff_ids
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| "(no diff ID in the config)".into()),
                actual: d.to_string(),
            });
        }
        layers.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}),
        );
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::local(archive, e))?;
    let digest = layout.write_blob(&bytes)?;
    let desc = Descriptor {
        media_type: media::OCI_MANIFEST.to_owned(),
        digest,
        size: bytes.len() as u64,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    };
    layout.set_tag(&desc, ref_name)?;
    Ok(desc)
}

/// Writes the image `desc` of `layout` as a docker archive at `out`, tagged `repo_tag`.
pub fn export(layout: &Layout, desc: &Descriptor, repo_tag: &str, out: &Path) -> Result<()> {
    let manifest: serde_json::Value = serde_json::from_slice(&layout.read_blob(&desc.digest)?)
        .map_err(|e| Error::local(out, format!("invalid manifest: {e}")))?;
    if manifest["manifests"].is_array() {
        return Err(Error::Usage(
            "a docker archive holds one platform: pick it with --platform os/arch".into(),
        ));
    }
    let config: Digest = manifest["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| Error::Usage("the manifest has no config digest".into()))?;
    let layers: Vec<Digest> = manifest["layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["digest"].as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::local(&tmp, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let add_file = |tar: &mut tar::Builder<_>, name: &str, path: &Path| -> Result<()> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::local(path, e))?;
        tar.append_file(name, &mut f).map_err(|e| Error::local(&tmp, e))
    };
    let config_name = format!("{}.json", config.hex());
    add_file(&mut tar, &config_name, &layout.blob_path(&config))?;
    let mut names = Vec::new();
    for l in &layers {
        let name = format!("{}/layer.tar", l.hex());
        add_file(&mut tar, &name, &layout.blob_path(l))?;
        names.push(name);
    }
    let entries = vec![Entry {
        config: config_name,
        repo_tags: Some(vec![repo_tag.to_owned()]),
        layers: names,
    }];
    let json = serde_json::to_vec(&entries).map_err(|e| Error::local(out, e))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "manifest.json", json.as_slice())
        .map_err(|e| Error::local(&tmp, e))?;
    let mut w = tar.into_inner().map_err(|e| Error::local(&tmp, e))?;
    w.flush().map_err(|e| Error::local(&tmp, e))?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(|e| Error::local(out, e))
}
