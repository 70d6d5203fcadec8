//! TLS for the registry: where the certificate comes from, how it is loaded and reloaded, and
//! serving the router over it.
//!
//! # What this module owns
//! - [`prepare`] turns a [`TlsSource`] into [`TlsFiles`]. For `--tls-cert`/`--tls-key` it only
//!   checks that the files are there; for `--tls self-signed` it keeps a private CA and a server
//!   certificate in one directory (the registry passes `<data>/tls`):
//!
//!   ```text
//!   <dir>/            0700
//!     ca.crt          0644  the CA clients trust, e.g. /etc/docker/certs.d/<host:port>/ca.crt
//!     ca.key          0600  signs server certificates; it never needs to leave this directory
//!     server.crt      0644  server certificate (SANs = the names), then ca.crt: the chain we send
//!     server.key      0600
//!     server.names    0644  the names and expiry server.crt was issued for
//!   ```
//! - [`load`] and [`reload`] read PEM files into the rustls configuration axum-server serves
//!   with; [`reload_on_sighup`] calls [`reload`] on every SIGHUP.
//! - [`serve_tls`] runs the router on an already bound listener until a shutdown future
//!   resolves.
//! - [`is_loopback`] and [`default_names`] help the binary pick defaults.
//!
//! # Why it works this way
//! - **The CA outlives restarts; the server certificate does not have to.** Trusting a CA is a
//!   manual step on every client (copying `ca.crt`), so a new CA at each start would break every
//!   client at each restart. The server certificate is cheap: it is reissued whenever the names
//!   change or it comes within 30 days of expiry, and clients do not notice because they check
//!   it against the CA they already trust. If `ca.crt` is lost but `ca.key` is not, the CA
//!   certificate is reissued from the same key and name, which clients that trust the old copy
//!   still accept.
//! - **The CA's name is derived from its key** (`Berth registry CA <fingerprint>`), so signing
//!   with a kept CA needs only `ca.key`: without an X.509 parser we cannot read the name back
//!   out of `ca.crt`, and deriving it keeps two Berth CAs from sharing a name. A `ca.crt` that
//!   does not carry that name and key was not made by us and is refused rather than silently
//!   replaced, since clients may trust it.
//! - **The CA is unconstrained** (it may sign any name, because the names may change while the
//!   CA stays), so whoever reads `ca.key` can impersonate any host to clients that trust
//!   `ca.crt`: hence the 0700 directory and 0600 keys, and files written to a temporary name,
//!   synced and renamed, so no reader ever sees half a key.
//! - **A failed reload keeps the previous certificate.** Renewals are often copied in two steps
//!   (certificate, then key); a SIGHUP in between must not take a running registry off the air.
//!   The complete new configuration is built first and swapped in only if it is good; the
//!   operator sees the error in the log and sends SIGHUP again. Established connections keep
//!   what they negotiated; only new handshakes see a new certificate.
//! - **PEM is read here, not by axum-server,** so that every error names the file and says what
//!   to do (swapped flags, DER instead of PEM, encrypted key, key of another certificate).
//! - **ring is the only crypto provider** (through axum-server's `tls-rustls-ring` and rcgen's
//!   `ring`): no aws-lc C build. Keys are ECDSA P-256, which every TLS client accepts.
//!
//! This module uses Unix file modes and SIGHUP: Berth runs on Linux.

use anyhow::{anyhow, bail, Context as _};
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use sha2::Digest as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, error, info, warn};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const SERVER_NAMES: &str = "server.names";

const DAY: u64 = 24 * 60 * 60;
/// Long enough that nobody has to redistribute `ca.crt` during the registry's life.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// Under the 398 days some clients accept for server certificates.
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// A server certificate this close to expiry is reissued at the next start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY);
/// Certificates start an hour in the past, so clients whose clock is slightly behind accept them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given by the user (`--tls-cert`/`--tls-key`); the cert file may hold a chain.
    Files {
        /// The server certificate, optionally followed by intermediates.
        cert: PathBuf,
        /// The private key of the first certificate in `cert`.
        key: PathBuf,
    },
    /// `--tls self-signed`: a private CA and a server certificate for `names` (DNS names or IP
    /// addresses), kept under `dir` (the registry passes `<data>/tls`).
    SelfSigned {
        /// DNS names and IP addresses the server certificate must cover.
        names: Vec<String>,
        /// Directory holding the CA and server files; created 0700.
        dir: PathBuf,
    },
}

/// The files to load (and reload on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key of the server certificate.
    pub key: PathBuf,
    /// CA certificate users should trust (self-signed only).
    pub ca: Option<PathBuf>,
}

