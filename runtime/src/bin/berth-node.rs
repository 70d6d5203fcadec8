//! `berth-node`: pull images and run containers on this host, daemonless, the way
//! `docker run` users expect.
//!
//! Exit codes follow docker's: the container's own status for `run`, 125 when berth-node
//! itself fails, 126 when the command cannot be executed, 127 when it is not found.

use berth_client::reference::Reference;
use berth_client::transport::Options;
use berth_runtime::container::{self, spec, supervise, Container, Status};
use berth_runtime::image::{self, Images};
use berth_runtime::{Error, Node, Result};
use clap::{ArgAction, Parser, Subcommand};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "berth-node", version, about = "Pull images and run containers on this host")]
struct Cli {
    /// State directory: content, snapshots, containers.
    #[arg(long, global = true, env = "BERTH_NODE_ROOT", default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Speak plain HTTP to the registry.
    #[arg(long, global = true)]
    plain_http: bool,
    /// Skip TLS certificate verification.
    #[arg(long, global = true)]
    insecure: bool,
    /// `embedded`, or an OCI runtime binary on PATH (e.g. `runc`) fed a bundle.
    #[arg(long, global = true, env = "BERTH_RUNTIME", default_value = "embedded")]
    runtime: String,
    /// Keep compressed layers in the content store after unpacking (default: discard them).
    #[arg(long, global = true)]
    keep_layers: bool,
    /// The most one layer may unpack to (`64g`, `512m`): a sparse or compressed bomb stops
    /// there with an error, as does a layer larger than the free space.
    #[arg(long, global = true, env = "BERTH_MAX_LAYER_SIZE", value_parser = spec::parse_size)]
    max_layer_size: Option<i64>,
    /// Log what happens (to stderr).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image.
    Pull {
        /// Image reference.
        image: String,
        /// Platform `os/arch[/variant]` (default: this host's).
        #[arg(long)]
        platform: Option<String>,
    },
    /// List images.
    Images {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove images (content stays until `prune`).
    Rmi {
        /// Images by reference or ID.
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove even if a container uses it.
        #[arg(short, long)]
        force: bool,
    },
    /// Delete content and snapshots no image or container uses.
    Prune,
    /// Run a command in a new container.
    #[command(disable_help_flag = true)]
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output.
    Logs {
        /// Follow new output until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, short = 'n')]
        tail: Option<String>,
        /// Prefix each line with its time.
        #[arg(short, long)]
        timestamps: bool,
        /// Container name or id.
        container: String,
    },
    /// Stop containers: their stop signal, then SIGKILL.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        /// Signal name or number.
        #[arg(short, long, default_value = "SIGKILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to exit; print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Environment `KEY=value`.
        #[arg(short, long)]
        env: Vec<String>,
        /// Working directory.
        #[arg(short, long)]
        workdir: Option<String>,
        /// User.
        #[arg(short, long)]
        user: Option<String>,
        /// Container.
        container: String,
        /// Command.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Show a container or image as JSON.
    Inspect {
        /// Containers or images.
        #[arg(required = true)]
        what: Vec<String>,
    },
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    #[command(name = "__exec", hide = true)]
    ExecInit {
        #[arg(long)]
        target: i32,
        #[arg(long)]
        cgroups_path: Option<String>,
        #[arg(long)]
        process: PathBuf,
        /// The container's bundle, whose `linux.seccomp` the process runs under.
        #[arg(long)]
        seccomp_from: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise { id: String },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Container name.
    #[arg(long)]
    name: Option<String>,
    /// Environment `KEY=value` (or `KEY` to pass ours).
    #[arg(short, long)]
    env: Vec<String>,
    /// Files of `KEY=value` lines.
    #[arg(long)]
    env_file: Vec<PathBuf>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User `name|uid[:group|gid]`.
    #[arg(short, long)]
    user: Option<String>,
    /// Hostname.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Bind volume `HOST:CONTAINER[:ro]`.
    #[arg(short, long)]
    volume: Vec<spec::Volume>,
    /// Read-only root filesystem.
    #[arg(long)]
    read_only: bool,
    /// tmpfs mount `PATH[:options]`.
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Memory limit (`64m`, `1g`).
    #[arg(short, long, value_parser = spec::parse_size)]
    memory: Option<i64>,
    /// Memory + swap limit (`-1`: unlimited).
    #[arg(long, value_parser = spec::parse_size, allow_hyphen_values = true)]
    memory_swap: Option<i64>,
    /// CPUs (`0.5`).
    #[arg(long)]
    cpus: Option<f64>,
    /// Relative CPU weight.
    #[arg(short = 'c', long)]
    cpu_shares: Option<u64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// `none` (loopback only) or `host`.
    #[arg(long, default_value = "none")]
    network: String,
    /// Add a capability.
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability.
    #[arg(long)]
    cap_drop: Vec<String>,
    /// All capabilities, no masked paths.
    #[arg(long)]
    privileged: bool,
    /// Run a tiny init as PID 1 that reaps zombies.
    #[arg(long)]
    init: bool,
    /// `seccomp=unconfined`, `seccomp=PROFILE.json` (docker's format), `no-new-privileges`.
    #[arg(long)]
    security_opt: Vec<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// `missing`, `always` or `never`.
    #[arg(long, default_value = "missing")]
    pull: String,
    /// Platform for a pull.
    #[arg(long)]
    platform: Option<String>,
    /// Image.
    image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    // Bad flags exit 125 like docker's (clap's default is 2); help and version exit 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    let filter = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever an image put into the message (see `escape_controls`).
            eprintln!("berth-node: {}", berth_runtime::escape_controls(&e.to_string()));
            125
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn node(cli: &Cli) -> Result<Node> {
    let opts = Options {
        plain_http: cli.plain_http,
        insecure: cli.insecure,
        retries: 4,
    };
    let runtime = match cli.runtime.as_str() {
        "" | "embedded" => None,
        other => Some(other.to_owned()),
    };
    let mut node = Node::open(&cli.root, opts, runtime)?;
    node.keep_layers = cli.keep_layers;
    if let Some(max) = cli.max_layer_size {
        node.max_layer_size = u64::try_from(max).unwrap_or(u64::MAX);
    }
    Ok(node)
}

fn tokio() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("starting the async runtime: {e}")))
}

