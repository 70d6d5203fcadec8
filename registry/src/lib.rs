//! Berth's registry: the OCI distribution-spec v1.1 API over HTTP.
//!
//! # Layout
//! - [`config`]: the one [`Config`], validated at start.
//! - [`http`]: routing and one module per resource (blobs, uploads, manifests, tags and
//!   catalog, referrers); `http::error` writes every error in the spec's envelope.
//! - Storage and metadata live in `berth-storage`; handlers only parse, call it, and answer.
//!
//! [`app`] builds the router for a state; [`serve`] runs it on a bound listener until a
//! shutdown future resolves, letting in-flight requests finish.
#![deny(missing_docs)]

pub mod config;
pub mod http;

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
}

impl AppState {
    /// Opens storage and database as configured (creating the data directory, applying
    /// migrations).
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data).map_err(|e| {
            anyhow::anyhow!(
                "cannot create data directory {}: {e}; pass --data DIR with a writable directory",
                config.data.display()
            )
        })?;
        let blobs = BlobStore::local(&config.data)?;
        let meta = Meta::connect(&config.database_url()).await?;
        let uploads = Uploads::new(blobs.clone(), meta.clone());
        Ok(AppState {
            config: Arc::new(config),
            blobs,
            meta,
            uploads,
        })
    }
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
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