/// Prepares the files to serve with.
///
/// For [`TlsSource::Files`], checks that both files exist and are readable, so a typo fails at
/// start with the path and the flag to fix rather than at the first handshake.
///
/// For [`TlsSource::SelfSigned`], creates `dir` (0700), reuses `ca.crt`+`ca.key` if present or
/// generates them (ECDSA P-256, CA, ten years), and (re)issues `server.crt`+`server.key` (one
/// year, signed by the CA) unless the existing ones were issued for exactly these names and
/// are more than 30 days from expiry, as recorded in `server.names`. See the module doc for why.
///
/// Blocking (file I/O, key generation): call it at start, before serving.
pub fn prepare(source: &TlsSource) -> anyhow::Result<TlsFiles> {
    match source {
        TlsSource::Files { cert, key } => {
            check_readable(cert, "certificate", "--tls-cert")?;
            check_readable(key, "private key", "--tls-key")?;
            warn_if_world_readable(key);
            Ok(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
            })
        }
        TlsSource::SelfSigned { names, dir } => self_signed(names, dir),
    }
}

/// Loads the PEM files into a rustls config for axum-server, ALPN advertising `h2` and
/// `http/1.1`.
///
/// Errors say which file is wrong and what to do: not PEM, no certificate, no private key,
/// encrypted key, several keys, key that does not match the certificate.
pub async fn load(files: &TlsFiles) -> anyhow::Result<RustlsConfig> {
    let (chain, key) = read_chain_and_key(files).await?;
    // axum-server's config builders set the ALPN list to h2 then http/1.1.
    RustlsConfig::from_der(chain, key)
        .await
        .map_err(|e| unusable_pair(files, &e))
}

/// Reloads the certificate and key from `files` into the running `config`.
///
/// The new configuration is built completely before it replaces the old one, so on error
/// `config` keeps serving the previous certificate. New handshakes use the new certificate;
/// established connections are not touched.
pub async fn reload(config: &RustlsConfig, files: &TlsFiles) -> anyhow::Result<()> {
    let (chain, key) = read_chain_and_key(files).await?;
    config
        .reload_from_der(chain, key)
        .await
        .map_err(|e| unusable_pair(files, &e))
}

/// Spawns a task that reloads the certificate and key from `files` on every SIGHUP, without
/// dropping existing connections.
///
/// A failed reload is logged (`error`) and keeps the previous certificate; a good one is logged
/// at `info`. The signal handler is installed before this returns, so a SIGHUP sent right after
/// cannot fall back to the default action (terminating the registry). Must be called within a
/// tokio runtime. If the handler cannot be installed, that is logged and the task ends at once.
pub fn reload_on_sighup(config: RustlsConfig, files: TlsFiles) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let hangups = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let mut hangups = match hangups {
            Ok(hangups) => hangups,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match reload(&config, &files).await {
                Ok(()) => info!(
                    cert = %files.cert.display(),
                    key = %files.key.display(),
                    "SIGHUP: reloaded TLS certificate"
                ),
                Err(e) => error!(
                    error = format!("{e:#}"),
                    "SIGHUP: TLS reload failed; still serving the previous certificate"
                ),
            }
        }
    })
}

/// Serves `app` over TLS on an already bound listener until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for up to `grace` before closing what is left.
///
/// Handlers can extract `ConnectInfo<SocketAddr>`: the service is
/// `app.into_make_service_with_connect_info::<SocketAddr>()`. The listener is switched to
/// non-blocking mode here (axum-server does it), so callers can bind it any way they like.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    app: axum::Router,
    config: RustlsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
    let trigger = tokio::spawn(async move {
        shutdown.await;
        debug!(?grace, "TLS server shutting down");
        handle.graceful_shutdown(Some(grace));
    });
    let served = server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    // If the server failed before shutdown was asked for, nobody is left to trigger.
    trigger.abort();
    served
}

/// Whether serving on `addr` without TLS is acceptable by default: loopback only (127.0.0.0/8,
/// `::1`, and IPv4-mapped loopback), where nobody else on the network can read the traffic.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The names a self-signed certificate gets when the user names none: `localhost`,
/// `127.0.0.1`, `::1`, the listen address's IP when it is not unspecified (`0.0.0.0`/`::`),
/// and the machine's hostname (from `/proc/sys/kernel/hostname` or the `hostname` command)
/// when there is a usable one. Every name is valid for [`prepare`].
pub fn default_names(listen: &SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let ip = listen.ip().to_canonical();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    if let Some(host) = hostname() {
        names.push(host);
    }
    dedup(names)
}

