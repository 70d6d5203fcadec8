//! The registry's one configuration, merged from the file, then `BERTH_*` environment
//! variables, then flags (each overriding the one before), and validated once at start.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the registry can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Loopback by default: exposing a registry is a decision.
    pub listen: SocketAddr,
    /// Data directory: blobs under `blobs/`, staged uploads under `uploads/`, and the SQLite
    /// database `berth.db` unless `database` says otherwise.
    pub data: PathBuf,
    /// Metadata database URL; defaults to `sqlite://<data>/berth.db`.
    pub database: Option<String>,
    /// Blob storage URL: `file:///PATH` (default `file://<data>`), `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`, or `memory://` (lost at exit: tests and
    /// throw-away registries).
    pub storage: Option<String>,
    /// How to reach `s3://` storage; unset values come from the `AWS_*` environment variables.
    pub s3: S3Config,
    /// How to reach `gs://` storage; unset values come from the `GOOGLE_*` environment
    /// variables.
    pub gcs: GcsConfig,
    /// How to reach `az://` storage; unset values come from the `AZURE_*` environment
    /// variables.
    pub azure: AzureConfig,
    /// Blob downloads answered with a redirect to the object store (off by default).
    pub redirect: RedirectConfig,
    /// Largest manifest accepted, in bytes. The spec asks registries to take at least 4 MiB.
    pub max_manifest_bytes: usize,
    /// Page size of tag and catalog listings when the client gives no `n`, and the largest `n`
    /// honoured: bounds the work one request can ask for.
    pub page_size: u32,
    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
    /// Who may do what.
    pub auth: AuthConfig,
    /// HTTPS.
    pub tls: TlsConfig,
    /// Garbage collection (the background task of `serve`, and the defaults of
    /// `berth-registry gc`).
    pub gc: GcConfig,
    /// Reverse proxies whose `X-Forwarded-For` is believed, as addresses or CIDR ranges
    /// (`10.0.0.0/8`): the request log names the client they forwarded for instead of the
    /// proxy. Empty by default: anyone can send the header.
    pub trusted_proxies: Vec<String>,
    /// Storage quotas (`[[quotas]]`), see [`QuotaRule`].
    pub quotas: Vec<QuotaRule>,
    /// Immutable tags (`[[immutable]]`), see [`ImmutableRule`].
    pub immutable: Vec<ImmutableRule>,
    /// Retention policies (`[[retention]]`), see [`RetentionRule`].
    pub retention: Vec<RetentionRule>,
    /// When retention runs, how long node reports hold, how often pulls are recorded.
    pub governance: GovernanceConfig,
}

/// A storage quota: the repositories matching `repos` together may hold at most `bytes`, each
/// blob and manifest counted once however many of them hold it. Checked when a blob upload
/// completes, when a blob is mounted and when a manifest is put; over the limit the request is
/// refused with 403 `DENIED` naming the quota, its usage and its limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    /// Repository globs (`*` within a component, `**` across): the quota's scope, and its name.
    pub repos: Vec<String>,
    /// The limit: a number of bytes or a size such as `500MiB`, `50GiB`, `2TB`.
    pub bytes: ByteSize,
}

/// A size in bytes, written as a number or with a unit (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`,
/// `GiB`, `TB`, `TiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a size such as `1024`, `500MiB`, `50GiB` or `1.5GB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 1048576, 500MiB, 50GiB or 2TB");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Immutable tags: in repositories matching `repos`, a tag matching `tags` names its first
/// manifest for good. A push that would move it, or a DELETE of it (or of its manifest), is
/// refused with 403 `DENIED`; re-pushing the same manifest under it is fine. Retention leaves
/// such tags alone (no need to lift immutability first), and what they name is never collected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableRule {
    /// Repository globs.
    pub repos: Vec<String>,
    /// Tag globs (`*` wildcards), e.g. `v*`, `release-*`.
    pub tags: Vec<String>,
}

/// A retention policy for the repositories matching `repos`, applied to their tags matching
/// `tags`: a tag is kept if it is among the `keep_last` most recently pushed, or was pulled (or
/// pushed) within `pulled_within`; otherwise its tag is removed (the manifest then goes with
/// garbage collection). With neither set, tags are left alone. `untagged_after` removes
/// manifests that have had no tag for that long. Immutable tags and manifests pinned by hand
/// or in use on a node are always kept. When several policies cover a tag, it is kept if any
/// of them keeps it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Repository globs.
    pub repos: Vec<String>,
    /// Tag globs; unset: every tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Keep this many most recently pushed tags (per repository).
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep tags pulled within this long (e.g. `30d`); a tag never pulled counts from its push.
    #[serde(default)]
    pub pulled_within: Option<String>,
    /// Remove manifests untagged for longer than this (e.g. `7d`).
    #[serde(default)]
    pub untagged_after: Option<String>,
}

