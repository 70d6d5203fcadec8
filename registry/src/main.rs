//! `berth-registry`: command line of the registry. Thin: parse, load config, then serve or
//! manage accounts.

use anyhow::Context;
use berth_registry::auth::rules::RobotScope;
use berth_registry::auth::{hash_password, BCRYPT_COST};
use berth_registry::config::{parse_duration, Action, AuthMode};
use berth_registry::tls::{self, TlsSource};
use berth_registry::{AppState, Config};
use berth_storage::meta::Account;
use berth_storage::Meta;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Log format: `text`, or `json` (one object per line) for log shippers.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the registry API (the default).
    Serve(ServeArgs),
    /// Manage user accounts (stored in the registry's database, bcrypt-hashed).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage robot accounts: generated secrets, limited to repositories, revocable.
    Robot {
        #[command(subcommand)]
        cmd: RobotCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply pending database migrations and exit (`serve` also applies them on start).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Collect garbage now, online (a running registry keeps serving, pushes included):
    /// untagged manifests, blobs no manifest needs, expired upload sessions. Exits non-zero
    /// when some item could not be collected.
    Gc {
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced content younger than this, e.g. 30m, 24h, 0 [default: the
        /// config's gc.grace_secs, 24h].
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// Purge upload sessions idle for this long [default: gc.upload_expiry_secs, 24h].
        #[arg(long, value_parser = parse_duration)]
        upload_expiry: Option<Duration>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-hash every stored blob and check every manifest's references and sizes and every
    /// tag, one line per problem (torn, missing or wrong-size blob, missing reference,
    /// dangling tag). Exits 0 when nothing is wrong, 1 when problems were found.
    Scrub {
        /// Quarantine damaged blobs (moved to quarantine/, their digest then answers 404 so
        /// clients push them again). Blobs whose bytes match their digest are never touched.
        #[arg(long)]
        repair: bool,
        /// Only repositories matching this glob (`*` one path segment, `**` any number), and
        /// the blobs they link.
        #[arg(long, value_name = "GLOB")]
        repo: Option<String>,
        /// One JSON object per problem, and a summary object last, on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Storage quotas (`[[quotas]]` in the config): usage per scope.
    Quota {
        #[command(subcommand)]
        cmd: QuotaCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Retention policies (`[[retention]]` in the config).
    Retention {
        #[command(subcommand)]
        cmd: RetentionCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pin a manifest (REPO:TAG or REPO@DIGEST) so that retention and garbage collection keep
    /// it and everything under it, in every repository; `--remove` lifts the pin, `--list`
    /// shows every pin (by hand and by nodes).
    Pin {
        /// REPO:TAG or REPO@DIGEST (omit with --list).
        reference: Option<String>,
        /// Remove the pin instead.
        #[arg(long)]
        remove: bool,
        /// List pins.
        #[arg(long, conflicts_with_all = ["reference", "remove"])]
        list: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum QuotaCmd {
    /// Show each quota's usage and limit.
    Ls,
    /// Recount usage from the stored links and manifests (after changing `[[quotas]]`; `serve`
    /// also does it at start) and show it.
    Recompute,
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// Apply the policies now: prints each tag and manifest removed, and why.
    Run {
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        /// Read the password from standard input (the only way: it never appears in `ps`).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password, read from standard input.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Rm { name: String },
    /// List accounts.
    List,
    /// Import users from an htpasswd file (bcrypt entries, as written by `htpasswd -B`).
    ImportHtpasswd { file: PathBuf },
}

#[derive(Subcommand)]
enum RobotCmd {
    /// Create a robot `robot$NAME`; prints its name and generated secret (shown once).
    Add {
        name: String,
        /// Repository globs it may act on (repeatable), e.g. `team/*`.
        #[arg(long = "repo", required = true)]
        repos: Vec<String>,
        /// Actions it may do (repeatable or comma-separated): pull, push, delete.
        #[arg(long = "action", value_delimiter = ',', default_value = "pull")]
        actions: Vec<String>,
    },
    /// Revoke (delete) a robot.
    Rm { name: String },
    /// List robots.
    List,
}

/// Where the accounts live: the same data directory or database as `serve`.
#[derive(Args, Clone)]
struct StoreArgs {
    /// Data directory [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA", global = true)]
    data: Option<PathBuf>,
    /// Metadata database URL [default: sqlite://<data>/berth.db].
    #[arg(long, env = "BERTH_DATABASE", global = true)]
    database: Option<String>,
    /// Blob storage URL: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX, memory:// [default: file://<data>].
    #[arg(long, env = "BERTH_STORAGE", global = true)]
    storage: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TlsKind {
    /// Generate a private CA and a server certificate under <data>/tls.
    SelfSigned,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on, HOST:PORT (a name such as localhost:5000 is resolved)
    /// [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_LISTEN", value_parser = parse_listen)]
    listen: Option<SocketAddr>,
    /// Data directory for blobs and the embedded database [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
    /// Metadata database URL [default: sqlite://<data>/berth.db].
    #[arg(long, env = "BERTH_DATABASE")]
    database: Option<String>,
    /// Blob storage URL: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX (settings and credentials from the config's [s3], [gcs], [azure]
    /// or the AWS_*, GOOGLE_*, AZURE_* variables), memory:// [default: file://<data>].
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    /// TOML configuration file; environment variables and flags override its values.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// How clients authenticate [default: none on loopback without accounts, else token].
    #[arg(long, env = "BERTH_AUTH", value_enum)]
    auth: Option<AuthMode>,
    /// PEM certificate (chain) for HTTPS.
    #[arg(long, env = "BERTH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "BERTH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// `self-signed`: generate a CA and certificate (CA written to <data>/tls/ca.crt).
    #[arg(long, value_enum)]
    tls: Option<TlsKind>,
    /// Names (DNS or IP) for the self-signed certificate (repeatable).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Allow plain HTTP beyond loopback (behind a TLS-terminating proxy).
    #[arg(long)]
    insecure_http: bool,
}

/// `HOST:PORT` as an address; a host name is resolved, and the first address it has is used
/// (IPv4 first: `localhost` means 127.0.0.1, where clients look for it).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT, or the host does not resolve ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::from_file(p),
        None => Ok(Config::default()),
    }
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<Config> {
        let mut c = load_config(self.config.as_ref())?;
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.data {
            c.data = v;
        }
        if let Some(v) = self.database {
            c.database = Some(v);
        }
        if let Some(v) = self.storage {
            c.storage = Some(v);
        }
        if let Some(v) = self.auth {
            c.auth.mode = Some(v);
        }
        if self.tls_cert.is_some() || self.tls_key.is_some() {
            c.tls.cert = self.tls_cert;
            c.tls.key = self.tls_key;
        }
        if self.tls.is_some() {
            c.tls.self_signed = true;
        }
        if !self.tls_names.is_empty() {
            c.tls.names = self.tls_names;
        }
        c.tls.insecure_http |= self.insecure_http;
        c.validate()?;
        Ok(c)
    }
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = load_config(self.config.as_ref())?;
        if let Some(v) = &self.data {
            c.data = v.clone();
        }
        if let Some(v) = &self.database {
            c.database = Some(v.clone());
        }
        if let Some(v) = &self.storage {
            c.storage = Some(v.clone());
        }
        Ok(c)
    }

    async fn open(&self) -> anyhow::Result<Meta> {
        let c = self.config()?;
        std::fs::create_dir_all(&c.data)
            .with_context(|| format!("cannot create data directory {}", c.data.display()))?;
        Ok(Meta::connect(&c.database_url()).await?)
    }

    /// Opens the accounts' database for `user` and `robot`, and names it (password hidden):
    /// an account written to the wrong database is an auth change nobody sees. Where no
    /// registry data exists it says so instead of creating some: with no --data, BERTH_DATA,
    /// --database or config file that would be a new `./berth-data` no registry reads.
    async fn open_accounts(&self) -> anyhow::Result<(Meta, String)> {
        let c = self.config()?;
        let url = c.database_url();
        if c.database.is_none() {
            let db = c.data.join("berth.db");
            let defaulted = self.data.is_none() && self.config.is_none();
            anyhow::ensure!(
                c.data.is_dir() || !defaulted,
                "no registry data here ({} does not exist): pass the registry's data directory with \
                 --data DIR (or BERTH_DATA), as given to `berth-registry serve`, or its --database URL",
                c.data.display()
            );
            if !db.exists() {
                std::fs::create_dir_all(&c.data)
                    .with_context(|| format!("cannot create data directory {}", c.data.display()))?;
                eprintln!(
                    "berth-registry: {} held no registry database: created a new one at {} \
                     (a registry serving --data {} will read it)",
                    c.data.display(),
                    db.display(),
                    c.data.display()
                );
            }
        }
        let meta = Meta::connect(&url).await?;
        Ok((meta, redact_url(&url)))
    }
}

/// `url` with any password replaced by `***`, for messages.
fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[start..start + at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &url[..start + colon], &url[start + at..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
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

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event (coloured on a terminal unless NO_COLOR is set).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The log filter: `RUST_LOG` when set (e.g. `RUST_LOG=info,berth_registry=debug`), else
/// `info`. sqlx logs every statement at `debug` and slow ones at `info`: it stays at `warn`
/// unless `RUST_LOG` names it (`RUST_LOG=debug,sqlx=debug`).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let wanted = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let directives = match wanted {
        Some(v) if v.contains("sqlx") => v,
        Some(v) => format!("{v},sqlx=warn"),
        None => "info,sqlx=warn".to_owned(),
    };
    tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("berth-registry: RUST_LOG={directives:?} is not a log filter ({e}): using info");
        tracing_subscriber::EnvFilter::new("info,sqlx=warn")
    })
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.cmd {
        Some(Cmd::Serve(a)) => serve(a).await,
        None => serve(cli.serve).await,
        Some(Cmd::User { cmd, store }) => user(cmd, store).await,
        Some(Cmd::Robot { cmd, store }) => robot(cmd, store).await,
        Some(Cmd::Migrate { store }) => store.open().await.map(|meta| {
            println!("database is up to date ({:?})", meta.dialect());
        }),
        Some(Cmd::Gc {
            dry_run,
            grace,
            upload_expiry,
            store,
        }) => gc(store, dry_run, grace, upload_expiry).await,
        Some(Cmd::Scrub {
            repair,
            repo,
            json,
            store,
        }) => match scrub(store, repair, repo, json).await {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
        Some(Cmd::Quota { cmd, store }) => quota(cmd, store).await,
        Some(Cmd::Retention {
            cmd: RetentionCmd::Run { dry_run },
            store,
        }) => retention(store, dry_run).await,
        Some(Cmd::Pin {
            reference,
            remove,
            list,
            store,
        }) => pin(store, reference, remove, list).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-registry: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once (a cause's text is often already part
/// of the message above it).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !msg.contains(&c) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
    }
    msg
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let listen = config.listen;
    let tls_on = config.tls.self_signed || config.tls.cert.is_some();
    anyhow::ensure!(
        tls_on || config.tls.insecure_http || tls::is_loopback(&listen),
        "refusing plain HTTP on {listen}: clients would send passwords and tokens in clear text. \
         Use --tls self-signed, or --tls-cert FILE --tls-key FILE, or --insecure-http behind a TLS-terminating proxy"
    );
    let source = if config.tls.self_signed {
        let names = if config.tls.names.is_empty() {
            tls::default_names(&listen)
        } else {
            config.tls.names.clone()
        };
        Some(TlsSource::SelfSigned {
            names,
            dir: config.data.join("tls"),
        })
    } else {
        match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    };
    // Certificates (and a self-signed CA) are made before the port is bound: a client that can
    // connect must find them (tests and orchestrators take an open port for readiness).
    let tls_setup = match source {
        Some(source) => {
            let files = tls::prepare(&source)?;
            if let Some(ca) = &files.ca {
                tracing::info!(
                    ca = %ca.display(),
                    "self-signed TLS: clients must trust this CA (docker: copy it to /etc/docker/certs.d/<host:port>/ca.crt)"
                );
            }
            let rustls = tls::load(&files).await?;
            Some((rustls, files))
        }
        None => None,
    };
    let auth_configured = config.auth.mode.is_some();
    let state = AppState::open(config).await?;
    let _gc = berth_registry::gc::spawn(&state.config.gc, state.meta.clone(), state.blobs.clone());
    warn_unreachable(&state).await;
    if !auth_configured && state.auth.mode() == AuthMode::None {
        tokio::spawn(watch_for_accounts(state.meta.clone()));
    }
    if !state.config.quotas.is_empty() {
        // Picks up a change of `[[quotas]]` since the last start.
        state.meta.quota_recompute().await.context("recomputing quota usage")?;
    }
    let _pulls = state.pulls.spawn(
        state.meta.clone(),
        Duration::from_secs(state.config.governance.pull_flush_secs),
    );
    let _retention = berth_registry::retention::spawn(
        state.config.retention.clone(),
        Duration::from_secs(state.config.governance.retention_interval_secs),
        state.meta.clone(),
        std::sync::Arc::new(berth_registry::governance::Governance::new(&state.config)),
    );
    let (pulls, meta) = (state.pulls.clone(), state.meta.clone());
    let listener = std::net::TcpListener::bind(listen).with_context(|| {
        format!("cannot listen on {listen}: is another registry running? pick another with --listen")
    })?;
    listener.set_nonblocking(true)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data = %state.config.data.display(),
        auth = ?state.auth.mode(),
        tls = tls_setup.is_some(),
        "berth-registry listening"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = tx.send(());
    };
    let server = match tls_setup {
        Some((rustls, files)) => {
            tls::reload_on_sighup(rustls.clone(), files);
            let app = berth_registry::app(state);
            tokio::spawn(async move { tls::serve_tls(listener, app, rustls, shutdown, grace).await })
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(berth_registry::serve(listener, state, shutdown))
        }
    };
    tokio::select! {
        r = server => r.context("server task failed")?.context("server failed")?,
        _ = async {
            let _ = rx.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over: exiting with requests still in flight"),
    }
    if let Err(e) = pulls.flush(&meta).await {
        tracing::warn!(error = %e, "recording the last pulls failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs a scrub; returns whether the store is clean.
async fn scrub(store: StoreArgs, repair: bool, repo: Option<String>, json: bool) -> anyhow::Result<bool> {
    use std::io::IsTerminal as _;
    let config = store.config()?;
    let (blobs, meta) = berth_registry::open_storage(&config).await?;
    let filter = repo.map(|g| move |name: &str| berth_registry::auth::rules::glob_match(&g, name));
    let opts = berth_storage::scrub::ScrubOptions {
        repair,
        repos: filter.as_ref().map(|f| f as &(dyn Fn(&str) -> bool + Sync)),
    };
    let tty = std::io::stderr().is_terminal() && !json;
    let report = berth_storage::scrub::scrub(&meta, &blobs, &opts, |p| {
        if tty {
            eprint!(
                "\rscrub: {}/{} blobs, {}/{} MB",
                p.blobs_done,
                p.blobs_total,
                p.bytes_done / 1_000_000,
                p.bytes_total / 1_000_000
            );
        }
    })
    .await?;
    if tty {
        eprintln!();
    }
    for p in &report.problems {
        if json {
            println!("{}", p.to_json());
        } else {
            println!("{p}");
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "summary": true, "blobs": report.blobs, "bytes": report.bytes,
                "manifests": report.manifests, "tags": report.tags,
                "problems": report.problems.len(),
                "quarantined": report.quarantined.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("{report}");
    }
    Ok(report.problems.is_empty())
}

async fn quota(cmd: QuotaCmd, store: StoreArgs) -> anyhow::Result<()> {
    let config = store.config()?;
    config.validate()?;
    let (_, meta) = berth_registry::open_storage(&config).await?;
    let usage = match cmd {
        QuotaCmd::Ls => meta.quota_usage().await?,
        QuotaCmd::Recompute => meta.quota_recompute().await?,
    };
    let gov = berth_registry::governance::Governance::new(&config);
    println!(
        "{:<40} {:>16} {:>16} {:>8} {:>8}",
        "QUOTA", "USED", "LIMIT", "USE%", "OBJECTS"
    );
    for (scope, limit) in gov.scopes() {
        let u = usage.iter().find(|u| u.scope == scope);
        let (bytes, objects) = u.map_or((0, 0), |u| (u.bytes, u.objects));
        let pct = if limit == 0 {
            100.0
        } else {
            bytes as f64 * 100.0 / limit as f64
        };
        println!("{scope:<40} {bytes:>16} {limit:>16} {pct:>7.1}% {objects:>8}");
    }
    Ok(())
}

async fn retention(store: StoreArgs, dry_run: bool) -> anyhow::Result<()> {
    use berth_registry::retention;
    let config = store.config()?;
    config.validate()?;
    anyhow::ensure!(
        !config.retention.is_empty(),
        "no [[retention]] policies in the configuration (pass --config FILE)"
    );
    let (_, meta) = berth_registry::open_storage(&config).await?;
    let gov = berth_registry::governance::Governance::new(&config);
    let plan = retention::plan(&meta, &config.retention, &gov, retention::now_ms()).await?;
    if dry_run {
        for r in &plan {
            println!("{r}");
        }
        eprintln!("retention dry run: would remove {} (nothing removed)", plan.len());
        return Ok(());
    }
    let (done, kept) = retention::execute(&meta, plan).await?;
    for r in &done {
        println!("{r}");
    }
    eprintln!("retention: removed {}, kept {kept} on re-check", done.len());
    Ok(())
}

async fn pin(store: StoreArgs, reference: Option<String>, remove: bool, list: bool) -> anyhow::Result<()> {
    let config = store.config()?;
    let (_, meta) = berth_registry::open_storage(&config).await?;
    if list {
        let now = berth_registry::retention::now_ms();
        for p in meta.pins().await? {
            let state = match p.expires_at {
                None => "until removed".to_owned(),
                Some(t) if t > now => format!("for {} s more", (t - now) / 1000),
                Some(_) => "expired".to_owned(),
            };
            println!("{} {} {} {state}", p.digest, p.holder, p.repo.as_deref().unwrap_or("-"));
        }
        return Ok(());
    }
    let reference = reference.context("give REPO:TAG or REPO@DIGEST (or --list)")?;
    let (repo, r) = match reference.split_once('@') {
        Some((repo, d)) => (repo, d),
        None => reference
            .rsplit_once(':')
            .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty())
            .context("give REPO:TAG or REPO@DIGEST")?,
    };
    berth_oci::validate_repository(repo)?;
    let digest: berth_oci::Digest = if r.contains(':') {
        r.parse()?
    } else {
        meta.get_manifest(repo, berth_storage::meta::Reference::Tag(r), false)
            .await?
            .digest
    };
    let d = digest.to_string();
    if remove {
        anyhow::ensure!(meta.unpin(&d, "pin").await?, "{d} was not pinned");
        println!("unpinned {repo}@{d}");
    } else {
        meta.get_manifest(repo, berth_storage::meta::Reference::Digest(&digest), false)
            .await?;
        meta.pin(&d, "pin", Some(repo), None).await?;
        println!("pinned {repo}@{d}");
    }
    Ok(())
}

/// How often an open registry (auth `none` because it had no accounts) looks for accounts
/// added since it started.
const ACCOUNT_POLL: Duration = Duration::from_secs(3);

/// Logs, loudly and once, that accounts were added while the registry runs open: it chose
/// `none` at start because there were none, and switching a running registry to token auth
/// would cut off every client that is in the middle of a push; a restart turns auth on.
async fn watch_for_accounts(meta: Meta) {
    loop {
        tokio::time::sleep(ACCOUNT_POLL).await;
        match meta.accounts().await {
            Ok(a) if !a.is_empty() => {
                let names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
                tracing::warn!(
                    accounts = %names.join(","),
                    "accounts were added while this registry runs open (auth none): everyone may still \
                     push, pull and delete; restart it to turn token auth on"
                );
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot look for new accounts"),
        }
    }
}

/// At start with auth on and no admin configured: warns which repositories no account,
/// robot or rule reaches any more (typically those pushed while the registry ran open).
async fn warn_unreachable(state: &AppState) {
    if state.auth.mode() == AuthMode::None || !state.config.auth.admins.is_empty() {
        return;
    }
    match state.auth.unreachable_repositories().await {
        Ok(repos) if !repos.is_empty() => {
            const SHOWN: usize = 20;
            let mut list = repos.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if repos.len() > SHOWN {
                list.push_str(&format!(" and {} more", repos.len() - SHOWN));
            }
            tracing::warn!(
                "auth is on and no admin is configured: nobody can reach {} repositories any more: {list}; \
                 name an admin (admins = [\"NAME\"] under [auth]) or add rules",
                repos.len()
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot check which repositories are reachable"),
    }
}

async fn gc(
    store: StoreArgs,
    dry_run: bool,
    grace: Option<Duration>,
    upload_expiry: Option<Duration>,
) -> anyhow::Result<()> {
    let config = store.config()?;
    let mut opts = config.gc.options();
    opts.dry_run = dry_run;
    if let Some(g) = grace {
        opts.grace = g;
    }
    if let Some(u) = upload_expiry {
        anyhow::ensure!(
            !u.is_zero(),
            "--upload-expiry must be more than 0: open uploads need time to finish"
        );
        opts.upload_expiry = u;
    }
    let (blobs, meta) = berth_registry::open_storage(&config).await?;
    let report = berth_storage::gc::collect(&meta, &blobs, &opts).await?;
    println!("{report}");
    anyhow::ensure!(
        report.errors == 0,
        "{} items could not be collected (causes in the log above); the next run retries them",
        report.errors
    );
    Ok(())
}

fn read_secret_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(
        !pw.is_empty(),
        "empty password: pipe it in, e.g. `echo \"$PW\" | berth-registry user add NAME --password-stdin`"
    );
    Ok(pw)
}

/// Passwords shorter than this are refused: bcrypt makes guessing slow, not impossible.
const MIN_PASSWORD_LEN: usize = 8;

fn check_password(pw: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        pw.chars().count() >= MIN_PASSWORD_LEN,
        "password too short: use at least {MIN_PASSWORD_LEN} characters"
    );
    Ok(())
}

/// A user (or robot) name follows the grammar of the repository namespace a user owns
/// (`NAME/…`, with `user_namespaces`): lowercase letters and digits, separated by single
/// `.`, `_`, `__` or runs of `-`, at most 64 bytes. `Dora` could sign in but never own
/// `Dora/app`, which no client can even name.
fn check_user_name(name: &str) -> anyhow::Result<()> {
    let valid = |n: &str| !n.contains('/') && n.len() <= 64 && berth_oci::validate_repository(n).is_ok();
    if valid(name) {
        return Ok(());
    }
    let lower = name.to_ascii_lowercase();
    if valid(&lower) {
        anyhow::bail!(
            "invalid user name {name:?}: names are lowercase, like the repository namespace the account owns \
             ({lower}/…); use {lower:?}"
        );
    }
    anyhow::bail!(
        "invalid user name {name:?}: use up to 64 lowercase letters and digits, separated by single \
         '.', '_' or '-' (the grammar of a repository path component)"
    )
}

/// Reads a new password: from standard input with --password-stdin, else from the terminal,
/// without echo and twice.
fn read_new_password(stdin: bool) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let pw = if stdin || !std::io::stdin().is_terminal() {
        read_secret_stdin()?
    } else {
        let first = prompt_hidden("Password: ")?;
        let second = prompt_hidden("Password (again): ")?;
        anyhow::ensure!(first == second, "the two passwords differ: nothing changed");
        first
    };
    check_password(&pw)?;
    Ok(pw)
}

/// Prompts on the terminal and reads a line with echo off (restored afterwards, also when
/// reading fails).
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal to ask for the password (or pipe it in with --password-stdin)")?;
    tty.write_all(prompt.as_bytes())?;
    tty.flush()?;
    let restore = echo_off(&tty);
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    if let Some(saved) = restore {
        set_termios(&tty, &saved);
    }
    let _ = tty.write_all(b"\n");
    read.context("reading the password from the terminal")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!pw.is_empty(), "empty password: nothing changed");
    Ok(pw)
}

/// Turns echo off on `tty`; returns the settings to restore (`None`: echo stayed on).
#[allow(unsafe_code)]
fn echo_off(tty: &std::fs::File) -> Option<libc::termios> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcgetattr fills the termios struct we own for an fd `tty` keeps open.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) } != 0 {
        return None;
    }
    let saved = t;
    t.c_lflag &= !libc::ECHO;
    t.c_lflag |= libc::ECHONL;
    set_termios(tty, &t).then_some(saved)
}

#[allow(unsafe_code)]
fn set_termios(tty: &std::fs::File, t: &libc::termios) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcsetattr reads the termios struct we pass, for an fd `tty` keeps open.
    unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, t) == 0 }
}

async fn user(cmd: UserCmd, store: StoreArgs) -> anyhow::Result<()> {
    let (meta, db) = store.open_accounts().await?;
    match cmd {
        UserCmd::Add { name, password_stdin } => {
            check_user_name(&name)?;
            let first = meta.accounts().await?.is_empty();
            let hash = hash_password(read_new_password(password_stdin)?).await?;
            meta.create_account(&Account {
                name: name.clone(),
                kind: "user".into(),
                password_hash: hash,
                scopes: None,
                created_at: 0,
            })
            .await?;
            println!("added user {name} to {db}");
            if first {
                first_account_notice();
            }
        }
        UserCmd::Passwd { name, password_stdin } => {
            let hash = hash_password(read_new_password(password_stdin)?).await?;
            anyhow::ensure!(
                meta.set_password(&name, &hash).await?,
                "no account {name} in {db}: add it with `berth-registry user add`"
            );
            println!("changed the password of {name} in {db}");
        }
        UserCmd::Rm { name } => {
            anyhow::ensure!(meta.delete_account(&name).await?, "no account {name} in {db}");
            println!("removed {name} from {db}");
        }
        UserCmd::List => {
            for a in meta.accounts().await? {
                println!("{}\t{}", a.name, a.kind);
            }
        }
        UserCmd::ImportHtpasswd { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut entries = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // Every entry is checked before any is written: a file is imported whole or
                // not at all, and the error says so.
                let entry = line
                    .split_once(':')
                    .context("expected NAME:HASH")
                    .and_then(|(name, hash)| {
                        anyhow::ensure!(
                            ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)),
                            "{name} has a non-bcrypt hash; only bcrypt entries are accepted (recreate them with `htpasswd -B`)"
                        );
                        check_user_name(name)?;
                        Ok((name.to_owned(), hash.to_owned()))
                    })
                    .with_context(|| {
                        format!(
                            "{}:{}: no users were imported (fix or remove this entry and run again)",
                            file.display(),
                            i + 1
                        )
                    })?;
                entries.push(entry);
            }
            let first = meta.accounts().await?.is_empty();
            let (mut added, mut updated) = (0, 0);
            for (name, hash) in entries {
                let account = Account {
                    name: name.clone(),
                    kind: "user".into(),
                    password_hash: hash.clone(),
                    scopes: None,
                    created_at: 0,
                };
                match meta.create_account(&account).await {
                    Ok(()) => added += 1,
                    Err(berth_storage::Error::AlreadyExists { .. }) => {
                        meta.set_password(&name, &hash).await?;
                        updated += 1;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::from(e).context(format!(
                            "importing {name}: {added} new and {updated} existing users were imported before it"
                        )))
                    }
                }
            }
            println!("imported {added} new and {updated} existing users into {db}");
            if first && added > 0 {
                first_account_notice();
            }
        }
    }
    Ok(())
}