/// The machine's hostname as a DNS name, if it has one worth certifying.
fn hostname() -> Option<String> {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| {
        let out = std::process::Command::new("hostname").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    // "(none)" is what the kernel reports when no hostname was ever set.
    let name = normalize_name(raw.trim()).ok()?;
    (name != "localhost" && name.parse::<IpAddr>().is_err()).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// User-supplied files

fn check_readable(path: &Path, what: &str, flag: &str) -> anyhow::Result<()> {
    let shown = path.display();
    match fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => bail!("TLS {what} {shown} is not a file; pass the PEM file itself with {flag}"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "TLS {what} file {shown} does not exist; check {flag}, \
             or use --tls self-signed to have Berth create a certificate"
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "TLS {what} file {shown} cannot be read by the user running the registry ({e}); \
             fix its owner or mode"
        ),
        Err(e) => bail!("cannot read TLS {what} file {shown}: {e}"),
    }
}

/// Not an error: distributions ship keys group-readable, and the key is the user's to guard.
fn warn_if_world_readable(key: &Path) {
    if let Ok(meta) = fs::metadata(key) {
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            warn!(
                key = %key.display(),
                mode = format!("{:o}", mode & 0o777),
                "TLS private key is readable by every user on this machine; chmod 600 it"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Self-signed: the private CA and the server certificate

/// The CA as needed for signing: its parameters rebuilt from the key (see the module doc).
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

fn self_signed(names: &[String], dir: &Path) -> anyhow::Result<TlsFiles> {
    let names = normalize_names(names)?;
    create_private_dir(dir)?;
    let now = unix_now()?;
    let ca = open_or_create_ca(dir, now)?;
    let files = TlsFiles {
        cert: dir.join(SERVER_CERT),
        key: dir.join(SERVER_KEY),
        ca: Some(dir.join(CA_CERT)),
    };
    match why_reissue(dir, &names, &ca.cert_pem, now) {
        None => debug!(?names, dir = %dir.display(), "reusing the self-signed server certificate"),
        Some(reason) => {
            info!(?names, reason, dir = %dir.display(), "issuing a self-signed server certificate");
            issue_server_cert(dir, &names, &ca, now)?;
        }
    }
    Ok(files)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create TLS directory {}", dir.display()))?;
    // An existing directory keeps its mode through create(); it holds CA keys, so tighten it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make TLS directory {} private (0700)", dir.display()))
}

fn open_or_create_ca(dir: &Path, now: Duration) -> anyhow::Result<Ca> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let have_cert = exists(&cert_path)?;
    let have_key = exists(&key_path)?;

    if !have_key {
        if have_cert {
            bail!(
                "{} exists but its key {} does not, so Berth cannot sign server certificates; \
                 restore {}, or delete {} to create a new CA (clients must then trust the new one)",
                cert_path.display(),
                key_path.display(),
                key_path.display(),
                cert_path.display()
            );
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate the CA key")?;
        let params = ca_params(&key, now);
        let cert = params.self_signed(&key).context("cannot create the CA certificate")?;
        // Key first: a crash before the certificate is written is repaired by the branch below.
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        info!(
            ca = %cert_path.display(),
            "created a private CA; clients must trust this file to connect \
             (e.g. copy it to /etc/docker/certs.d/<host:port>/ca.crt)"
        );
        return Ok(Ca {
            params,
            key,
            cert_pem: cert.pem(),
        });
    }

    let key_pem =
        fs::read_to_string(&key_path).with_context(|| format!("cannot read CA key {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        anyhow!(
            "CA key {} is not a PKCS#8 PEM private key ({e}); restore it, or delete {} and {} \
             to create a new CA (clients must then trust the new one)",
            key_path.display(),
            key_path.display(),
            cert_path.display()
        )
    })?;
    let params = ca_params(&key, now);

    if !have_cert {
        let cert = params.self_signed(&key).context("cannot reissue the CA certificate")?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        warn!(
            ca = %cert_path.display(),
            "CA certificate was missing; reissued it from the kept key and name, \
             so clients that trust the old copy still connect"
        );
        return Ok(Ca {
            params,
            key,
            cert_pem: cert.pem(),
        });
    }

    let cert_pem = fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read CA certificate {}", cert_path.display()))?;
    if !ca_cert_matches(&cert_pem, &key) {
        bail!(
            "CA certificate {} was not created by Berth for the key {}; Berth signs with a CA \
             it created itself. Put the original pair back, or move both away to create a new CA, \
             or serve your own certificate with --tls-cert/--tls-key",
            cert_path.display(),
            key_path.display()
        );
    }
    Ok(Ca { params, key, cert_pem })
}

/// The CA's parameters, rebuilt identically from the key at every start: the issuer name and
/// key identifier written into server certificates must match the kept `ca.crt`.
fn ca_params(key: &KeyPair, now: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(key);
    // Path length 0: this CA signs server certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + now.saturating_sub(BACKDATE);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + CA_VALIDITY);
    params
}

fn ca_common_name(key: &KeyPair) -> String {
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let fingerprint = hex::encode(&digest[..8]);
    format!("Berth registry CA {fingerprint}")
}

fn ca_name(key: &KeyPair) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Berth");
    name.push(DnType::CommonName, ca_common_name(key));
    name
}

/// Whether `pem` is a certificate for `key` carrying the name Berth gives it: both appear
/// verbatim in the DER (the raw public key inside the SPKI, the name as a UTF-8 string).
fn ca_cert_matches(pem: &str, key: &KeyPair) -> bool {
    let Ok(blocks) = parse_pem(pem) else {
        return false;
    };
    let Some(cert) = blocks.iter().find(|b| b.label == "CERTIFICATE") else {
        return false;
    };
    contains(&cert.der, key.public_key_raw()) && contains(&cert.der, ca_common_name(key).as_bytes())
}

/// Why the server certificate must be (re)issued, or `None` if the current one is fine.
fn why_reissue(dir: &Path, names: &[String], ca_pem: &str, now: Duration) -> Option<&'static str> {
    let Ok(recorded) = fs::read_to_string(dir.join(SERVER_NAMES)) else {
        return Some("no server certificate yet");
    };
    let Some((not_after, issued_for)) = parse_names_file(&recorded) else {
        return Some("server.names is unreadable");
    };
    if sorted(issued_for) != sorted(names.to_vec()) {
        return Some("the names changed");
    }
    if Duration::from_secs(not_after) < now + RENEW_BEFORE {
        return Some("the certificate expires within 30 days");
    }
    if !matches!(exists(&dir.join(SERVER_KEY)), Ok(true)) {
        return Some("server.key is missing");
    }
    match fs::read_to_string(dir.join(SERVER_CERT)) {
        // We write the CA after the leaf; a different tail means another CA signed it.
        Ok(chain) if chain.ends_with(ca_pem) => None,
        Ok(_) => Some("the CA changed"),
        Err(_) => Some("server.crt is missing"),
    }
}

fn issue_server_cert(dir: &Path, names: &[String], ca: &Ca, now: Duration) -> anyhow::Result<()> {
    // The names file is the commit marker: removed first and written last, so a crash in
    // between leaves no record and the next start issues again instead of trusting a
    // mismatched key and certificate.
    match fs::remove_file(dir.join(SERVER_NAMES)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.join(SERVER_NAMES).display())),
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate the server key")?;
    // CertificateParams::new makes IP-shaped names IP SANs and the rest DNS SANs.
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| anyhow!("cannot put {names:?} in a certificate: {e}"))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "Berth");
    if let Some(first) = names.first() {
        subject.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = subject;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let not_after = now + SERVER_VALIDITY;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + now.saturating_sub(BACKDATE);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + not_after;

    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the server certificate")?;

    let mut chain = cert.pem();
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(&ca.cert_pem);

    write_file(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_CERT), chain.as_bytes(), 0o644)?;
    write_file(
        &dir.join(SERVER_NAMES),
        names_file(names, not_after.as_secs()).as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn names_file(names: &[String], not_after: u64) -> String {
    let mut out = String::from(
        "# Written by Berth: what server.crt was issued for. Berth issues a new certificate\n\
         # when the requested names differ or expiry is within 30 days; do not edit.\n",
    );
    out.push_str(&format!("not-after {not_after}\n"));
    for name in names {
        out.push_str(&format!("name {name}\n"));
    }
    out
}

fn parse_names_file(text: &str) -> Option<(u64, Vec<String>)> {
    let mut not_after = None;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some(("not-after", secs)) => not_after = Some(secs.trim().parse().ok()?),
            Some(("name", name)) => names.push(name.trim().to_owned()),
            _ => return None,
        }
    }
    Some((not_after?, names))
}