/// Governance settings of `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// Seconds between retention runs in the background of `serve` (when `[[retention]]`
    /// policies exist); 0: only by `berth-registry retention run`.
    pub retention_interval_secs: u64,
    /// Seconds a node's report of the manifests its containers use protects them from
    /// retention and garbage collection; nodes report at every `run` and `rm`.
    pub node_report_window_secs: u64,
    /// Seconds between writes of recorded pulls (batched, so pulls never wait on the database).
    pub pull_flush_secs: u64,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            retention_interval_secs: 3600,
            node_report_window_secs: 7 * 24 * 3600,
            pull_flush_secs: 5,
        }
    }
}

/// Garbage collection settings.
///
/// Why these defaults: a run is cheap (one read of the metadata, one listing of the store), so
/// hourly keeps space from piling up. The grace period is a day because it must outlast
/// everything that legitimately holds unreferenced content: the longest push (blobs are
/// uploaded before their manifest), multi-architecture builds that push each platform's image
/// by digest and the index later, a client that resolved a tag just before it moved, and clock
/// skew between replicas. Reclaiming a day later costs only disk; reclaiming too early breaks a
/// release. Upload sessions idle for a day are abandoned: clients resume within minutes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run the collector in the background of `serve`. Safe on every replica at once (each
    /// deletion re-checks under a row lock); turn it off on all but one to save the work.
    pub enabled: bool,
    /// Seconds between background runs; the first starts after a random part of it, so
    /// replicas started together do not collect at the same moment.
    pub interval_secs: u64,
    /// Seconds unreferenced content is kept: untagged manifests, blobs no manifest needs.
    pub grace_secs: u64,
    /// Seconds an upload session may go without a chunk before it is purged with its data.
    pub upload_expiry_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval_secs: 3600,
            grace_secs: 24 * 3600,
            upload_expiry_secs: 24 * 3600,
        }
    }
}

impl GcConfig {
    /// The collector's options for a run (not a dry run).
    pub fn options(&self) -> berth_storage::gc::GcOptions {
        berth_storage::gc::GcOptions {
            grace: Duration::from_secs(self.grace_secs),
            upload_expiry: Duration::from_secs(self.upload_expiry_secs),
            dry_run: false,
        }
    }
}

/// Parses a duration such as `90s`, `15m`, `24h`, `7d`, `1h30m` or `0`; a bare number is
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 0, 90s, 15m, 24h, 7d or 1h30m");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        if digits == 0 || unit_len == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match &rest[digits..digits + unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return Err(bad()),
        };
        let part = unit.checked_mul(u32::try_from(n).map_err(|_| bad())?).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// S3 settings (`[s3]`): the storage crate's options, read straight from the file. Every value
/// is optional: unset ones come from `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (or the instance's role), as AWS tools do.
/// Prefer the environment for the secret.
pub type S3Config = berth_storage::blob::S3Options;

/// Blob downloads straight from the object store.
///
/// When on, `GET /v2/<name>/blobs/<digest>` is answered, after the usual access check, with a
/// `307` to a presigned URL of the object store (S3, GCS, Azure), so blob bytes bypass the
/// registry: its bandwidth and CPU then serve metadata only. Clients must be able to reach the
/// store's endpoint, and the URL itself grants the download until it expires. HEAD requests
/// and stores that cannot sign (file, memory) are served as before.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Answer blob GETs with a redirect.
    pub enabled: bool,
    /// Seconds a presigned URL stays valid. The store checks it when a download starts, so
    /// this only needs to cover the time between the redirect and the client following it;
    /// 20 minutes (as distribution's redirect middleware) leaves room for retries.
    pub expiry_secs: u64,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            enabled: false,
            expiry_secs: 20 * 60,
        }
    }
}

/// Google Cloud Storage settings (`[gcs]`), the storage crate's options. Unset values come
/// from `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`
/// or gcloud's application default credentials; with none of them the registry refuses to
/// start unless `instance_credentials` says to use the GCE/GKE metadata server.
pub type GcsConfig = berth_storage::blob::GcsOptions;

/// Azure Blob Storage settings (`[azure]`), the storage crate's options. Unset values come
/// from `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`,
/// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`;
/// with no credentials the registry refuses to start unless `managed_identity` says to use
/// the VM's or pod's.
pub type AzureConfig = berth_storage::blob::AzureOptions;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may do everything: for a registry on loopback only.
    None,
    /// HTTP Basic on every request.
    Basic,
    /// Docker token auth: `/token` issues short-lived JWTs, requests carry them as Bearer.
    Token,
}

