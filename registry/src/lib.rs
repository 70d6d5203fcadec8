//! Berth's registry: the OCI distribution-spec v1.1 API over HTTP.
//!
//! # Layout
//! - [`config`]: the one [`Config`], validated at start.
//! - [`gc`]: the garbage collector in the background of `serve`.
//! - [`http`]: routing and one module per resource (blobs, uploads, manifests, tags and
//!   catalog, referrers); `http::error` writes every error in the spec's envelope.
//! - Storage and metadata live in `berth-storage`; handlers only parse, call it, and answer.
//!
//! [`app`] builds the router for a state; [`serve`] runs it on a bound listener until a
//! shutdown future resolves, letting in-flight requests finish.
#![deny(missing_docs)]

pub mod auth;
pub mod config;
pub mod gc;
pub mod governance;
pub mod http;
pub mod retention;
pub mod tls;

pub use config::Config;

use berth_storage::{BlobStore, Meta, Uploads};
use std::future::Future;
use std::sync::Arc;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Blob bytes.
    pub blobs: BlobStore,
    /// Metadata.
    pub meta: Meta,
    /// Upload sessions over both.
    pub uploads: Uploads,
    /// Who may do what.
    pub auth: Arc<auth::Auth>,
    /// Pulls recorded for retention, written in batches (`serve` flushes them).
    pub pulls: Arc<governance::PullLog>,
}

impl AppState {
    /// Opens storage and database as configured (creating the data directory, applying
    /// migrations).
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let (blobs, meta) = open_storage(&config).await?;
        let uploads = Uploads::new(blobs.clone(), meta.clone());
        let mode = Self::auth_mode(&config, &meta).await?;
        // Behind a TLS-terminating proxy (--insecure-http) clients still speak HTTPS: the token
        // realm advertised to them must say so, or docker would send passwords in clear text.
        let tls = config.tls.self_signed || config.tls.cert.is_some() || config.tls.insecure_http;
        let auth = auth::Auth::new(mode, config.auth.clone(), meta.clone(), &config.data, tls).await?;
        Ok(AppState {
            config: Arc::new(config),
            blobs,
            meta,
            uploads,
            auth: Arc::new(auth),
            pulls: Arc::default(),
        })
    }

    /// The auth mode in force: as configured, else `token` when accounts exist, else `none`,
    /// which is refused beyond loopback: an open registry on a network is a decision to state
    /// (`--auth none`), not a default to stumble into.
    async fn auth_mode(config: &Config, meta: &Meta) -> anyhow::Result<config::AuthMode> {
        if let Some(m) = config.auth.mode {
            return Ok(m);
        }
        if !meta.accounts().await?.is_empty() {
            return Ok(config::AuthMode::Token);
        }
        anyhow::ensure!(
            tls::is_loopback(&config.listen),
            "listening on {} with no accounts would let anyone push and delete: add one with \
             `berth-registry user add NAME --password-stdin`, or pass --auth none to run an open registry",
            config.listen
        );
        Ok(config::AuthMode::None)
    }
}

/// Opens the blob store (`storage` URL, default the data directory) and the metadata database
/// as configured (creating the data directory, applying migrations): what `serve` and `gc`
/// share.
pub async fn open_storage(config: &Config) -> anyhow::Result<(BlobStore, Meta)> {
    std::fs::create_dir_all(&config.data).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {e}; pass --data DIR with a writable directory",
            config.data.display()
        )
    })?;
    let url = config.storage_url();
    let blobs = BlobStore::open(&url, &config.storage_options())
        .map_err(|e| anyhow::anyhow!("cannot open blob storage {url}: {e}"))?;
    anyhow::ensure!(
        !config.redirect.enabled || blobs.can_presign(),
        "redirect.enabled needs storage that signs URLs (s3://, gs:// or az://); {url} cannot"
    );
    let meta = Meta::connect(&config.database_url()).await?;
    // Quotas and immutable tags hold for every writer, `gc` and `retention` included.
    let meta = governance::apply(config, meta);
    Ok((blobs, meta))
}

/// The HTTP application.
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting and waits for
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address reaches handlers (failed-login lockouts are per client address).
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