/// Checks and canonicalises the requested names, so that `server.names` compares equal for
/// equal requests: IPs in standard form (brackets allowed around IPv6), DNS names lowercase
/// without a trailing dot, duplicates dropped.
fn normalize_names(names: &[String]) -> anyhow::Result<Vec<String>> {
    if names.is_empty() {
        bail!("no names for the self-signed certificate: give at least one DNS name or IP address");
    }
    let names = names
        .iter()
        .map(|n| normalize_name(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(dedup(names))
}

fn normalize_name(raw: &str) -> anyhow::Result<String> {
    let name = raw.trim();
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_canonical().to_string());
    }
    let dns = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |(i, label): (usize, &str)| {
        (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    if dns.is_empty() || dns.len() > 253 || !dns.split('.').enumerate().all(label_ok) {
        bail!(
            "{raw:?} is not a DNS name or an IP address; a certificate names hosts, \
             e.g. registry.example.com or 10.0.0.5"
        );
    }
    Ok(dns)
}

fn dedup(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and at most 16 bytes once DER-encoded.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn unix_now() -> anyhow::Result<Duration> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970; certificates need the current time")
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists()
        .with_context(|| format!("cannot check whether {} exists", path.display()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes `path` atomically with `mode`: a temporary file created with that mode (never briefly
/// readable by others), synced, then renamed over `path`, then the directory synced.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let write = || -> io::Result<()> {
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; certificates must stay readable to copy.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Reading PEM

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and decoded contents.
struct PemBlock {
    label: String,
    der: Vec<u8>,
    /// RFC 1421 headers such as `Proc-Type: 4,ENCRYPTED` (legacy OpenSSL encrypted keys).
    has_headers: bool,
}

const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// Splits PEM text into blocks. Text outside blocks (OpenSSL's `subject=` lines, comments) is
/// ignored, as other TLS tools do.
fn parse_pem(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String, bool)> = None;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        match open.take() {
            None => {
                if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                    open = Some((label.to_owned(), String::new(), false));
                }
            }
            Some((label, mut body, mut has_headers)) => {
                if line.starts_with("-----END ") {
                    if line != format!("-----END {label}-----") {
                        return Err(format!("line {number}: {line:?} closes a block opened as {label:?}"));
                    }
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("the {label} block ending on line {number} is not valid base64 ({e})"))?;
                    blocks.push(PemBlock {
                        label,
                        der,
                        has_headers,
                    });
                } else {
                    if line.contains(':') {
                        has_headers = true;
                    } else {
                        body.push_str(line);
                    }
                    open = Some((label, body, has_headers));
                }
            }
        }
    }
    if let Some((label, _, _)) = open {
        return Err(format!("the {label} block has no END line (is the file truncated?)"));
    }
    Ok(blocks)
}

async fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<PemBlock>> {
    let shown = path.display();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| anyhow!("cannot read TLS {what} file {shown}: {e}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        anyhow!(
            "TLS {what} file {shown} is not PEM text (binary: DER?); convert it with \
             `openssl {} -inform der -in {shown} -out {shown}.pem`",
            if what == "certificate" { "x509" } else { "pkey" }
        )
    })?;
    parse_pem(text).map_err(|e| anyhow!("TLS {what} file {shown} is not valid PEM: {e}"))
}

