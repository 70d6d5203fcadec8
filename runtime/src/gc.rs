//! Removing images and reclaiming what nothing uses.
//!
//! An image record keeps its blobs and its chain of snapshots; a container keeps its own
//! snapshot and every parent of it, even after its image was removed. `prune` deletes
//! everything else. It runs under the node's exclusive GC lock, which every pull holds
//! shared for its whole run, so a layer committed by a pull that has not recorded its image
//! yet is never taken for garbage.

use crate::error::{Error, Result};
use crate::image::Images;
use crate::node::Node;
use std::collections::{BTreeSet, HashSet};

/// Removes the image records named (by reference or ID). Refuses an image a container uses
/// unless `force`. Content stays until [`prune`]. Returns the names removed.
pub fn remove_images(node: &Node, what: &[String], force: bool) -> Result<Vec<String>> {
    let _lock = node.lock()?;
    let mut images = Images::load(node)?;
    let containers = crate::container::list(node)?;
    let mut removed = Vec::new();
    for w in what {
        let rec = images
            .find(w)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no such image: {w}")))?;
        if !force {
            if let Some(c) = containers.iter().find(|c| c.record.image_id == rec.config.to_string()) {
                return Err(Error::Usage(format!(
                    "image {w} is used by container {} ({}): remove the container first, or use rmi -f",
                    c.record.name,
                    &c.record.id[..12]
                )));
            }
        }
        images.images.remove(&rec.name);
        removed.push(rec.name);
    }
    images.save(node)?;
    Ok(removed)
}

/// What [`prune`] reclaimed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    /// Blobs deleted.
    pub blobs: usize,
    /// Snapshots deleted.
    pub snapshots: usize,
    /// Bytes freed (blob sizes plus snapshot usage).
    pub bytes: u64,
}

/// Deletes content and snapshots that no image and no container reaches.
pub fn prune(node: &Node) -> Result<Pruned> {
    let _gc = node.gc_lock(true)?;
    let _lock = node.lock()?;
    let images = Images::load(node)?;
    let containers = crate::container::list(node)?;
    let mut out = Pruned::default();

    let keep_blobs: HashSet<String> = images
        .images
        .values()
        .flat_map(|i| i.blobs().map(|d| d.to_string()))
        .collect();
    for (d, size) in node.content.list()? {
        if !keep_blobs.contains(&d.to_string()) {
            node.content.delete(&d)?;
            out.blobs += 1;
            out.bytes += size;
        }
    }
    out.bytes += node.content.clean_ingest(std::time::Duration::from_secs(0))?;

    // Directories a crashed snapshot operation left without a record.
    for p in node.snapshots.cleanup()? {
        tracing::info!(path = %p.display(), "removed an unrecorded snapshot directory");
    }
    let all = node.snapshots.list()?;
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut roots: Vec<String> = images
        .images
        .values()
        .flat_map(|i| i.chain_ids.iter().map(|d| d.to_string()))
        .collect();
    roots.extend(containers.iter().map(|c| c.record.snapshot.clone()));
    while let Some(k) = roots.pop() {
        if !keep.insert(k.clone()) {
            continue;
        }
        if let Some(parent) = all.iter().find(|i| i.key == k).and_then(|i| i.parent.clone()) {
            roots.push(parent);
        }
    }
    // Children before parents: remove leaves until nothing more can go.
    let mut remaining: Vec<_> = all.into_iter().filter(|i| !keep.contains(&i.key)).collect();
    loop {
        let parents: HashSet<String> = remaining.iter().filter_map(|i| i.parent.clone()).collect();
        let (leaves, rest): (Vec<_>, Vec<_>) = remaining.into_iter().partition(|i| !parents.contains(&i.key));
        if leaves.is_empty() {
            break;
        }
        for i in leaves {
            let size = node.snapshots.usage(&i.key).unwrap_or(0);
            match node.snapshots.remove(&i.key) {
                Ok(()) => {
                    out.snapshots += 1;
                    out.bytes += size;
                }
                Err(e) => {
                    tracing::warn!(key = %i.key, error = %e, "could not remove snapshot");
                }
            }
        }
        remaining = rest;
    }
    Ok(out)
}
