//! The content a run pushes: blobs from a seeded generator and the manifests over them.
//!
//! Every blob is derived from the run's seed, so a rerun against the same registry pushes
//! content that no earlier run pushed (and deleted): a registry's leftovers can neither make a
//! check pass nor fail. Manifests are pretty-printed on purpose: a registry that re-serialises
//! what it was given (instead of storing the bytes exactly) changes them, and is caught.

use berth_oci::{media, Digest};
use bytes::Bytes;
use serde_json::{json, Value};

/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of a Docker gzipped layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The artifact type of the first referrer pushed.
pub const SBOM_TYPE: &str = "application/vnd.berth.conformance.sbom.v1+json";
/// The artifact type of the second referrer pushed.
pub const SIGNATURE_TYPE: &str = "application/vnd.berth.conformance.signature.v1";
/// The config media type of the referrer without `artifactType`: its referrers descriptor must
/// carry this as its `artifactType`.
pub const CONFIG_ARTIFACT_TYPE: &str = "application/vnd.berth.conformance.config.v1+json";
/// An artifact type no referrer has.
pub const ABSENT_TYPE: &str = "application/vnd.berth.conformance.absent.v1";
/// The annotation the SBOM referrer carries, which its referrers descriptor must repeat.
pub const SBOM_ANNOTATION: (&str, &str) = ("org.example.conformance.format", "spdx+json");

/// Size of the blob pushed in chunks: a bit over 1 MiB, so that it takes several chunks and
/// the last one is not chunk-aligned.
pub const CHUNKED_SIZE: usize = (1 << 20) + 4321;

/// A blob with its digest and the media type its descriptors carry.
#[derive(Clone, Debug)]
pub struct Blob {
    /// The content.
    pub bytes: Bytes,
    /// `sha256` of the content.
    pub digest: Digest,
    /// The media type a descriptor of it declares.
    pub media_type: &'static str,
}

impl Blob {
    /// A blob of these bytes.
    pub fn new(media_type: &'static str, bytes: Bytes) -> Self {
        Blob {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        }
    }

    /// Its OCI descriptor.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.bytes.len(),
        })
    }
}

/// A manifest (or index): the exact bytes pushed, their digest and media type.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The exact bytes pushed, which a pull must return unchanged.
    pub bytes: Bytes,
    /// `sha256` of the bytes.
    pub digest: Digest,
    /// The `Content-Type` it is pushed with, equal to its `mediaType` field.
    pub media_type: &'static str,
}

impl Manifest {
    /// Serialises `value` (pretty-printed, newline-terminated).
    pub fn new(media_type: &'static str, value: &Value) -> Self {
        let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
        text.push('\n');
        let bytes = Bytes::from(text);
        Manifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        }
    }

    /// Its descriptor, as listed in an index or a `subject`.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.bytes.len(),
        })
    }
}

/// SplitMix64: tiny, seedable, and good enough to make blobs that do not compress or repeat.
pub struct Generator(u64);

impl Generator {
    /// A generator for `seed`, perturbed by `label` so that each blob has its own stream.
    pub fn new(seed: u64, label: &str) -> Self {
        let mut state = seed;
        for b in label.bytes() {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Generator(state)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }
}

/// Everything a run pushes. Each check that deletes or mounts something has a blob of its own,
/// so that checks do not interfere with each other's assertions.
pub struct Fixtures {
    /// OCI image config shared by the image manifests.
    pub config: Blob,
    /// Layer of `image`.
    pub layer: Blob,
    /// Layer of `image2`, pushed in chunks by `push/chunked-*`.
    pub chunked: Blob,
    /// Pushed by `push/blob-post-put`.
    pub post_put: Blob,
    /// Pushed by `push/blob-post-single`.
    pub single: Blob,
    /// Pushed by `push/streamed`.
    pub streamed: Blob,
    /// Pushed to the source repository and mounted by `push/mount`.
    pub mounted: Blob,
    /// Pushed and deleted by `management/delete-blob`.
    pub doomed_blob: Blob,
    /// Layer of `doomed_manifest`.
    pub doomed_layer: Blob,
    /// The OCI empty descriptor's blob, `{}`.
    pub empty: Blob,
    /// Docker config of `docker`.
    pub docker_config: Blob,
    /// Docker layer of `docker`.
    pub docker_layer: Blob,
    /// OCI image manifest: `config` + `layer`; tagged, and the referrers' subject.
    pub image: Manifest,
    /// OCI image manifest: `config` + `chunked`; pushed by digest.
    pub image2: Manifest,
    /// OCI image index over `image` and `image2`.
    pub index: Manifest,
    /// Docker schema 2 manifest: `docker_config` + `docker_layer`.
    pub docker: Manifest,
    /// Manifest pushed and deleted by `management/delete-manifest`.
    pub doomed_manifest: Manifest,
    /// Referrer of `image` with artifact type [`SBOM_TYPE`] and an annotation.
    pub sbom: Manifest,
    /// Referrer of `image` with artifact type [`SIGNATURE_TYPE`].
    pub signature: Manifest,
    /// Referrer of `image` with no `artifactType`, its config of type [`CONFIG_ARTIFACT_TYPE`].
    pub config_typed: Manifest,
    /// A manifest whose layer was never pushed.
    pub dangling: Manifest,
}

impl Fixtures {
    /// The content for the run `run_id`, seeded by `seed`.
    pub fn new(run_id: &str, seed: u64) -> Self {
        let blob = |label: &str, media_type: &'static str, len: usize| {
            Blob::new(media_type, Generator::new(seed, label).bytes(len))
        };
        let config_for = |media_type: &'static str, layer: &Blob| {
            Blob::new(
                media_type,
                Bytes::from(
                    serde_json::to_vec_pretty(&json!({
                        "architecture": "amd64",
                        "os": "linux",
                        "config": {"Labels": {"org.example.conformance.run": run_id}},
                        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
                    }))
                    .unwrap_or_default(),
                ),
            )
        };
        let layer = blob("layer", OCI_LAYER, 3000);
        let chunked = blob("chunked", OCI_LAYER, CHUNKED_SIZE);
        let config = config_for(OCI_CONFIG, &layer);
        let image_of = |layers: &[&Blob], annotations: Value| {
            let layers: Vec<Value> = layers.iter().map(|b| b.descriptor()).collect();
            Manifest::new(
                media::OCI_MANIFEST,
                &json!({
                    "schemaVersion": 2,
                    "mediaType": media::OCI_MANIFEST,
                    "config": config.descriptor(),
                    "layers": layers,
                    "annotations": annotations,
                }),
            )
        };
        let image = image_of(&[&layer], json!({"org.example.conformance.run": run_id}));
        let image2 = image_of(&[&chunked], json!({"org.example.conformance.image": "2"}));
        let doomed_layer = blob("doomed-layer", OCI_LAYER, 700);
        let doomed_manifest = image_of(&[&doomed_layer], json!({"purpose": "deletion"}));
        let never_pushed = blob("never-pushed", OCI_LAYER, 500);
        let dangling = image_of(&[&never_pushed], json!({"purpose": "dangling"}));