fn parse_ref(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| Error::Usage(e.to_string()))
}

fn pull(node: &Node, r: &Reference, platform: Option<&str>, quiet: bool) -> Result<image::ImageRecord> {
    let platform = platform.map(str::to_owned).unwrap_or_else(image::host_platform);
    let start = std::time::Instant::now();
    let (rec, report) = tokio()?.block_on(image::pull(node, r, &platform))?;
    if !quiet {
        eprintln!(
            "{}: {} layers unpacked, {} reused, {} bytes downloaded in {:.2}s",
            rec.name,
            report.unpacked,
            report.reused,
            report.downloaded,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(rec)
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Init { bundle, id, pid_file } => {
            return berth_runtime::linux::run(bundle, id, pid_file.as_deref()).or_else(|e| {
                eprintln!("berth-node: {}", berth_runtime::escape_controls(&e.to_string()));
                Ok(125)
            })
        }
        Cmd::ExecInit {
            target,
            cgroups_path,
            process,
            seccomp_from,
            pid_file,
        } => {
            let bytes = std::fs::read(process).map_err(Error::io(process))?;
            let p: berth_runtime::spec::Process =
                serde_json::from_slice(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", process.display())))?;
            let seccomp = match seccomp_from {
                Some(b) => berth_runtime::spec::Spec::load(b).map_err(Error::io(b))?.linux.seccomp,
                None => None,
            };
            return berth_runtime::linux::exec(
                *target,
                cgroups_path.as_deref(),
                &p,
                seccomp.as_ref(),
                pid_file.as_deref(),
            )
            .or_else(|e| {
                eprintln!("berth-node: {}", berth_runtime::escape_controls(&e.to_string()));
                Ok(125)
            });
        }
        _ => {}
    }
    let needs_root = !matches!(
        cli.cmd,
        Cmd::Images { .. } | Cmd::Ps { .. } | Cmd::Logs { .. } | Cmd::Inspect { .. }
    );
    if needs_root && !nix::unistd::geteuid().is_root() {
        return Err(Error::Usage(
            "berth-node must run as root: it mounts overlay filesystems and creates namespaces and cgroups (try sudo)"
                .into(),
        ));
    }
    let node = node(&cli)?;
    match cli.cmd {
        Cmd::Init { .. } | Cmd::ExecInit { .. } => Ok(0),
        Cmd::Supervise { id } => {
            // Out of the caller's session: closing its terminal must not stop the container.
            let _ = nix::unistd::setsid();
            let c = container::find(&node, &id)?;
            supervise::supervise(&node, &c, false)
        }
        Cmd::Pull { image, platform } => {
            let r = parse_ref(&image)?;
            let rec = pull(&node, &r, platform.as_deref(), false)?;
            println!("{}", rec.repo_digest);
            Ok(0)
        }
        Cmd::Images { json } => {
            let images = Images::load(&node)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images.images.values().collect::<Vec<_>>()).unwrap_or_default()
                );
            } else {
                println!("{:<48} {:<16} {:<14} {:>10}", "REPOSITORY", "TAG", "IMAGE ID", "SIZE");
                for rec in images.images.values() {
                    let (repo, tag) = split_name(&rec.name);
                    println!(
                        "{:<48} {:<16} {:<14} {:>10}",
                        repo,
                        tag,
                        &rec.config.hex()[..12],
                        human(rec.size)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Rmi { images, force } => {
            for name in berth_runtime::gc::remove_images(&node, &images, force)? {
                println!("Untagged: {name}");
            }
            Ok(0)
        }
        Cmd::Prune => {
            let p = berth_runtime::gc::prune(&node)?;
            println!(
                "deleted {} blobs and {} snapshots; reclaimed {} bytes",
                p.blobs, p.snapshots, p.bytes
            );
            Ok(0)
        }
        Cmd::Run(args) => run_container(&node, *args),
        Cmd::Ps { all, quiet, json } => {
            ps(&node, all, quiet, json)?;
            Ok(0)
        }
        Cmd::Logs {
            follow,
            tail,
            timestamps,
            container,
        } => {
            let c = container::find(&node, &container)?;
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| Error::Usage(format!("--tail {n:?}: a number of lines, or all")))?,
                ),
            };
            supervise::logs(&c, follow, tail, timestamps)?;
            Ok(0)
        }
        Cmd::Stop { time, containers } => {
            for name in containers {
                let c = container::find(&node, &name)?;
                container::stop(&c, Duration::from_secs(time))?;
                println!("{name}");
            }
            Ok(0)
        }
        Cmd::Kill { signal, containers } => {
            let sig = container::parse_signal(&signal)?;
            for name in containers {
                let c = container::find(&node, &name)?;
                container::kill(&c, sig)?;
                println!("{name}");
            }
            Ok(0)
        }
        Cmd::Rm { force, containers } => {
            for name in containers {
                let c = container::find(&node, &name)?;
                let s = c.state()?;
                if s.status == Status::Running {
                    if !force {
                        return Err(Error::Usage(format!(
                            "container {name} is running: stop it first, or use rm -f"
                        )));
                    }
                    let _ = container::kill(&c, nix::sys::signal::Signal::SIGKILL);
                    container::wait(&c, Some(Duration::from_secs(30)))?;
                }
                if c.dir.exists() {
                    container::remove(&node, &c)?;
                }
                println!("{name}");
            }
            Ok(0)
        }
        Cmd::Wait { containers } => {
            for name in containers {
                let c = container::find(&node, &name)?;
                let s = container::wait(&c, None)?;
                println!("{}", s.exit_code.unwrap_or(-1));
            }
            Ok(0)
        }
        Cmd::Exec {
            interactive,
            tty,
            env,
            workdir,
            user,
            container,
            cmd,
        } => {
            let c = container::find(&node, &container)?;
            let base = berth_runtime::spec::Spec::load(&c.dir).map_err(Error::io(c.dir.join("config.json")))?;
            let mut p = base.process.clone();
            p.args = cmd;
            p.terminal = tty && c.record.runtime.is_none();
            if let Some(w) = workdir {
                p.cwd = w;
            }
            if let Some(u) = user {
                p.user = spec::resolve_user(&c.rootfs(), &u)?;
            }
            let hostname = base.hostname.clone().unwrap_or_default();
            let image_env: Vec<String> = p.env.clone();
            p.env = spec::environment(&image_env, &env, &hostname, tty);
            supervise::exec(&node, &c, &p, interactive)
        }
        Cmd::Inspect { what } => {
            let mut out = Vec::new();
            for w in what {
                out.push(inspect(&node, &w)?);
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(0)
        }
    }
}

fn split_name(name: &str) -> (&str, &str) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo, digest);
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "<none>"),
    }
}

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}

