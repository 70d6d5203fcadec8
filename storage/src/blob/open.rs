//! Opening a [`BlobStore`] from a storage URL: which backend, where, and with what credentials.
//!
//! | URL | backend |
//! |---|---|
//! | `file:///PATH` | a local directory |
//! | `memory://` | process memory (lost at exit) |
//! | `s3://BUCKET/PREFIX` | Amazon S3 or any S3-compatible server ([`S3Options`], `AWS_*`) |
//! | `gs://BUCKET/PREFIX` | Google Cloud Storage ([`GcsOptions`], `GOOGLE_*`) |
//! | `az://CONTAINER/PREFIX` | Azure Blob Storage ([`AzureOptions`], `AZURE_*`) |
//!
//! Everything above this module sees one [`BlobStore`]; backend-specific code ends here.
//!
//! # Why credentials are checked here
//! object_store falls back to the cloud's instance metadata service when it is given no
//! credentials (GCE's metadata server, Azure's IMDS). Off that cloud the registry would start
//! fine and fail its first push after a long retry, with a message about a metadata endpoint.
//! So a GCS or Azure store without credentials is refused at start, naming every way to give
//! them; instance credentials are used when asked for (`instance_credentials`,
//! `managed_identity`). S3 keeps object_store's own chain (environment, profile, instance role),
//! which fails fast and names what is missing.

use super::BlobStore;
use crate::error::{Error, Result};
use object_store::aws::AmazonS3Builder;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::ObjectStore;
use std::sync::Arc;

/// Which backend a [`BlobStore`] writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A local directory.
    File,
    /// Process memory.
    Memory,
    /// S3 or an S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// A store handed in by the caller ([`BlobStore::new`]).
    Custom,
}

/// Where an S3 store is and how to reach it; unset values come from the usual `AWS_*`
/// environment variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …) or the instance's role.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (`http://` is allowed for it).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), which most S3-compatible servers
    /// need; `false` asks for virtual-hosted style (`<bucket>.<endpoint>/<key>`).
    pub path_style: Option<bool>,
}

/// How to reach Google Cloud Storage; unset values come from `GOOGLE_SERVICE_ACCOUNT`,
/// `GOOGLE_SERVICE_ACCOUNT_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`, or gcloud's application
/// default credentials file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsOptions {
    /// Path of a service account's JSON key file.
    pub service_account_path: Option<String>,
    /// A service account's JSON key itself (prefer the environment or a file for it).
    pub service_account_key: Option<String>,
    /// Path of an application default credentials file.
    pub application_credentials: Option<String>,
    /// Use the service account of the GCE instance or GKE workload (the metadata server):
    /// asked for explicitly, so that a registry off Google Cloud fails at start, not at its
    /// first push.
    pub instance_credentials: bool,
}

/// How to reach Azure Blob Storage; unset values come from the `AZURE_STORAGE_*` and
/// `AZURE_*` environment variables (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
/// `AZURE_STORAGE_SAS_KEY`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`,
/// `AZURE_FEDERATED_TOKEN_FILE`, …).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureOptions {
    /// Storage account name.
    pub account: Option<String>,
    /// Storage account access key.
    pub access_key: Option<String>,
    /// A shared access signature (the query string).
    pub sas_token: Option<String>,
    /// Service principal: client id (with `client_secret` and `tenant_id`).
    pub client_id: Option<String>,
    /// Service principal: client secret.
    pub client_secret: Option<String>,
    /// Service principal: tenant id.
    pub tenant_id: Option<String>,
    /// Blob endpoint, for Azurite or sovereign clouds (`http://` allowed).
    pub endpoint: Option<String>,
    /// Use the VM's or pod's managed identity (IMDS): asked for explicitly, so that a registry
    /// off Azure fails at start, not at its first push.
    pub managed_identity: bool,
}

/// Options of every backend; only the URL's backend reads its own.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// For `s3://`.
    pub s3: S3Options,
    /// For `gs://`.
    pub gcs: GcsOptions,
    /// For `az://`.
    pub azure: AzureOptions,
}

/// A cloud store, the same store as a multipart and a signing API, and the key prefix.
struct Cloud<T> {
    store: Arc<T>,
    prefix: String,
}

