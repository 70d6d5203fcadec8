//! Registry processes for tests and benchmarks: Berth's own binary and the reference registry
//! (Debian's `docker-registry`, CNCF distribution 2.8), each started on a loopback port over a
//! directory of its own, waited for, and stopped gracefully (SIGTERM) or crashed (SIGKILL).
//! What a server was given for itself alone (a [`PgDatabase`], a [`Moto`] S3 server) can be
//! [attached](Server::attach) to it, and ends when the server does.
//!
//! Kept here, in the black-box crate, so the registry's end-to-end tests and `berth-bench`
//! start servers the same way.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Which registry a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `berth-registry`.
    Berth,
    /// `docker-registry` (distribution 2.8).
    Reference,
}

/// A running registry process, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// What runs.
    pub kind: Kind,
    /// `HOST:PORT`, `127.0.0.1:PORT` unless started with [`Server::berth_on`].
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    log: PathBuf,
    /// Whether it serves HTTPS (started with `--tls …` or `--tls-cert …`).
    tls: bool,
    /// Resources that end with the server (dropped after its process is gone).
    attached: Vec<Box<dyn std::any::Any + Send>>,
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary built into the same target directory as the running executable: next to it (a
/// binary) or one level up (a test in `deps/`).
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
        if d.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = d.parent();
    }
    bail!(
        "{name} is not built next to {}: run `cargo build --release --workspace --bins` first",
        exe.display()
    )
}

fn log_file(data: &Path, port: u16) -> Result<(PathBuf, std::fs::File)> {
    let log = data.with_extension(format!("{port}.log"));
    let f = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    Ok((log, f))
}

impl Server {
    /// Starts `berth-registry` (binary `bin`) over `data` on `port`.
    pub fn berth(bin: &Path, data: &Path, port: u16) -> Result<Server> {
        Self::berth_with(bin, data, port, &[])
    }

    /// Starts `berth-registry serve` with `extra` arguments (e.g. `--auth token`).
    pub fn berth_with(bin: &Path, data: &Path, port: u16, extra: &[&str]) -> Result<Server> {
        Self::berth_on(bin, data, "127.0.0.1", port, extra)
    }

    /// Starts `berth-registry serve` on `host:port` (`host` an IPv4 address) with `extra`
    /// arguments. A `--tls` or `--tls-cert` among them makes [`Self::url`] `https://`: some
    /// clients (dockerd) verify certificates only beyond loopback, so TLS tests may need a
    /// non-loopback address.
    pub fn berth_on(bin: &Path, data: &Path, host: &str, port: u16, extra: &[&str]) -> Result<Server> {
        std::fs::create_dir_all(data)?;
        let addr = format!("{host}:{port}");
        let tls = extra.iter().any(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            flag == "--tls" || flag == "--tls-cert"
        });
        let (log, f) = log_file(data, port)?;
        let child = Command::new(bin)
            .args(["serve", "--listen", &addr, "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Self::ready(child, Kind::Berth, addr, data, log, tls)
    }

    /// Starts the reference registry with storage under `data` on `port`, deletes enabled, no
    /// auth: settings equivalent to Berth's defaults.
    pub fn reference(data: &Path, port: u16) -> Result<Server> {
        std::fs::create_dir_all(data)?;
        let addr = format!("127.0.0.1:{port}");
        let config = data.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {addr}}}\n",
                data.join("store").display()
            ),
        )?;
        let (log, f) = log_file(data, port)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting docker-registry (Debian package docker-registry)")?;
        Self::ready(child, Kind::Reference, addr, data, log, false)
    }

    fn ready(child: Child, kind: Kind, addr: String, data: &Path, log: PathBuf, tls: bool) -> Result<Server> {
        let mut s = Server {
            child: Some(child),
            kind,
            addr,
            data: data.to_owned(),
            log,
            tls,
            attached: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&s.addr).is_ok() {
                return Ok(s);
            }
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{:?} exited with {status}\n{}", s.kind, s.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{:?} did not listen on {} within 20 s\n{}", s.kind, s.addr, s.log())
    }

    /// `http://127.0.0.1:PORT`, or `https://HOST:PORT` when it serves TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident set size (VmHWM) in KiB since start or the last [`Self::reset_peak_rss`].
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Resets the peak RSS counter (`clear_refs` 5), so a figure belongs to one workload.
    pub fn reset_peak_rss(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// SIGTERM, then waits for the exit (graceful shutdown).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("server already stopped")?;
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            let _ = child.kill();
        }
        Ok(child.wait()?)
    }

    /// SIGKILL: a crash. What was attached ends too.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.attached.clear();
    }

    /// Keeps `resource` until the server is crashed or dropped, then drops it (after the
    /// server's process is gone, so a database is no longer in use when it is dropped).
    pub fn attach(&mut self, resource: impl std::any::Any + Send) {
        self.attached.push(Box::new(resource));
    }
}

/// A database of its own for one server, made in a PostgreSQL cluster through `psql` (the
/// black-box crate has no SQL driver) and dropped, with everything in it, when this is.
pub struct PgDatabase {
    admin: String,
    name: String,
    /// The new database's URL.
    pub url: String,
}

impl PgDatabase {
    /// Creates `berth_<tag>_<pid>_<n>` through `admin` (a URL such as
    /// `postgres://berth:berth@127.0.0.1:5432/berth`, of a role that may create databases).
    pub fn create(admin: &str, tag: &str) -> Result<PgDatabase> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("berth_{tag}_{}_{n}", std::process::id());
        let (path, query) = admin.split_once('?').map_or((admin, ""), |(p, q)| (p, q));
        let base = path
            .split_once("://")
            .and_then(|(_, rest)| rest.contains('/').then(|| path.rsplit_once('/')))
            .flatten()
            .map(|(base, _)| base)
            .with_context(|| format!("{admin:?} is not a postgres://USER@HOST/DB URL"))?;
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            admin: admin.to_owned(),
            url: format!("{base}/{name}{query}"),
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("cannot drop database {}: {e:#}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql (Debian package postgresql-client)")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// moto's S3-compatible server (`moto_server`, PyPI `moto[server]`), on a free loopback port
/// with one empty bucket, stopped when dropped. It keeps objects in memory (spilling large ones
/// to temporary files), so one per server keeps a long benchmark from piling up there.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Starts it, logging beside `dir` (the server's data directory), and creates `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Result<Moto> {
        use std::io::{Read as _, Write as _};
        let port = free_port()?;
        let (_, f) = log_file(&dir.with_extension("moto"), port)?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting moto_server (pip install 'moto[server]')")?;
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match std::net::TcpStream::connect(&host) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = moto.child.try_wait() {
                        bail!("moto_server exited with {status}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => bail!("moto_server did not listen on {host} within 30 s: {e}"),
            }
        };
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        if !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.0 200") {
            bail!("creating bucket {bucket} on moto: {answer}");
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.crash();
        if std::thread::panicking() {
            eprintln!("--- {:?} log ({}) ---\n{}", self.kind, self.log.display(), self.log());
        }
    }
}