fn ago(secs: u64) -> String {
    let d = container::now().saturating_sub(secs);
    match d {
        0..=59 => format!("{d} seconds"),
        60..=3599 => format!("{} minutes", d / 60),
        3600..=172_799 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86_400),
    }
}

fn env_files(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(Error::io(f))?;
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            out.push(l.to_owned());
        }
    }
    Ok(out)
}

fn run_container(node: &Node, a: RunArgs) -> Result<i32> {
    let network = match a.network.as_str() {
        "none" => spec::Network::None,
        "host" => spec::Network::Host,
        other => {
            return Err(Error::Usage(format!(
                "--network {other:?}: berth-node supports none (loopback only) and host"
            )))
        }
    };
    let mut env = env_files(&a.env_file)?;
    env.extend(a.env.iter().cloned());
    let mut opts = spec::RunOptions {
        cmd: a.cmd.clone(),
        entrypoint: a.entrypoint.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        volumes: a.volume.clone(),
        tmpfs: a.tmpfs.clone(),
        read_only: a.read_only,
        memory: a.memory,
        memory_swap: a.memory_swap,
        cpus: a.cpus,
        cpu_shares: a.cpu_shares,
        pids_limit: a.pids_limit,
        network,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        privileged: a.privileged,
        init: a.init,
        tty: a.tty,
        ..Default::default()
    };
    spec::security_opts(&a.security_opt, &mut opts)?;
    let found = Images::load(node)?.find(&a.image).cloned();
    let rec = match (a.pull.as_str(), found) {
        ("missing", Some(rec)) | ("never", Some(rec)) => rec,
        ("never", None) => {
            return Err(Error::NotFound(format!(
                "no such image: {} (and --pull never): pull it first",
                a.image
            )))
        }
        ("missing", None) | ("always", _) => {
            let r = parse_ref(&a.image)?;
            pull(node, &r, a.platform.as_deref(), a.detach)?
        }
        (other, _) => {
            return Err(Error::Usage(format!("--pull {other:?}: use missing, always or never")));
        }
    };
    let c = container::create(node, &rec, &a.image, a.name.as_deref(), opts, a.rm, a.interactive)?;
    if !a.detach {
        return supervise::supervise(node, &c, true);
    }
    detach(node, &c)?;
    println!("{}", c.record.id);
    Ok(0)
}