/// Says what the first account changes: a registry that chose `none` because there were no
/// accounts keeps running open until it restarts.
fn first_account_notice() {
    eprintln!(
        "berth-registry: this is the first account: a registry started on this data from now on \
         requires sign-in (token auth, unless --auth says otherwise); one already running open keeps \
         running open until it is restarted"
    );
}

async fn robot(cmd: RobotCmd, store: StoreArgs) -> anyhow::Result<()> {
    let (meta, db) = store.open_accounts().await?;
    let full = |n: &str| {
        if n.starts_with("robot$") {
            n.to_owned()
        } else {
            format!("robot${n}")
        }
    };
    match cmd {
        RobotCmd::Add { name, repos, actions } => {
            check_user_name(name.trim_start_matches("robot$"))?;
            let actions = actions
                .iter()
                .map(|a| {
                    Action::parse(a.trim()).with_context(|| format!("unknown action {a:?}: use pull, push or delete"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let scopes = serde_json::to_string(&vec![RobotScope { repos, actions }])?;
            let secret_bytes: [u8; 32] = rand::random();
            let secret = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret_bytes);
            let hash = tokio::task::spawn_blocking({
                let s = secret.clone();
                move || bcrypt::hash(s, BCRYPT_COST)
            })
            .await??;
            let name = full(&name);
            let first = meta.accounts().await?.is_empty();
            meta.create_account(&Account {
                name: name.clone(),
                kind: "robot".into(),
                password_hash: hash,
                scopes: Some(scopes),
                created_at: 0,
            })
            .await?;
            // Name, then secret: the only time the secret is shown. Standard output carries
            // only these two lines, for scripts; where they went is said on standard error.
            println!("{name}");
            println!("{secret}");
            eprintln!("berth-registry: added {name} to {db}");
            if first {
                first_account_notice();
            }
        }
        RobotCmd::Rm { name } => {
            let name = full(&name);
            anyhow::ensure!(meta.delete_account(&name).await?, "no robot {name} in {db}");
            println!("revoked {name} in {db}");
        }
        RobotCmd::List => {
            for a in meta.accounts().await?.into_iter().filter(|a| a.kind == "robot") {
                println!("{}\t{}", a.name, a.scopes.unwrap_or_default());
            }
        }
    }
    Ok(())
}