/// Reads the certificate chain (server certificate first) and the one private key, as DER.
async fn read_chain_and_key(files: &TlsFiles) -> anyhow::Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();

    let blocks = read_pem(&files.cert, "certificate").await?;
    let chain: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der.clone())
        .collect();
    if chain.is_empty() {
        if blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY")) {
            bail!(
                "TLS certificate file {cert_path} holds a private key but no certificate; \
                 are --tls-cert and --tls-key swapped?"
            );
        }
        bail!(
            "TLS certificate file {cert_path} is not a PEM certificate: \
             no -----BEGIN CERTIFICATE----- block found"
        );
    }

    let blocks = read_pem(&files.key, "private key").await?;
    if blocks
        .iter()
        .any(|b| b.label == "ENCRYPTED PRIVATE KEY" || (b.has_headers && b.label.ends_with("PRIVATE KEY")))
    {
        bail!(
            "TLS private key file {key_path} is encrypted, and the registry cannot ask for a \
             passphrase; decrypt it with `openssl pkey -in {key_path} -out <new file>` and keep \
             that file private (chmod 600)"
        );
    }
    let mut keys: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| KEY_LABELS.contains(&b.label.as_str()))
        .map(|b| b.der.clone())
        .collect();
    match keys.len() {
        1 => {}
        0 if blocks.iter().any(|b| b.label == "CERTIFICATE") => bail!(
            "TLS private key file {key_path} holds a certificate but no private key; \
             are --tls-cert and --tls-key swapped?"
        ),
        0 => bail!(
            "no private key found in TLS private key file {key_path}: expected a \
             -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block"
        ),
        n => bail!(
            "TLS private key file {key_path} holds {n} private keys; keep only the key of \
             the certificate in {cert_path}"
        ),
    }
    Ok((chain, keys.remove(0)))
}