impl<T: ObjectStore + object_store::multipart::MultipartStore + Signer> Cloud<T> {
    fn into_blob_store(self, backend: Backend) -> BlobStore {
        let whole: Arc<dyn ObjectStore> = self.store.clone();
        let prefixed: Arc<dyn ObjectStore> = if self.prefix.is_empty() {
            whole
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(whole, self.prefix.as_str()))
        };
        let mut b = BlobStore::with_multipart(prefixed, self.store.clone(), Some(&self.prefix));
        b.backend = backend;
        b.signer = Some(super::Presigner {
            signer: self.store,
            prefix: (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str())),
        });
        b
    }
}

/// `scheme://NAME/PREFIX` → (NAME, PREFIX without surrounding slashes).
fn bucket_and_prefix<'a>(url: &str, rest: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        let scheme = url.split_once("://").map_or(url, |(s, _)| s);
        return Err(Error::Config(format!(
            "{url:?} names no {what}: use {scheme}://{}/PREFIX",
            what.to_uppercase()
        )));
    }
    Ok((bucket, prefix.trim_matches('/')))
}

/// Opens the store a URL names (see the module doc).
pub(super) fn open(url: &str, opts: &StorageOptions) -> Result<BlobStore> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(Error::Config(format!("{url:?} names no directory: use file:///PATH")));
        }
        return BlobStore::local(std::path::Path::new(path));
    }
    if url == "memory://" || url == "memory:" {
        return Ok(BlobStore::memory());
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = bucket_and_prefix(url, rest, "bucket")?;
        return Ok(s3(url, bucket, prefix, &opts.s3, AmazonS3Builder::from_env())?.into_blob_store(Backend::S3));
    }
    if let Some(rest) = url.strip_prefix("gs://") {
        let (bucket, prefix) = bucket_and_prefix(url, rest, "bucket")?;
        let adc = std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".config/gcloud/application_default_credentials.json"))
            .filter(|p| p.exists());
        let b = GoogleCloudStorageBuilder::from_env();
        return Ok(gcs(url, bucket, prefix, &opts.gcs, b, adc.is_some())?.into_blob_store(Backend::Gcs));
    }
    if let Some(rest) = url.strip_prefix("az://") {
        let (container, prefix) = bucket_and_prefix(url, rest, "container")?;
        let b = MicrosoftAzureBuilder::from_env();
        return Ok(azure(url, container, prefix, &opts.azure, b)?.into_blob_store(Backend::Azure));
    }
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or(url);
    Err(Error::Config(format!(
        "unsupported storage URL {url:?} (scheme {scheme:?}): use file:///PATH, s3://BUCKET/PREFIX, \
         gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://"
    )))
}

fn s3(
    url: &str,
    bucket: &str,
    prefix: &str,
    o: &S3Options,
    b: AmazonS3Builder,
) -> Result<Cloud<object_store::aws::AmazonS3>> {
    let mut b = b.with_bucket_name(bucket);
    if let Some(e) = &o.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(r) = &o.region {
        b = b.with_region(r);
    }
    if let Some(k) = &o.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &o.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    if let Some(p) = o.path_style {
        b = b.with_virtual_hosted_style_request(!p);
    }
    let store = b.build().map_err(|e| Error::Config(format!("S3 store {url:?}: {e}")))?;
    Ok(Cloud {
        store: Arc::new(store),
        prefix: prefix.to_owned(),
    })
}

/// GCS from `b` (the environment's settings) and `o` (the configuration's, which win);
/// `adc_file`: whether gcloud's application default credentials file exists.
fn gcs(
    url: &str,
    bucket: &str,
    prefix: &str,
    o: &GcsOptions,
    b: GoogleCloudStorageBuilder,
    adc_file: bool,
) -> Result<Cloud<object_store::gcp::GoogleCloudStorage>> {
    let mut b = b.with_bucket_name(bucket);
    if let Some(p) = &o.service_account_path {
        b = b.with_service_account_path(p);
    }
    if let Some(k) = &o.service_account_key {
        b = b.with_service_account_key(k);
    }
    if let Some(p) = &o.application_credentials {
        b = b.with_application_credentials(p);
    }
    let given = [
        GoogleConfigKey::ServiceAccount,
        GoogleConfigKey::ServiceAccountKey,
        GoogleConfigKey::ApplicationCredentials,
    ]
    .iter()
    .any(|k| b.get_config_value(k).is_some_and(|v| !v.is_empty()));
    if !(given || adc_file || o.instance_credentials) {
        return Err(Error::Config(format!(
            "Google Cloud Storage {url:?}: no credentials. Give a service account key file \
             ([gcs] service_account_path or GOOGLE_SERVICE_ACCOUNT), the key itself \
             (GOOGLE_SERVICE_ACCOUNT_KEY), application default credentials \
             (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`), or, on \
             GCE/GKE, set [gcs] instance_credentials = true to use the instance's service account"
        )));
    }
    let store = b
        .build()
        .map_err(|e| Error::Config(format!("Google Cloud Storage {url:?}: {e}")))?;
    Ok(Cloud {
        store: Arc::new(store),
        prefix: prefix.to_owned(),
    })
}