        let platform = |arch: &str| json!({"architecture": arch, "os": "linux"});
        let mut first = image.descriptor();
        first["platform"] = platform("amd64");
        let mut second = image2.descriptor();
        second["platform"] = platform("arm64");
        let index = Manifest::new(
            media::OCI_INDEX,
            &json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": [first, second],
            }),
        );

        let docker_layer = blob("docker-layer", DOCKER_LAYER, 2048);
        let docker_config = config_for(DOCKER_CONFIG, &docker_layer);
        let docker = Manifest::new(
            media::DOCKER_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": media::DOCKER_MANIFEST,
                "config": docker_config.descriptor(),
                "layers": [docker_layer.descriptor()],
            }),
        );

        let empty = Blob::new(media::OCI_EMPTY, Bytes::from_static(b"{}"));
        let artifact = |artifact_type: &str, annotations: Value| {
            Manifest::new(
                media::OCI_MANIFEST,
                &json!({
                    "schemaVersion": 2,
                    "mediaType": media::OCI_MANIFEST,
                    "artifactType": artifact_type,
                    "config": empty.descriptor(),
                    "layers": [empty.descriptor()],
                    "subject": image.descriptor(),
                    "annotations": annotations,
                }),
            )
        };
        let sbom = artifact(
            SBOM_TYPE,
            json!({SBOM_ANNOTATION.0: SBOM_ANNOTATION.1, "org.example.conformance.run": run_id}),
        );
        let signature = artifact(SIGNATURE_TYPE, json!({"org.example.conformance.run": run_id}));
        let mut typed_config = empty.descriptor();
        typed_config["mediaType"] = json!(CONFIG_ARTIFACT_TYPE);
        let config_typed = Manifest::new(
            media::OCI_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_MANIFEST,
                "config": typed_config,
                "layers": [empty.descriptor()],
                "subject": image.descriptor(),
            }),
        );

        Fixtures {
            post_put: blob("post-put", OCI_LAYER, 1500),
            single: blob("single", OCI_LAYER, 1200),
            streamed: blob("streamed", OCI_LAYER, 300 * 1024 + 17),
            mounted: blob("mounted", OCI_LAYER, 900),
            doomed_blob: blob("doomed-blob", OCI_LAYER, 800),
            config,
            layer,
            chunked,
            doomed_layer,
            empty,
            docker_config,
            docker_layer,
            image,
            image2,
            index,
            docker,
            doomed_manifest,
            sbom,
            signature,
            config_typed,
            dangling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_seeded() {
        assert_eq!(Generator::new(1, "a").bytes(100), Generator::new(1, "a").bytes(100));
        assert_ne!(Generator::new(1, "a").bytes(100), Generator::new(2, "a").bytes(100));
        assert_ne!(Generator::new(1, "a").bytes(100), Generator::new(1, "b").bytes(100));
        assert_eq!(Generator::new(1, "a").bytes(13).len(), 13);
    }

    #[test]
    fn manifests_digest_their_exact_bytes() {
        let f = Fixtures::new("run", 7);
        assert_eq!(f.image.digest, Digest::of(&f.image.bytes));
        assert_eq!(f.chunked.bytes.len(), CHUNKED_SIZE);
        let sbom: Value = serde_json::from_slice(&f.sbom.bytes).expect("JSON");
        assert_eq!(sbom["subject"]["digest"], f.image.digest.to_string());
        assert_eq!(
            f.empty.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
