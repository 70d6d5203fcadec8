//! `berth`: push, pull and copy container images without a docker daemon; docker-compatible
//! references and credentials. Exit codes: 0 ok, 1 failure, 2 usage.

use berth_client::archive;
use berth_client::credentials::{Credential, DockerConfig};
use berth_client::layout::Layout;
use berth_client::reference::Reference;
use berth_client::registry::{self, Repo};
use berth_client::transfer::{self, Show};
use berth_client::transport::{Options, Transport};
use berth_client::{Error, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Move container images between OCI layouts and registries"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Global {
    /// Speak plain HTTP to the registry.
    #[arg(long, global = true)]
    plain_http: bool,
    /// Skip TLS certificate verification.
    #[arg(long, global = true)]
    insecure: bool,
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print the result as JSON on standard output.
    #[arg(long, global = true)]
    json: bool,
    /// Blobs transferred in parallel.
    #[arg(long, global = true, default_value_t = 4)]
    jobs: usize,
    /// Upload blobs larger than this in resumable chunks of this size (e.g. 64M, for proxies
    /// that cap request bodies) [default: 512M].
    #[arg(long, global = true, env = "BERTH_CHUNK_SIZE", value_parser = parse_size)]
    chunk_size: Option<u64>,
}

/// A size with an optional K/M/G suffix (binary units).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64M)"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?} is not a usable size")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Store credentials for a registry (in docker's config.json or its credential helper).
    Login {
        /// Registry host[:port].
        host: String,
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove stored credentials.
    Logout { host: String },
    /// Push an image from an OCI image layout (`push DIR REF`) or a `docker save` archive
    /// (`push --docker-archive FILE REF`).
    Push {
        /// DIR REF, or REF with --docker-archive.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// A `docker save` archive to push instead of a layout.
        #[arg(long)]
        docker_archive: Option<PathBuf>,
        /// Which manifest of the layout (its org.opencontainers.image.ref.name), or which
        /// image of the archive (a RepoTags entry).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Pull an image into an OCI image layout (`--to DIR`) or a `docker load` archive
    /// (`--docker-archive FILE`).
    Pull {
        /// Source reference.
        reference: String,
        /// OCI image layout directory (created if needed).
        #[arg(long, required_unless_present = "docker_archive", conflicts_with = "docker_archive")]
        to: Option<PathBuf>,
        /// Write a tar that `docker load` reads.
        #[arg(long)]
        docker_archive: Option<PathBuf>,
        /// Only this platform of a multi-platform image (os/arch[/variant]); archives default
        /// to this machine's.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Copy an image between registries (or repositories).
    Copy {
        src: String,
        dst: String,
        /// Only this platform of a multi-platform image (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
        /// Copy every tag of the source repository.
        #[arg(long)]
        all_tags: bool,
    },
    /// List a repository's tags.
    Tags { repository: String },
    /// List a registry's repositories.
    Catalog { host: String },
    /// Show an image's manifest, config and history.
    Inspect { reference: String },
    /// Print an image's manifest digest.
    Digest { reference: String },
    /// Delete a tag (`REF:TAG`: the manifest stays, with its other tags), or a manifest
    /// (`REF@DIGEST`: refused while tags or tagged indexes refer to it, unless --force).
    Delete {
        reference: String,
        /// Delete the manifest even though tags or indexes refer to it (its tags go with it;
        /// the indexes are left listing a manifest that no longer exists).
        #[arg(long)]
        force: bool,
    },
}

fn parse_ref(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| Error::Usage(e.to_string()))
}

/// A registry named alone (login, logout, catalog): always a host, never a Docker Hub path.
fn host_ref(host: &str) -> Result<Reference> {
    let host = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = if host == "index.docker.io" { "docker.io" } else { host };
    if host.is_empty() || host.contains('/') {
        return Err(Error::Usage(format!("{host:?} is not a registry host[:port]")));
    }
    Ok(Reference {
        registry: host.to_owned(),
        repository: "x".to_owned(),
        tag: None,
        digest: None,
    })
}

fn transport(r: &Reference, g: &Global) -> Result<Arc<Transport>> {
    let config = DockerConfig::load_default().map_err(|e| Error::Usage(e.to_string()))?;
    let credential = config
        .get(&r.credential_key())
        .map_err(|e| Error::Usage(e.to_string()))?;
    let opts = Options {
        plain_http: g.plain_http,
        insecure: g.insecure,
        retries: 4,
    };
    Ok(Arc::new(Transport::new(
        &r.registry,
        r.api_host(),
        r.is_loopback(),
        credential,
        &opts,
    )?))
}

fn repo(r: &Reference, g: &Global) -> Result<Repo> {
    Ok(with_chunk(Repo::new(transport(r, g)?, &r.repository), g))
}

fn with_chunk(mut repo: Repo, g: &Global) -> Repo {
    if let Some(c) = g.chunk_size {
        repo.chunk = c;
    }
    repo
}

fn out(g: &Global, json: serde_json::Value, text: &str) {
    if g.json {
        println!("{json}");
    } else if !g.quiet && !text.is_empty() {
        println!("{text}");
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            if matches!(e, Error::Usage(_)) {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    let show = if g.json { Show::Quiet } else { Show::auto(g.quiet) };
    match cli.cmd {
        Cmd::Login {
            host,
            username,
            password_stdin,
        } => {
            let r = host_ref(&host)?;
            let username = match username {
                Some(u) => u,
                None => return Err(Error::Usage("give the user name with -u USER".into())),
            };
            if !password_stdin {
                eprintln!("reading the password from standard input");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Error::Usage(format!("reading the password: {e}")))?;
            let secret = line.trim_end_matches(['\n', '\r']).to_owned();
            if secret.is_empty() {
                return Err(Error::Usage("empty password".into()));
            }
            let cred = Credential {
                username,
                secret,
                identity_token: None,
            };
            let opts = Options {
                plain_http: g.plain_http,
                insecure: g.insecure,
                retries: 2,
            };
            let t = Transport::new(&r.registry, r.api_host(), r.is_loopback(), Some(cred.clone()), &opts)?;
            // A 401 once credentials were offered means they were refused: say that, not "log in".
            let refused = |e: Error| match e {
                Error::Registry {
                    registry,
                    status: 401,
                    code,
                    ..
                } => Error::Registry {
                    message: format!("the registry refused the password of {}", cred.username),
                    registry,
                    status: 401,
                    code,
                    hint: " (nothing was stored; check the user name and password)".into(),
                },
                e => e,
            };
            let resp = t
                .send(
                    reqwest::Method::GET,
                    "/v2/",
                    "",
                    reqwest::header::HeaderMap::new(),
                    None,
                )
                .await
                .map_err(refused)?;
            if !resp.status().is_success() {
                return Err(refused(t.fail(resp).await));
            }
            let mut config = DockerConfig::load_default().map_err(|e| Error::Usage(e.to_string()))?;
            config
                .store(&r.credential_key(), &cred)
                .map_err(|e| Error::Usage(e.to_string()))?;
            out(&g, serde_json::json!({"login": r.registry}), "Login Succeeded");
        }
        Cmd::Logout { host } => {
            let r = host_ref(&host)?;
            let mut config = DockerConfig::load_default().map_err(|e| Error::Usage(e.to_string()))?;
            let removed = config
                .erase(&r.credential_key())
                .map_err(|e| Error::Usage(e.to_string()))?;
            out(
                &g,
                serde_json::json!({"logout": r.registry, "removed": removed}),
                &if removed {
                    format!("Removed login credentials for {}", r.registry)
                } else {
                    format!("Not logged in to {}", r.registry)
                },
            );
        }
        Cmd::Push {
            args,
            docker_archive,
            tag,
        } => {
            let (dir, reference, _tmp) = match (&docker_archive, args.as_slice()) {
                (Some(file), [reference]) => {
                    let tmp = TempDir::new()?;
                    let layout = Layout::create(&tmp.0)?;
                    archive::import(file, tag.as_deref(), &layout, "import")?;
                    (tmp.0.clone(), reference.clone(), Some(tmp))
                }
                (None, [dir, reference]) => {
                    let dir = PathBuf::from(dir);
                    check_layout_dir(&dir)?;
                    (dir, reference.clone(), None)
                }
                (Some(_), _) => {
                    return Err(Error::Usage(
                        "with --docker-archive FILE give only the destination REF".into(),
                    ))
                }
                (None, _) => {
                    return Err(Error::Usage(
                        "usage: berth push DIR REF, or berth push --docker-archive FILE REF".into(),
                    ))
                }
            };
            let r = parse_ref(&reference)?;
            let layout = Layout::open(&dir)?;
            let dst = repo(&r, &g)?;
            let pick = if docker_archive.is_some() {
                Some("import")
            } else {
                tag.as_deref()
            };
            let s = transfer::push(&layout, pick, &dst, &r.reference(), g.jobs, show).await?;
            let text = format!(
                "{r}: digest: {} ({} blobs: {} pushed, {} mounted, {} existed; {} bytes sent)",
                s.digest, s.blobs, s.transferred, s.mounted, s.skipped, s.bytes
            );
            out(&g, serde_json::to_value(&s).unwrap_or_default(), &text);
        }
        Cmd::Pull {
            reference,
            to,
            docker_archive,
            platform,
        } => {
            let r = parse_ref(&reference)?;
            let src = repo(&r, &g)?;
            let tag = r.tag.clone().unwrap_or_else(|| r.reference());
            let (dir, tmp) = match (&to, &docker_archive) {
                (Some(d), _) => (d.clone(), None),
                (None, _) => {
                    let t = TempDir::new()?;
                    (t.0.clone(), Some(t))
                }
            };
            let platform = match (&platform, &docker_archive) {
                (None, Some(_)) => Some(berth_oci::platform::host()),
                (p, _) => p.clone(),
            };
            let layout = Layout::create(&dir)?;
            let s = transfer::pull(&src, &r.reference(), &layout, &tag, platform.as_deref(), g.jobs, show).await?;
            let target = match &docker_archive {
                Some(file) => {
                    let desc = layout.find(Some(&tag))?;
                    let repo_tag = format!(
                        "{}/{}:{}",
                        r.registry,
                        r.repository,
                        r.tag.clone().unwrap_or_else(|| "latest".into())
                    );
                    archive::export(&layout, &desc, &repo_tag, file)?;
                    file.display().to_string()
                }
                None => dir.display().to_string(),
            };
            drop(tmp);
            let text = format!(
                "{r}: digest: {} → {target} ({} blobs, {} pulled)",
                s.digest, s.blobs, s.transferred
            );
            out(&g, serde_json::to_value(&s).unwrap_or_default(), &text);
        }
        Cmd::Copy {
            src,
            dst,
            platform,
            all_tags,
        } => {
            let s = parse_ref(&src)?;
            let d = parse_ref(&dst)?;
            let from = repo(&s, &g)?;
            let to = if s.registry == d.registry {
                with_chunk(Repo::new(from.t.clone(), &d.repository), &g)
            } else {
                repo(&d, &g)?
            };
            let tmp = std::env::temp_dir().join(format!("berth-copy-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&tmp).map_err(|e| Error::Usage(format!("{}: {e}", tmp.display())))?;
            let pairs: Vec<(String, String)> = if all_tags {
                from.tags().await?.into_iter().map(|t| (t.clone(), t)).collect()
            } else {
                vec![(s.reference(), d.reference())]
            };
            let mut results = Vec::new();
            // A digest reference reads `repo@sha256:…`, a tag `repo:tag`.
            let join = |r: &Reference, at: &str| {
                let sep = if at.contains(':') { '@' } else { ':' };
                format!("{}/{}{sep}{at}", r.registry, r.repository)
            };
            for (a, b) in pairs {
                let r = transfer::copy(&from, &a, &to, &b, platform.as_deref(), &tmp, g.jobs, show).await;
                match r {
                    Ok(sum) => {
                        let (source, destination) = (join(&s, &a), join(&d, &b));
                        if !g.json && !g.quiet {
                            println!(
                                "{source} → {destination}: digest: {} ({} copied, {} mounted, {} existed)",
                                sum.digest, sum.transferred, sum.mounted, sum.skipped
                            );
                        }
                        let mut v = serde_json::to_value(&sum).unwrap_or_default();
                        v["source"] = serde_json::json!(source);
                        v["destination"] = serde_json::json!(destination);
                        if all_tags {
                            v["tag"] = serde_json::json!(a);
                        }
                        results.push(v);
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        return Err(e);
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&tmp);
            if g.json {
                println!("{}", serde_json::Value::Array(results));
            }
        }
        Cmd::Tags { repository } => {
            let r = parse_ref(&repository)?;
            let tags = repo(&r, &g)?.tags().await?;
            out(&g, serde_json::json!(tags), &tags.join("\n"));
        }
        Cmd::Catalog { host } => {
            let r = host_ref(&host)?;
            let t = transport(&r, &g)?;
            let repos = registry::catalog(&t).await?;
            out(&g, serde_json::json!(repos), &repos.join("\n"));
        }
        Cmd::Digest { reference } => {
            let r = parse_ref(&reference)?;
            let d = repo(&r, &g)?.resolve(&r.reference()).await?;
            out(&g, serde_json::json!({"digest": d}), &d.to_string());
        }
        Cmd::Delete { reference, force } => {
            let r = parse_ref(&reference)?;
            let rp = repo(&r, &g)?;
            let name = format!("{}/{}", r.registry, r.repository);
            match (&r.digest, &r.tag) {
                (None, tag) => {
                    let tag = tag.clone().unwrap_or_else(|| "latest".into());
                    let d = rp.resolve(&tag).await?;
                    rp.delete_tag(&tag).await?;
                    out(
                        &g,
                        serde_json::json!({"deleted_tag": format!("{name}:{tag}"), "digest": d}),
                        &format!("deleted the tag {name}:{tag} (the manifest {d} stays, reachable by digest)"),
                    );
                }
                (Some(d), _) => {
                    let holders = rp.holders(d).await?;
                    if !holders.is_empty() && !force {
                        return Err(Error::Usage(format!(
                            "{name}@{d} is {holders}: delete the tags instead (berth delete {name}:TAG), \
                             or pass --force to delete the manifest anyway"
                        )));
                    }
                    rp.delete_manifest(d).await?;
                    let broken: Vec<String> = holders.indexes.iter().map(|(t, i)| format!("{i} ({t})")).collect();
                    let mut text = format!("deleted the manifest {name}@{d}");
                    if !holders.tags.is_empty() {
                        text.push_str(&format!(" and its tags {}", holders.tags.join(", ")));
                    }
                    if !broken.is_empty() {
                        text.push_str(&format!("; these indexes still list it: {}", broken.join(", ")));
                    }
                    out(
                        &g,
                        serde_json::json!({
                            "deleted": format!("{name}@{d}"),
                            "digest": d,
                            "tags": holders.tags,
                            "indexes_left_listing_it": holders.indexes.iter().map(|(_, i)| i.to_string()).collect::<Vec<_>>(),
                        }),
                        &text,
                    );
                }
            }
        }
        Cmd::Inspect { reference } => {
            let r = parse_ref(&reference)?;
            let rp = repo(&r, &g)?;
            let m = rp.manifest(&r.reference()).await?;
            let manifest: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
            let config = match manifest["config"]["digest"].as_str().and_then(|d| d.parse().ok()) {
                Some(d) => {
                    let tmp = tempfile_in_temp()?;
                    let file = tmp.join("config");
                    rp.download(&d, &tmp.join("config.partial"), &file, &|_| {}).await?;
                    let v = std::fs::read(&file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .unwrap_or_default();
                    let _ = std::fs::remove_dir_all(&tmp);
                    v
                }
                None => serde_json::Value::Null,
            };
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"digest": m.digest, "mediaType": m.media_type, "manifest": manifest, "config": config})
                );
            } else {
                println!("Name:       {r}");
                println!("Digest:     {}", m.digest);
                println!("MediaType:  {}", m.media_type);
                if let Some(ls) = manifest["manifests"].as_array() {
                    println!("Platforms:");
                    for c in ls {
                        let p = &c["platform"];
                        println!(
                            "  {}/{}{}  {}",
                            p["os"].as_str().unwrap_or("?"),
                            p["architecture"].as_str().unwrap_or("?"),
                            p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default(),
                            c["digest"].as_str().unwrap_or("")
                        );
                    }
                }
                if let Some(ls) = manifest["layers"].as_array() {
                    println!("Layers:");
                    for l in ls {
                        println!(
                            "  {}  {:>12}  {}",
                            l["digest"].as_str().unwrap_or(""),
                            l["size"],
                            l["mediaType"].as_str().unwrap_or("")
                        );
                    }
                }
                if !config.is_null() {
                    let c = &config["config"];
                    println!(
                        "Platform:   {}/{}",
                        config["os"].as_str().unwrap_or("?"),
                        config["architecture"].as_str().unwrap_or("?")
                    );
                    println!("Entrypoint: {}", c["Entrypoint"]);
                    println!("Cmd:        {}", c["Cmd"]);
                    println!("Env:        {}", c["Env"]);
                    if let Some(h) = config["history"].as_array() {
                        println!("History:");
                        for e in h.iter().rev() {
                            println!(
                                "  {:<25} {}{}",
                                e["created"].as_str().unwrap_or(""),
                                e["created_by"]
                                    .as_str()
                                    .unwrap_or("")
                                    .chars()
                                    .take(100)
                                    .collect::<String>(),
                                if e["empty_layer"].as_bool() == Some(true) {
                                    "  (no layer)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Refuses, with its own message, what `push DIR` cannot take: a path that does not exist,
/// and a file (often a `docker save` archive, which wants --docker-archive).
fn check_layout_dir(dir: &std::path::Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!(
            "{}: no such file or directory (push takes an OCI image layout directory, or --docker-archive FILE)",
            dir.display()
        ))),
        Ok(m) if m.is_file() => Err(Error::Usage(format!(
            "{} is a file, not an OCI image layout directory: {}",
            dir.display(),
            if archive::looks_like_tar(dir) {
                "it is a tar archive (`docker save` writes those): push it with --docker-archive FILE REF"
            } else {
                "give the layout's directory (with index.json and blobs/), or a `docker save` archive with --docker-archive"
            }
        ))),
        _ => Ok(()),
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        Ok(TempDir(tempfile_in_temp()?))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_in_temp() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}
