//! `berth-registry`: command line of the registry. Thin: parse, load config, serve.

use anyhow::Context;
use berth_registry::{AppState, Config};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "berth-registry",
    version,
    about = "Berth: an OCI distribution-spec v1.1 container registry"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// With no subcommand, `berth-registry` serves.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the registry API (the default).
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory for blobs and the embedded database [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
    /// Metadata database URL [default: sqlite://<data>/berth.db].
    #[arg(long, env = "BERTH_DATABASE")]
    database: Option<String>,
    /// TOML configuration file; environment variables and flags override its values.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.data {
            c.data = v;
        }
        if let Some(v) = self.database {
            c.database = Some(v);
        }
        c.validate()?;
        Ok(c)
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.cmd {
        Some(Cmd::Serve(a)) => a,
        None => cli.serve,
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let listen = config.listen;
    let state = AppState::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: is another registry running? pick another with --listen"))?;
    tracing::info!(addr = %listener.local_addr()?, data = %state.config.data.display(), "berth-registry listening");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(berth_registry::serve(listener, state, async move {
        shutdown_signal().await;
        let _ = tx.send(());
    }));
    tokio::select! {
        r = server => r.context("server task failed")?.context("server failed")?,
        _ = async {
            let _ = rx.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over: exiting with requests still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}