/// An action on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// The token-spec name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses a token-spec action name.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// One access rule: these principals may do these actions on repositories matching these
/// globs (`*` within one path component, `**` across components).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// Repository globs, e.g. `team/*`, `library/**`, `**`.
    pub repos: Vec<String>,
    /// User names.
    pub users: Vec<String>,
    /// Group names (see `auth.groups`).
    pub groups: Vec<String>,
    /// Robot names (`robot$name`).
    pub robots: Vec<String>,
    /// Every signed-in user.
    pub authenticated: bool,
    /// Clients without credentials.
    pub anonymous: bool,
    /// What they may do.
    pub actions: Vec<Action>,
}

/// An external token issuer whose tokens the registry accepts, so a separate auth server can
/// be used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` claim its tokens carry.
    pub issuer: String,
    /// A PEM public key (EC or RSA) it signs with.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) with its keys, matched by `kid`.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
}

/// Authentication and authorization.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`, `basic` or `token`. Unset: `none` on loopback without accounts, `token` when
    /// accounts exist.
    pub mode: Option<AuthMode>,
    /// Basic realm shown by clients.
    pub realm: String,
    /// Token `service` (and JWT audience).
    pub service: String,
    /// JWT issuer of the built-in token service.
    pub issuer: String,
    /// Absolute URL of the token endpoint advertised in challenges; unset: derived from the
    /// request's Host and scheme (`<scheme>://<host>/token`).
    pub token_realm: Option<String>,
    /// Lifetime of access tokens, seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens (docker's identity token), seconds.
    pub refresh_ttl_secs: u64,
    /// Users who may do anything, including list the catalog.
    pub admins: Vec<String>,
    /// Groups: name → user names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Each signed-in user may pull, push and delete in `<user>/…`.
    pub user_namespaces: bool,
    /// Access rules, in addition to admins and user namespaces.
    pub rules: Vec<Rule>,
    /// External issuers whose tokens are accepted too.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Failed logins per user and client address before a lockout.
    pub max_failed_logins: u32,
    /// Lockout after too many failed logins, seconds.
    pub lockout_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: None,
            realm: "berth".into(),
            service: "berth".into(),
            issuer: "berth".into(),
            token_realm: None,
            token_ttl_secs: 300,
            refresh_ttl_secs: 30 * 24 * 3600,
            admins: Vec::new(),
            groups: BTreeMap::new(),
            user_namespaces: true,
            rules: Vec::new(),
            trusted_issuers: Vec::new(),
            max_failed_logins: 5,
            lockout_secs: 60,
        }
    }
}

/// HTTPS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate (chain) file.
    pub cert: Option<PathBuf>,
    /// PEM private key file.
    pub key: Option<PathBuf>,
    /// Generate a private CA and a certificate (kept under `<data>/tls`).
    pub self_signed: bool,
    /// Names (DNS or IP) for the self-signed certificate; unset: localhost, loopback IPs, the
    /// listen IP and the host name.
    pub names: Vec<String>,
    /// Allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    pub insecure_http: bool,
}