/// Azure from `b` (the environment's settings) and `o` (the configuration's, which win).
fn azure(
    url: &str,
    container: &str,
    prefix: &str,
    o: &AzureOptions,
    b: MicrosoftAzureBuilder,
) -> Result<Cloud<object_store::azure::MicrosoftAzure>> {
    let mut b = b.with_container_name(container);
    let settings = [
        (AzureConfigKey::AccountName, &o.account),
        (AzureConfigKey::AccessKey, &o.access_key),
        (AzureConfigKey::SasKey, &o.sas_token),
        (AzureConfigKey::ClientId, &o.client_id),
        (AzureConfigKey::ClientSecret, &o.client_secret),
        (AzureConfigKey::AuthorityId, &o.tenant_id),
    ];
    for (k, v) in settings {
        if let Some(v) = v {
            b = b.with_config(k, v);
        }
    }
    if let Some(e) = &o.endpoint {
        b = b.with_endpoint(e.clone()).with_allow_http(e.starts_with("http://"));
    }
    let set = |k: AzureConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty() && v != "false");
    let emulator = set(AzureConfigKey::UseEmulator);
    if !emulator && !set(AzureConfigKey::AccountName) {
        return Err(Error::Config(format!(
            "Azure Blob Storage {url:?}: no storage account: set [azure] account or AZURE_STORAGE_ACCOUNT_NAME"
        )));
    }
    let service_principal = set(AzureConfigKey::ClientId) && set(AzureConfigKey::AuthorityId);
    let given = set(AzureConfigKey::AccessKey)
        || set(AzureConfigKey::SasKey)
        || set(AzureConfigKey::Token)
        || (service_principal && (set(AzureConfigKey::ClientSecret) || set(AzureConfigKey::FederatedTokenFile)))
        || set(AzureConfigKey::UseAzureCli);
    if !(given || emulator || o.managed_identity) {
        return Err(Error::Config(format!(
            "Azure Blob Storage {url:?}: no credentials. Give an account key ([azure] access_key or \
             AZURE_STORAGE_ACCOUNT_KEY), a SAS token ([azure] sas_token or AZURE_STORAGE_SAS_KEY), a \
             service principal (client_id, client_secret and tenant_id, or AZURE_CLIENT_ID, \
             AZURE_CLIENT_SECRET and AZURE_TENANT_ID), workload identity (AZURE_FEDERATED_TOKEN_FILE \
             with AZURE_CLIENT_ID and AZURE_TENANT_ID), or, on Azure, set [azure] managed_identity = \
             true to use the VM's or pod's managed identity"
        )));
    }
    let store = b
        .build()
        .map_err(|e| Error::Config(format!("Azure Blob Storage {url:?}: {e}")))?;
    Ok(Cloud {
        store: Arc::new(store),
        prefix: prefix.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service account key that needs no OAuth (as emulators use): enough to build a store
    /// without a network.
    const OFFLINE_SERVICE_ACCOUNT: &str = r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true, "gcs_base_url": "http://127.0.0.1:9"}"#;

    #[test]
    fn urls_pick_their_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = StorageOptions::default();
        let file = open(&format!("file://{}", dir.path().display()), &none).expect("file");
        assert_eq!(file.backend(), Backend::File);
        assert!(!file.multipart_enabled());
        let mem = open("memory://", &none).expect("memory");
        assert_eq!(mem.backend(), Backend::Memory);
        assert!(mem.multipart_enabled());

        let s3 = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            ..S3Options::default()
        };
        let s = self::s3(
            "s3://bucket/some/prefix",
            "bucket",
            "some/prefix",
            &s3,
            AmazonS3Builder::new(),
        )
        .expect("s3")
        .into_blob_store(Backend::S3);
        assert_eq!(s.backend(), Backend::S3);
        assert!(s.multipart_enabled() && s.can_presign());

        let g = GcsOptions {
            service_account_key: Some(OFFLINE_SERVICE_ACCOUNT.into()),
            ..GcsOptions::default()
        };
        let (bucket, prefix) = bucket_and_prefix("gs://b/p/q/", "b/p/q/", "bucket").expect("parse");
        assert_eq!((bucket, prefix), ("b", "p/q"));
        let s = gcs(
            "gs://b/p/q/",
            bucket,
            prefix,
            &g,
            GoogleCloudStorageBuilder::new(),
            false,
        )
        .expect("gcs")
        .into_blob_store(Backend::Gcs);
        assert_eq!(s.backend(), Backend::Gcs);
        assert!(s.multipart_enabled());

        let a = AzureOptions {
            account: Some("berthtest".into()),
            access_key: Some("YWNjZXNzLWtleQ==".into()),
            ..AzureOptions::default()
        };
        let s = azure(
            "az://images/registry",
            "images",
            "registry",
            &a,
            MicrosoftAzureBuilder::new(),
        )
        .expect("azure")
        .into_blob_store(Backend::Azure);
        assert_eq!(s.backend(), Backend::Azure);
        assert!(s.multipart_enabled() && s.can_presign());
        // The same URLs through open(), which reads the environment too: they parse into the
        // same backends, or fail on credentials only.
        for (u, b) in [("gs://b/p", Backend::Gcs), ("az://c/p", Backend::Azure)] {
            let mut o = StorageOptions::default();
            o.gcs.service_account_key = Some(OFFLINE_SERVICE_ACCOUNT.into());
            o.azure = a.clone();
            assert_eq!(open(u, &o).expect(u).backend(), b);
        }

        for bad in [
            "s3://",
            "gs://",
            "az://",
            "az:///prefix",
            "file://",
            "ftp://x",
            "/just/a/path",
            "https://acct.blob.core.windows.net/c",
        ] {
            let e = open(bad, &none).err();
            assert!(matches!(e, Some(Error::Config(_))), "{bad} must be refused: {e:?}");
        }
        let e = open("https://acct.blob.core.windows.net/c", &none)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.is_some_and(|e| e.contains("az://CONTAINER/PREFIX")),
            "the message lists the schemes"
        );
    }

    #[test]
    fn missing_credentials_are_named_at_start() {
        let e = gcs(
            "gs://b/p",
            "b",
            "p",
            &GcsOptions::default(),
            GoogleCloudStorageBuilder::new(),
            false,
        )
        .err()
        .map(|e| e.to_string())
        .expect("no credentials must be refused");
        for hint in [
            "no credentials",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "instance_credentials",
        ] {
            assert!(e.contains(hint), "{hint:?} missing from: {e}");
        }
        // Asked-for instance credentials, or gcloud's file, are enough to start.
        let on_gce = GcsOptions {
            instance_credentials: true,
            ..GcsOptions::default()
        };
        assert!(gcs("gs://b", "b", "", &on_gce, GoogleCloudStorageBuilder::new(), false).is_ok());
        assert!(gcs(
            "gs://b",
            "b",
            "",
            &GcsOptions::default(),
            GoogleCloudStorageBuilder::new(),
            true
        )
        .is_ok());

        let no_account = azure(
            "az://c",
            "c",
            "",
            &AzureOptions::default(),
            MicrosoftAzureBuilder::new(),
        )
        .err()
        .map(|e| e.to_string())
        .expect("no account must be refused");
        assert!(no_account.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{no_account}");
        let account_only = AzureOptions {
            account: Some("acct".into()),
            ..AzureOptions::default()
        };
        let e = azure("az://c", "c", "", &account_only, MicrosoftAzureBuilder::new())
            .err()
            .map(|e| e.to_string())
            .expect("no credentials must be refused");
        for hint in ["no credentials", "AZURE_STORAGE_ACCOUNT_KEY", "managed_identity"] {
            assert!(e.contains(hint), "{hint:?} missing from: {e}");
        }
        // A client id without its secret is no credential either.
        let half = AzureOptions {
            client_id: Some("id".into()),
            tenant_id: Some("tenant".into()),
            ..account_only.clone()
        };
        assert!(azure("az://c", "c", "", &half, MicrosoftAzureBuilder::new()).is_err());
        let on_azure = AzureOptions {
            managed_identity: true,
            ..account_only
        };
        assert!(azure("az://c", "c", "", &on_azure, MicrosoftAzureBuilder::new()).is_ok());
        // Settings from the environment count like the configuration's.
        let env = MicrosoftAzureBuilder::new()
            .with_config(AzureConfigKey::AccountName, "acct")
            .with_config(AzureConfigKey::SasKey, "sv=2022-11-02&sig=x");
        assert!(azure("az://c", "c", "", &AzureOptions::default(), env).is_ok());
    }
}