/// Starts a supervisor process for `c` that outlives this one, and waits until the
/// container runs (or failed to).
fn detach(node: &Node, c: &Container) -> Result<()> {
    let mut cmd = supervise::self_command();
    cmd.arg("--root").arg(&node.root);
    if let Some(rt) = &c.record.runtime {
        cmd.arg("--runtime").arg(rt);
    }
    cmd.arg("__supervise")
        .arg(&c.record.id)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(c.dir.join("supervisor.log")).map_err(Error::io(c.dir.join("supervisor.log")))?,
        ));
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Runtime(format!("starting the supervisor: {e}")))?;
    let start = std::time::Instant::now();
    loop {
        match c.state() {
            Ok(s) if s.status != Status::Created => return Ok(()),
            Err(_) if !c.dir.exists() => return Ok(()),
            _ => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(c.dir.join("supervisor.log")).unwrap_or_default();
            return Err(Error::Runtime(format!(
                "the supervisor exited ({status}) before the container started: {}",
                log.trim()
            )));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(Error::Runtime("the container did not start within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ps(node: &Node, all: bool, quiet: bool, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for c in container::list(node)? {
        let Ok(s) = c.state() else { continue };
        if !all && s.status != Status::Running {
            continue;
        }
        rows.push((c, s));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(c, s)| {
                serde_json::json!({
                    "Id": c.record.id, "Name": c.record.name, "Image": c.record.image,
                    "Command": c.record.args.join(" "), "Created": c.record.created,
                    "Status": s.status, "ExitCode": s.exit_code, "Pid": s.pid,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    if quiet {
        for (c, _) in &rows {
            println!("{}", &c.record.id[..12]);
        }
        return Ok(());
    }
    println!(
        "{:<12}   {:<30} {:<22} {:<16} {:<26} NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for (c, s) in rows {
        let mut cmd = c.record.args.join(" ");
        if cmd.len() > 20 {
            cmd = format!("{}…", cmd.chars().take(19).collect::<String>());
        }
        let status = match s.status {
            Status::Created => "Created".to_owned(),
            Status::Running => format!("Up {}", ago(s.started.unwrap_or(c.record.created))),
            Status::Exited => format!(
                "Exited ({}) {} ago",
                s.exit_code.unwrap_or(-1),
                ago(s.finished.unwrap_or(c.record.created))
            ),
        };
        println!(
            "{:<12}   {:<30} {:<22} {:<16} {:<26} {}",
            &c.record.id[..12],
            c.record.image,
            format!("\"{cmd}\""),
            format!("{} ago", ago(c.record.created)),
            status,
            c.record.name
        );
    }
    Ok(())
}

fn inspect(node: &Node, what: &str) -> Result<serde_json::Value> {
    match container::find(node, what) {
        Ok(c) => {
            let s = c.state()?;
            let spec = berth_runtime::spec::Spec::load(&c.dir).ok();
            let mounts: Vec<serde_json::Value> = c
                .record
                .options
                .volumes
                .iter()
                .map(|v| serde_json::json!({"Type": "bind", "Source": v.host, "Destination": v.container, "RW": !v.readonly}))
                .collect();
            let snapshot = node.snapshots.mounts(&c.record.snapshot).ok();
            Ok(serde_json::json!({
                "Id": c.record.id,
                "Name": c.record.name,
                "Created": c.record.created,
                "Path": c.record.args.first(),
                "Args": c.record.args.get(1..).unwrap_or(&[]),
                "Image": c.record.image_id,
                "ImageName": c.record.image,
                "State": {
                    "Status": s.status,
                    "Running": s.status == Status::Running,
                    "Pid": s.pid.unwrap_or(0),
                    "ExitCode": s.exit_code.unwrap_or(0),
                    "Error": s.error.unwrap_or_default(),
                    "StartedAt": s.started,
                    "FinishedAt": s.finished,
                },
                "Mounts": mounts,
                "Bundle": c.dir,
                "RootFs": c.rootfs(),
                "Snapshot": {"Key": c.record.snapshot, "Mounts": snapshot},
                "LogPath": c.log_path(),
                "Runtime": c.record.runtime.clone().unwrap_or_else(|| "embedded".into()),
                "HostConfig": c.record.options,
                "Spec": spec,
            }))
        }
        Err(Error::NotFound(_)) => {
            let images = Images::load(node)?;
            let rec = images
                .find(what)
                .ok_or_else(|| Error::NotFound(format!("no such container or image: {what}")))?;
            let config: serde_json::Value =
                serde_json::from_slice(&node.content.read(&rec.config)?).unwrap_or_default();
            Ok(serde_json::json!({
                "Id": rec.config,
                "RepoTags": [rec.name],
                "RepoDigests": [format!("{}@{}", split_name(&rec.name).0, rec.repo_digest)],
                "Size": rec.size,
                "Layers": rec.layers,
                "ChainIDs": rec.chain_ids,
                "Config": config,
            }))
        }
        Err(e) => Err(e),
    }
}