/// Whether the address or CIDR range `net` contains `ip`; `None` when `net` does not parse.
fn cidr_contains(net: &str, ip: std::net::IpAddr) -> Option<bool> {
    use std::net::IpAddr;
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => (a.trim().parse::<IpAddr>().ok()?, Some(l.trim().parse::<u32>().ok()?)),
        None => (net.trim().parse::<IpAddr>().ok()?, None),
    };
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(v4) => (u128::from(u32::from(v4)), 32),
                None => (u128::from(v), 128),
            },
        }
    };
    let (want, width) = bits(addr);
    let len = len.unwrap_or(width);
    if len > width {
        return None;
    }
    let (have, have_width) = bits(ip);
    if have_width != width {
        return Some(false);
    }
    let shift = width - len;
    Some(len == 0 || (want >> shift) == (have >> shift))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data: PathBuf::from("./berth-data"),
            database: None,
            storage: None,
            s3: S3Config::default(),
            gcs: GcsConfig::default(),
            azure: AzureConfig::default(),
            redirect: RedirectConfig::default(),
            max_manifest_bytes: 4 * 1024 * 1024,
            page_size: 1000,
            shutdown_grace_secs: 30,
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            gc: GcConfig::default(),
            trusted_proxies: Vec::new(),
            quotas: Vec::new(),
            immutable: Vec::new(),
            retention: Vec::new(),
            governance: GovernanceConfig::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data.join("berth.db").display()))
    }

    /// The blob storage URL in force.
    pub fn storage_url(&self) -> String {
        self.storage
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data.display()))
    }

    /// What the storage backends need to be reached.
    pub fn storage_options(&self) -> berth_storage::blob::StorageOptions {
        berth_storage::blob::StorageOptions {
            s3: self.s3.clone(),
            gcs: self.gcs.clone(),
            azure: self.azure.clone(),
        }
    }

    /// Whether `ip` is one of `trusted_proxies` (entries that do not parse match nothing;
    /// [`Config::validate`] refuses them).
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|p| cidr_contains(p, ip).unwrap_or(false))
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        for p in &self.trusted_proxies {
            anyhow::ensure!(
                cidr_contains(p, std::net::IpAddr::from([0, 0, 0, 0])).is_some(),
                "trusted_proxies: {p:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"
            );
        }
        anyhow::ensure!(
            self.tls.cert.is_some() == self.tls.key.is_some(),
            "tls: give both a certificate and a key (--tls-cert and --tls-key)"
        );
        anyhow::ensure!(
            !(self.tls.self_signed && self.tls.cert.is_some()),
            "tls: choose either a self-signed certificate or --tls-cert/--tls-key, not both"
        );
        anyhow::ensure!(self.auth.token_ttl_secs > 0, "auth.token_ttl_secs must be at least 1");
        for r in &self.auth.rules {
            anyhow::ensure!(
                !r.repos.is_empty(),
                "auth.rules: every rule needs at least one repos glob"
            );
        }
        anyhow::ensure!(self.page_size > 0, "page_size must be at least 1");
        anyhow::ensure!(
            !self.redirect.enabled || self.redirect.expiry_secs > 0,
            "redirect.expiry_secs must be at least 1"
        );
        anyhow::ensure!(
            !self.gc.enabled || self.gc.interval_secs > 0,
            "gc.interval_secs must be at least 1 (or set gc.enabled = false)"
        );
        anyhow::ensure!(
            self.gc.upload_expiry_secs > 0,
            "gc.upload_expiry_secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_manifest_bytes >= 4 * 1024 * 1024,
            "max_manifest_bytes must be at least 4 MiB (4194304): the distribution spec requires registries to accept manifests that large"
        );
        crate::governance::validate(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_unknown_keys() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:6000\"\npage_size = 50").expect("parse");
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.page_size, 50);
        assert_eq!(c.max_manifest_bytes, 4 << 20);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        assert!(c.database_url().ends_with("berth.db"));
        assert_eq!(c.storage_url(), "file://./berth-data");
        let c: Config =
            toml::from_str("storage = \"s3://b/p\"\n[s3]\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true")
                .expect("parse");
        assert_eq!(c.storage_url(), "s3://b/p");
        assert_eq!(c.s3.path_style, Some(true));
        assert!(toml::from_str::<Config>("[s3]\nbucket = \"x\"").is_err());
        let c: Config = toml::from_str(
            "storage = \"az://images/registry\"\n[azure]\naccount = \"acct\"\nmanaged_identity = true\n\
             [gcs]\nservice_account_path = \"/etc/berth/gcs.json\"",
        )
        .expect("parse");
        let o = c.storage_options();
        assert_eq!(o.azure.account.as_deref(), Some("acct"));
        assert!(o.azure.managed_identity);
        assert_eq!(o.gcs.service_account_path.as_deref(), Some("/etc/berth/gcs.json"));
        assert!(toml::from_str::<Config>("[gcs]\nbucket = \"x\"").is_err());
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let c: Config = toml::from_str(include_str!("../../deploy/config.example.toml")).expect("example parses");
        c.validate().expect("example validates");
        let d = Config::default();
        assert_eq!((c.listen, c.data, c.page_size), (d.listen, d.data, d.page_size));
        assert_eq!(
            (c.max_manifest_bytes, c.shutdown_grace_secs),
            (d.max_manifest_bytes, d.shutdown_grace_secs)
        );
        assert_eq!(
            (c.redirect.enabled, c.redirect.expiry_secs),
            (d.redirect.enabled, d.redirect.expiry_secs)
        );
        assert_eq!(
            (
                c.gc.enabled,
                c.gc.interval_secs,
                c.gc.grace_secs,
                c.gc.upload_expiry_secs
            ),
            (
                d.gc.enabled,
                d.gc.interval_secs,
                d.gc.grace_secs,
                d.gc.upload_expiry_secs
            )
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "h", "1x", "-1s", "1h-", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