/// Explains why rustls refused a certificate and key that both parsed as PEM.
fn unusable_pair(files: &TlsFiles, e: &io::Error) -> anyhow::Error {
    let (cert, key) = (files.cert.display(), files.key.display());
    let detail = e.to_string();
    // rustls reports a mismatch as `InconsistentKeys(KeyMismatch)`; there is no typed way to
    // reach it through axum-server's io::Error.
    if detail.contains("KeyMismatch") {
        anyhow!(
            "the private key in {key} does not match the certificate in {cert}; the first \
             certificate in {cert} must be the server's own (intermediates after it), and \
             {key} its key"
        )
    } else {
        anyhow!("cannot use TLS certificate {cert} with private key {key}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio_rustls::client::TlsStream;

    type Result<T = ()> = anyhow::Result<T>;

    fn self_signed_source(dir: &Path, names: &[&str]) -> TlsSource {
        TlsSource::SelfSigned {
            names: names.iter().map(|n| n.to_string()).collect(),
            dir: dir.to_owned(),
        }
    }

    fn mode(path: &Path) -> Result<u32> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    fn app() -> axum::Router {
        axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow ok"
                }),
            )
    }

    /// A `serve_tls` on 127.0.0.1:0, stopped through its shutdown future.
    struct TestServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl TestServer {
        fn start(config: RustlsConfig) -> Result<Self> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(serve_tls(listener, app(), config, shutdown, Duration::from_secs(5)));
            Ok(TestServer { addr, stop, task })
        }

        async fn stop(self) -> Result {
            let _ = self.stop.send(());
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .context("server did not stop within 10s of shutdown")???;
            Ok(())
        }
    }

    /// A client that trusts only the certificates in `ca`, so a pass proves the chain.
    async fn connect(addr: SocketAddr, ca: &Path, name: &str, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned())?;
        Ok(connector.connect(server_name, tcp).await?)
    }

    /// Sends one HTTP/1.1 GET and reads one response (by Content-Length), leaving the
    /// connection usable when `close` is false.
    async fn get_on(stream: &mut TlsStream<TcpStream>, path: &str, close: bool) -> Result<String> {
        let connection = if close { "close" } else { "keep-alive" };
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;

        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed before the response headers");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("response without Content-Length")?;
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed before the response body");
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&buf[..head_end + length]).into_owned())
    }

    #[test]
    fn self_signed_files_have_private_modes_and_survive_restarts() -> Result {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data/tls");
        let files = prepare(&self_signed_source(&dir, &["localhost", "127.0.0.1"]))?;

        assert_eq!(files.cert, dir.join("server.crt"));
        assert_eq!(files.key, dir.join("server.key"));
        assert_eq!(files.ca, Some(dir.join("ca.crt")));
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(mode(&dir.join("ca.key"))?, 0o600);
        assert_eq!(mode(&dir.join("server.key"))?, 0o600);
        assert_eq!(mode(&dir.join("ca.crt"))?, 0o644);

        let ca = fs::read(dir.join("ca.crt"))?;
        let server = fs::read(dir.join("server.crt"))?;
        let server_text = String::from_utf8(server.clone())?;
        assert_eq!(server_text.matches("BEGIN CERTIFICATE").count(), 2, "leaf + CA");
        assert!(server.ends_with(&ca), "server.crt must end with the CA certificate");
        assert_eq!(String::from_utf8(ca.clone())?.matches("BEGIN CERTIFICATE").count(), 1);

        // A restart with the same names (in another order and case) reuses everything.
        let again = prepare(&self_signed_source(&dir, &["127.0.0.1", "LOCALHOST."]))?;
        assert_eq!(again, files);
        assert_eq!(fs::read(dir.join("ca.crt"))?, ca, "CA reused byte for byte");
        assert_eq!(fs::read(dir.join("server.crt"))?, server, "server cert reused");

        // Different names: same CA, new server certificate.
        prepare(&self_signed_source(&dir, &["berth.test", "10.0.0.5"]))?;
        assert_eq!(fs::read(dir.join("ca.crt"))?, ca, "CA kept when names change");
        let renamed = fs::read(dir.join("server.crt"))?;
        assert_ne!(renamed, server, "server cert reissued for new names");
        assert!(renamed.ends_with(&ca));
        let recorded = fs::read_to_string(dir.join("server.names"))?;
        assert!(recorded.contains("name berth.test\n"), "{recorded}");
        assert!(recorded.contains("name 10.0.0.5\n"), "{recorded}");
        assert_eq!(mode(&dir.join("server.key"))?, 0o600);
        Ok(())
    }

    #[tokio::test]
    async fn self_signed_reissues_near_expiry_and_repairs_a_lost_ca_cert() -> Result {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("tls");
        let source = self_signed_source(&dir, &["localhost"]);
        prepare(&source)?;
        let ca = fs::read(dir.join("ca.crt"))?;
        let server = fs::read(dir.join("server.crt"))?;

        // Pretend the certificate expires tomorrow.
        let tomorrow = unix_now()?.as_secs() + DAY;
        fs::write(dir.join("server.names"), names_file(&["localhost".into()], tomorrow))?;
        prepare(&source)?;
        assert_ne!(fs::read(dir.join("server.crt"))?, server, "renewed near expiry");
        assert_eq!(fs::read(dir.join("ca.crt"))?, ca);

        // ca.crt lost but ca.key kept: the CA certificate is reissued from the same key and
        // name, the server certificate is reissued under it, and a client that still trusts
        // only the OLD copy of ca.crt connects.
        let old_ca = tmp.path().join("old-ca.crt");
        fs::copy(dir.join("ca.crt"), &old_ca)?;
        fs::remove_file(dir.join("ca.crt"))?;
        let files = prepare(&source)?;
        let reissued = fs::read(dir.join("ca.crt"))?;
        assert_ne!(reissued, ca, "a new CA certificate (new serial and dates)");
        assert!(fs::read(dir.join("server.crt"))?.ends_with(&reissued));
        let server = TestServer::start(load(&files).await?)?;
        let mut tls = connect(server.addr, &old_ca, "localhost", &[b"http/1.1"]).await?;
        assert!(get_on(&mut tls, "/", true).await?.ends_with("ok"));
        drop(tls);
        server.stop().await?;

        // ca.key lost: refuse rather than replace a CA that clients may trust.
        fs::remove_file(dir.join("ca.key"))?;
        let err = format!("{:#}", prepare(&source).err().context("must fail")?);
        assert!(err.contains("ca.key"), "{err}");

        // Names that are not hosts are refused with the name in the message.
        let err = format!(
            "{:#}",
            prepare(&self_signed_source(&dir, &["not a host"]))
                .err()
                .context("must fail")?
        );
        assert!(err.contains("not a host"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn handshake_trusting_only_the_ca() -> Result {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("tls");
        let files = prepare(&self_signed_source(&dir, &["localhost", "127.0.0.1"]))?;
        let ca = files.ca.clone().context("self-signed has a CA")?;
        let server = TestServer::start(load(&files).await?)?;

        for name in ["localhost", "127.0.0.1"] {
            let mut tls = connect(server.addr, &ca, name, &[b"http/1.1"]).await?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let response = get_on(&mut tls, "/", true).await?;
            assert!(response.starts_with("HTTP/1.1 200"), "{name}: {response}");
            assert!(response.ends_with("\r\n\r\nok"), "{name}: {response}");
        }

        // The server advertises h2.
        let tls = connect(server.addr, &ca, "localhost", &[b"h2"]).await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        drop(tls);

        // Handlers see the real peer address.
        let mut tls = connect(server.addr, &ca, "localhost", &[]).await?;
        let local = tls.get_ref().0.local_addr()?;
        let response = get_on(&mut tls, "/peer", true).await?;
        assert!(response.ends_with(&local.to_string()), "{response}");
        drop(tls);

        // A name the certificate does not cover is refused by the client.
        assert!(connect(server.addr, &ca, "berth.test", &[]).await.is_err());

        server.stop().await
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() -> Result {
        let tmp = tempfile::tempdir()?;
        let files = prepare(&self_signed_source(tmp.path(), &["localhost"]))?;
        let ca = files.ca.clone().context("self-signed has a CA")?;
        let server = TestServer::start(load(&files).await?)?;
        let addr = server.addr;

        let mut tls = connect(addr, &ca, "localhost", &[b"http/1.1"]).await?;
        let in_flight = tokio::spawn(async move { get_on(&mut tls, "/slow", false).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop().await?;
        let response = in_flight.await??;
        assert!(response.ends_with("slow ok"), "{response}");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting after shutdown"
        );
        Ok(())
    }

    #[tokio::test]
    async fn reload_switches_certificate_for_new_connections_only() -> Result {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("tls");
        let files = prepare(&self_signed_source(&dir, &["localhost"]))?;
        let ca = files.ca.clone().context("self-signed has a CA")?;
        let config = load(&files).await?;
        let server = TestServer::start(config.clone())?;

        let mut old = connect(server.addr, &ca, "localhost", &[b"http/1.1"]).await?;
        assert!(get_on(&mut old, "/", false).await?.ends_with("ok"));
        assert!(connect(server.addr, &ca, "berth.test", &[]).await.is_err());

        // New names into the same files, then what SIGHUP does.
        let renamed = prepare(&self_signed_source(&dir, &["berth.test"]))?;
        assert_eq!(renamed, files);
        reload(&config, &files).await?;

        let mut new = connect(server.addr, &ca, "berth.test", &[b"http/1.1"]).await?;
        assert!(get_on(&mut new, "/", false).await?.ends_with("ok"));
        assert!(
            connect(server.addr, &ca, "localhost", &[]).await.is_err(),
            "new handshakes get the new certificate"
        );
        // The connection opened before the reload keeps working.
        assert!(get_on(&mut old, "/", false).await?.ends_with("ok"));

        // A broken key on disk: reload fails, naming the file, and the server keeps the
        // certificate it had.
        fs::write(&files.key, "not a key\n")?;
        let err = format!("{:#}", reload(&config, &files).await.err().context("must fail")?);
        assert!(err.contains(&files.key.display().to_string()), "{err}");
        let mut after = connect(server.addr, &ca, "berth.test", &[b"http/1.1"]).await?;
        assert!(get_on(&mut after, "/", true).await?.ends_with("ok"));

        drop((old, new, after));
        server.stop().await
    }

    #[tokio::test]
    async fn bad_files_are_named_in_errors() -> Result {
        let tmp = tempfile::tempdir()?;
        let a = prepare(&self_signed_source(&tmp.path().join("a"), &["localhost"]))?;
        let b = prepare(&self_signed_source(&tmp.path().join("b"), &["localhost"]))?;

        // Not PEM at all.
        let junk = tmp.path().join("junk.pem");
        fs::write(&junk, "hello, I am not a certificate\n")?;
        let files = TlsFiles {
            cert: junk.clone(),
            key: a.key.clone(),
            ca: None,
        };
        let err = format!("{:#}", load(&files).await.err().context("must fail")?);
        assert!(err.contains(&junk.display().to_string()), "{err}");
        assert!(err.contains("not a PEM certificate"), "{err}");

        // Binary (DER) instead of PEM.
        let der = tmp.path().join("cert.der");
        fs::write(&der, [0x30u8, 0x82, 0xff, 0xfe, 0x00])?;
        let files = TlsFiles {
            cert: der.clone(),
            key: a.key.clone(),
            ca: None,
        };
        let err = format!("{:#}", load(&files).await.err().context("must fail")?);
        assert!(err.contains(&der.display().to_string()), "{err}");
        assert!(err.contains("openssl x509 -inform der"), "{err}");

        // Key file without a key.
        let files = TlsFiles {
            cert: a.cert.clone(),
            key: junk.clone(),
            ca: None,
        };
        let err = format!("{:#}", load(&files).await.err().context("must fail")?);
        assert!(err.contains("no private key found"), "{err}");
        assert!(err.contains(&junk.display().to_string()), "{err}");

        // Swapped flags.
        let files = TlsFiles {
            cert: a.key.clone(),
            key: a.cert.clone(),
            ca: None,
        };
        let err = format!("{:#}", load(&files).await.err().context("must fail")?);
        assert!(err.contains("swapped"), "{err}");

        // The key of another certificate.
        let files = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
            ca: None,
        };
        let err = format!("{:#}", load(&files).await.err().context("must fail")?);
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains(&b.key.display().to_string()), "{err}");

        // Files that do not exist fail in prepare, naming the path and the flag.
        let missing = tmp.path().join("missing.crt");
        let source = TlsSource::Files {
            cert: missing.clone(),
            key: a.key.clone(),
        };
        let err = format!("{:#}", prepare(&source).err().context("must fail")?);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("--tls-cert"), "{err}");
        let source = TlsSource::Files {
            cert: a.cert.clone(),
            key: missing.clone(),
        };
        let err = format!("{:#}", prepare(&source).err().context("must fail")?);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("--tls-key"), "{err}");

        // User files that are fine load, chain included.
        let source = TlsSource::Files {
            cert: a.cert.clone(),
            key: a.key.clone(),
        };
        let files = prepare(&source)?;
        assert_eq!(files.ca, None);
        load(&files).await?;
        Ok(())
    }

    #[test]
    fn loopback_addresses() -> Result {
        for loopback in ["127.0.0.1:5000", "127.3.2.1:80", "[::1]:5000", "[::ffff:127.0.0.1]:1"] {
            assert!(is_loopback(&loopback.parse()?), "{loopback}");
        }
        for exposed in ["0.0.0.0:5000", "[::]:5000", "10.0.0.1:5000", "192.168.1.2:443"] {
            assert!(!is_loopback(&exposed.parse()?), "{exposed}");
        }
        Ok(())
    }

    #[test]
    fn default_names_cover_loopback_and_the_listen_ip() -> Result {
        let names = default_names(&"0.0.0.0:5000".parse()?);
        assert_eq!(names[..3], ["localhost", "127.0.0.1", "::1"]);
        assert!(!names.iter().any(|n| n == "0.0.0.0"), "{names:?}");
        assert!(!default_names(&"[::]:5000".parse()?).iter().any(|n| n == "::"));

        let names = default_names(&"10.1.2.3:5000".parse()?);
        assert!(names.iter().any(|n| n == "10.1.2.3"), "{names:?}");

        let names = default_names(&"127.0.0.1:5000".parse()?);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no duplicates: {names:?}");

        // Whatever the hostname is, the defaults make a valid certificate.
        let tmp = tempfile::tempdir()?;
        let files = prepare(&TlsSource::SelfSigned {
            names: default_names(&"10.1.2.3:5000".parse()?),
            dir: tmp.path().to_owned(),
        })?;
        assert!(files.cert.exists());
        Ok(())
    }

    #[test]
    fn names_are_normalized() -> Result {
        assert_eq!(normalize_name("Registry.Example.COM.")?, "registry.example.com");
        assert_eq!(normalize_name("[::1]")?, "::1");
        assert_eq!(normalize_name("::ffff:10.0.0.1")?, "10.0.0.1");
        assert_eq!(normalize_name("*.example.com")?, "*.example.com");
        for bad in ["", "a b", "-x.example", "x..y", "http://x", "a.*.b", "é.example"] {
            assert!(normalize_name(bad).is_err(), "{bad:?} should be refused");
        }
        Ok(())
    }
}
