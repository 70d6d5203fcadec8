//! Registry credentials shared with docker: `~/.docker/config.json` and docker credential helpers,
//! so that `docker login` and `berth login` see the same accounts.
//!
//! # The file
//!
//! ```json
//! {
//!     "auths": {
//!         "127.0.0.1:5000": { "auth": "YWxpY2U6czNjcmV0" },
//!         "ghcr.io": { "auth": "YWxpY2U6", "identitytoken": "eyJ…" },
//!         "https://index.docker.io/v1/": {}
//!     },
//!     "credsStore": "desktop",
//!     "credHelpers": { "123456789.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login" },
//!     "proxies": { "default": { "httpProxy": "…" } }
//! }
//! ```
//!
//! - `auths` is keyed by [`Reference::credential_key`](crate::reference::Reference::credential_key):
//!   `host[:port]`, or `https://index.docker.io/v1/` for Docker Hub. `auth` is
//!   `base64("user:password")`. After a login to a token-auth registry docker keeps no password:
//!   `auth` is `base64("user:")` and `identitytoken` holds the refresh token the token service gave.
//!   Older files and other tools use keys with a scheme or path (`https://host:5000`,
//!   `host:5000/v2/`), which docker still matches by host.
//! - `credsStore` names a helper program `docker-credential-<name>` that holds every registry's
//!   secret; `credHelpers` names one per registry and wins over `credsStore`. With a helper, the
//!   file keeps only an empty `auths` entry (docker writes it so that the login is listed).
//! - Everything else in the file (proxies, aliases, plugin settings, …) belongs to other tools and is
//!   written back untouched.
//!
//! # Which store answers
//!
//! Like docker, one store is chosen per key: the helper from `credHelpers[key]`, else `credsStore`,
//! else the file (`credHelpers[key] = ""` selects the file even when `credsStore` is set, as in
//! docker). One departure: when the chosen helper has nothing for the key, a plaintext
//! `auths` entry is still used — docker would report "no credentials" although the user put them
//! there. A helper that *fails* is an error, never silently skipped.
//!
//! # Blocking
//!
//! Helpers are separate programs run with [`std::process::Command`] and may wait on a keychain
//! prompt, and the file is read and written with blocking I/O. These calls are rare (once per
//! registry per command) and short, so the API is synchronous; on an async runtime use
//! [`DockerConfig::get_async`], or wrap calls in `tokio::task::spawn_blocking`.
//!
//! # Secrets
//!
//! No password, identity token or `auth` value ever appears in an error message, a log line or a
//! `Debug` output: [`Credential`] and [`DockerConfig`] redact themselves, JSON errors report only a
//! position (serde_json quotes the offending value), and helper output is shown only when the
//! helper failed, when it holds the helper's own error message.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the config file inside the docker config directory.
const CONFIG_FILE: &str = "config.json";
/// Credential helpers are programs named `docker-credential-<name>` on `PATH`.
const HELPER_PREFIX: &str = "docker-credential-";
/// The user name docker gives a helper to say "the secret is an identity token".
const TOKEN_USERNAME: &str = "<token>";
/// What helpers print (on stdout, exiting non-zero) when they hold nothing for a key; docker's
/// standard message is "credentials not found in native keychain".
const NOT_FOUND_MESSAGE: &str = "credentials not found";
/// How much of a failing helper's output an error repeats.
const HELPER_OUTPUT_MAX: usize = 500;

/// One registry account, as docker keeps it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credential {
    /// The account name. Empty when a credential helper holds only an identity token: docker
    /// stores those under the user name `<token>`, so the real name is lost.
    pub username: String,
    /// The password (or a personal access token used as one). Empty when an identity token is
    /// used instead.
    pub secret: String,
    /// identity token (refresh token) instead of a password: what a token-auth registry returned
    /// at login, exchanged at its token service with `grant_type=refresh_token`.
    pub identity_token: Option<String>,
}

/// Shows who, never the secret, so that a `{:?}` in a log line cannot leak it.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &if self.secret.is_empty() { "" } else { "<redacted>" })
            .field("identity_token", &self.identity_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A docker `config.json`, loaded whole so that fields berth does not know survive a write.
#[derive(Clone)]
pub struct DockerConfig {
    /// `<dir>/config.json`; need not exist yet.
    path: PathBuf,
    /// The parsed file's top-level object (empty for a missing file).
    raw: Map<String, Value>,
    /// `PATH` for finding helpers; `None` means the process's own. Tests inject a directory of
    /// fake helpers here instead of changing the process environment, which other threads read.
    helper_path: Option<OsString>,
}

/// Shows the path only: the parsed file holds secrets.
impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What went wrong reading or writing credentials. Messages name the file, key or helper and never
/// contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Neither `$DOCKER_CONFIG` nor `$HOME` says where the config lives.
    #[error("cannot locate the docker config: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir,
    /// The config file exists but could not be read.
    #[error("cannot read docker config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The config file is not JSON. Only the position is reported: serde_json's own message may
    /// quote the offending value, which may be a secret.
    #[error("docker config {} is not valid JSON: {category} error at line {line}, column {column}", path.display())]
    Json {
        /// The config file.
        path: PathBuf,
        /// "syntax", "data" or "eof".
        category: &'static str,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// A field of the config file has the wrong JSON type.
    #[error("docker config {}: {field} must be {expected}", path.display())]
    Shape {
        /// The config file.
        path: PathBuf,
        /// Which field, e.g. `auths["ghcr.io"]`.
        field: String,
        /// What it must be, e.g. "an object".
        expected: &'static str,
    },
    /// An `auths` entry's `auth` is not base64 of `user:password` with a non-empty user.
    #[error("docker config {}: auths[{key:?}].auth is not base64 of \"user:password\"", path.display())]
    BadAuth {
        /// The config file.
        path: PathBuf,
        /// The `auths` key of the entry.
        key: String,
    },
    /// Writing the config file (or its directory, or the temporary file beside it) failed.
    #[error("cannot write docker config {}: {source}", path.display())]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The helper program could not be started (typically: not installed, not on `PATH`).
    #[error("cannot run credential helper {program} ({action} for {key:?}): {source}")]
    HelperSpawn {
        /// `docker-credential-<name>`.
        program: String,
        /// `get`, `store` or `erase`.
        action: &'static str,
        /// The registry key.
        key: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The helper ran and failed.
    #[error("credential helper {program} {action} failed for {key:?} ({status}): {output}")]
    HelperFailed {
        /// `docker-credential-<name>`.
        program: String,
        /// `get`, `store` or `erase`.
        action: &'static str,
        /// The registry key.
        key: String,
        /// How it exited.
        status: String,
        /// Its stdout and stderr (where helpers print errors), trimmed, on one line, shortened.
        output: String,
    },
    /// The helper's `get` exited successfully but did not print `{"Username", "Secret"}` JSON. Its
    /// output is not shown: it may hold the secret.
    #[error(
        "credential helper {program} get for {key:?} printed something other than {{\"Username\",\"Secret\"}} JSON"
    )]
    HelperOutput {
        /// `docker-credential-<name>`.
        program: String,
        /// The registry key.
        key: String,
    },
    /// The blocking task running a lookup for [`DockerConfig::get_async`] panicked or was cancelled.
    #[error("credential lookup for {key:?} did not complete: {source}")]
    Task {
        /// The registry key.
        key: String,
        /// Why the task ended.
        source: tokio::task::JoinError,
    },
}

type Result<T, E = CredentialsError> = std::result::Result<T, E>;

/// The `auths` entry that docker writes for a credential (docker's `encodeAuth`): with an identity
/// token the password is dropped, and an entry with neither user nor password gets no `auth`.
fn auth_entry(cred: &Credential) -> Value {
    let mut entry = Map::new();
    let password = if cred.identity_token.is_some() {
        ""
    } else {
        cred.secret.as_str()
    };
    if !cred.username.is_empty() || !password.is_empty() {
        let encoded = BASE64.encode(format!("{}:{}", cred.username, password));
        entry.insert("auth".into(), Value::String(encoded));
    }
    if let Some(token) = &cred.identity_token {
        entry.insert("identitytoken".into(), Value::String(token.clone()));
    }
    Value::Object(entry)
}

/// The host (`host[:port]`) an `auths` key stands for: docker's `ConvertToHostname`, which strips a
/// scheme and any path so that legacy keys like `https://host:5000/v1/` still match.
fn key_hostname(key: &str) -> &str {
    let rest = match key.split_once("://") {
        Some((_, rest)) => rest,
        None => key,
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    // A URL may carry userinfo (`user@host`); the host is what follows it.
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// `$DOCKER_CONFIG`, else `$HOME/.docker` — the directory docker itself uses. Empty values count as
/// unset, as in docker.
fn default_dir(docker_config: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    match (docker_config.filter(|v| !v.is_empty()), home.filter(|v| !v.is_empty())) {
        (Some(dir), _) => Ok(PathBuf::from(dir)),
        (None, Some(home)) => Ok(PathBuf::from(home).join(".docker")),
        (None, None) => Err(CredentialsError::NoConfigDir),
    }
}

/// `s` on one line and at most [`HELPER_OUTPUT_MAX`] characters.
fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= HELPER_OUTPUT_MAX {
        joined
    } else {
        let mut out: String = joined.chars().take(HELPER_OUTPUT_MAX).collect();
        out.push('…');
        out
    }
}

/// What a helper's `get` prints.
#[derive(serde::Deserialize)]
struct HelperCredential {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// What a helper's `store` reads.
#[derive(serde::Serialize)]
struct HelperStore<'a> {
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
    #[serde(rename = "Username")]
    username: &'a str,
    #[serde(rename = "Secret")]
    secret: &'a str,
}

/// The outcome of running a helper: its stdout on success, or "not found".
enum HelperAnswer {
    Done(Vec<u8>),
    NotFound,
}

impl DockerConfig {
    /// Loads docker's own config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`
    /// (`$HOME`). A missing file is an empty config, as for a user who never ran `docker login`.
    pub fn load_default() -> Result<DockerConfig> {
        let dir = default_dir(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))?;
        Self::load(&dir)
    }

    /// Loads `dir/config.json` (the directory `docker --config DIR` takes). A missing or empty file
    /// is an empty config; a malformed one is an error, as in docker, rather than something a later
    /// [`store`](Self::store) would silently overwrite.
    pub fn load(dir: &Path) -> Result<DockerConfig> {
        let path = dir.join(CONFIG_FILE);
        let raw = match fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Value::Object(Map::new()),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CredentialsError::Json {
                path: path.clone(),
                category: match e.classify() {
                    serde_json::error::Category::Io => "io",
                    serde_json::error::Category::Syntax => "syntax",
                    serde_json::error::Category::Data => "data",
                    serde_json::error::Category::Eof => "unexpected end of file",
                },
                line: e.line(),
                column: e.column(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Value::Object(Map::new()),
            Err(source) => return Err(CredentialsError::Read { path, source }),
        };
        let Value::Object(raw) = raw else {
            return Err(CredentialsError::Shape {
                path,
                field: "the top level".into(),
                expected: "an object",
            });
        };
        let config = DockerConfig {
            path,
            raw,
            helper_path: None,
        };
        config.check_shape()?;
        Ok(config)
    }

    /// The config file's path (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rejects a file whose credential fields have the wrong types, so that lookups and writes can
    /// rely on them (docker refuses such a file too).
    fn check_shape(&self) -> Result<()> {
        let shape = |field: String, expected| CredentialsError::Shape {
            path: self.path.clone(),
            field,
            expected,
        };
        let top = &self.raw;
        match top.get("auths") {
            None | Some(Value::Null) => {}
            Some(Value::Object(auths)) => {
                for (key, entry) in auths {
                    let Some(entry) = entry.as_object() else {
                        return Err(shape(format!("auths[{key:?}]"), "an object"));
                    };
                    for field in ["auth", "username", "password", "identitytoken"] {
                        if !matches!(entry.get(field), None | Some(Value::Null | Value::String(_))) {
                            return Err(shape(format!("auths[{key:?}].{field}"), "a string"));
                        }
                    }
                }
            }
            Some(_) => return Err(shape("auths".into(), "an object")),
        }
        match top.get("credHelpers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(helpers)) => {
                if let Some((key, _)) = helpers.iter().find(|(_, v)| !v.is_string()) {
                    return Err(shape(format!("credHelpers[{key:?}]"), "a string"));
                }
            }
            Some(_) => return Err(shape("credHelpers".into(), "an object")),
        }
        if !matches!(top.get("credsStore"), None | Some(Value::Null | Value::String(_))) {
            return Err(shape("credsStore".into(), "a string"));
        }
        Ok(())
    }

    /// Looks up credentials for a registry key (as `Reference::credential_key` gives).
    ///
    /// The helper `credHelpers[key]`, else `credsStore`, is asked first (`docker-credential-<helper>
    /// get` with the key on stdin; a user name of `<token>` means the secret is an identity token);
    /// if it has nothing, or no helper is configured, the `auths` entry for the key is used
    /// (`auth` = base64 `user:password`, and/or `identitytoken`), matching keys written with a
    /// scheme or path as docker does. `Ok(None)` means "anonymous".
    ///
    /// Blocks while a helper runs; see the module docs.
    pub fn get(&self, key: &str) -> Result<Option<Credential>> {
        if let Some(helper) = self.helper_for(key) {
            if let Some(cred) = self.helper_get(helper, key)? {
                return Ok(Some(cred));
            }
        }
        self.file_get(key)
    }

    /// [`get`](Self::get) on tokio's blocking pool, for callers on an async runtime: a helper may
    /// take a while (a keychain prompt), and must not stall a worker thread meanwhile.
    pub async fn get_async(&self, key: &str) -> Result<Option<Credential>> {
        let config = self.clone();
        let owned = key.to_owned();
        tokio::task::spawn_blocking(move || config.get(&owned))
            .await
            .map_err(|source| CredentialsError::Task {
                key: key.to_owned(),
                source,
            })?
    }

    /// Stores credentials like `docker login`.
    ///
    /// With a helper configured for the key (`credHelpers[key]`, else `credsStore`), the secret goes
    /// to `docker-credential-<name> store` (an identity token under the user name `<token>`, as
    /// docker does) and the file gets only an empty `auths[key]` entry, replacing any plaintext one.
    /// Otherwise `auths[key]` becomes `{"auth": base64(user:password)}`, or
    /// `{"auth": base64(user:), "identitytoken": …}` when `cred` has an identity token (its
    /// `secret` is then not written, as docker drops the password once it has a token).
    ///
    /// The file is replaced atomically (a temporary file beside it, then a rename: readers never
    /// see half a file) with mode 0600, its directory created with mode 0700 if needed, and every
    /// other field left as it was. A symlinked `config.json` is written through, not replaced.
    pub fn store(&mut self, key: &str, cred: &Credential) -> Result<()> {
        let entry = match self.helper_for(key) {
            Some(helper) => {
                let (username, secret) = match &cred.identity_token {
                    Some(token) => (TOKEN_USERNAME, token.as_str()),
                    None => (cred.username.as_str(), cred.secret.as_str()),
                };
                let request = HelperStore {
                    server_url: key,
                    username,
                    secret,
                };
                let mut input = serde_json::to_vec(&request).unwrap_or_default();
                input.push(b'\n');
                let helper = helper.to_owned();
                self.run_helper(&helper, "store", key, &input)?;
                Value::Object(Map::new())
            }
            None => auth_entry(cred),
        };
        if self.auths().and_then(|a| a.get(key)) == Some(&entry) {
            // Nothing changes: leave the file (and its timestamp) alone, as docker does.
            return Ok(());
        }
        self.update_auths(|auths| auths.insert(key.to_owned(), entry));
        self.save()
    }

    /// Removes credentials like `docker logout`: `docker-credential-<name> erase` when a helper is
    /// configured for the key, and in any case every `auths` entry that [`get`](Self::get) would
    /// match for it (the exact key and scheme/path variants), so that nothing is left to log in
    /// with. Returns whether anything was removed.
    pub fn erase(&mut self, key: &str) -> Result<bool> {
        let mut removed = false;
        if let Some(helper) = self.helper_for(key).map(str::to_owned) {
            removed = matches!(
                self.run_helper(&helper, "erase", key, key.as_bytes())?,
                HelperAnswer::Done(_)
            );
        }
        let variants: Vec<String> = self
            .auths()
            .map(|auths| {
                auths
                    .keys()
                    .filter(|k| k.as_str() == key || key_hostname(k) == key)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !variants.is_empty() {
            self.update_auths(|auths| {
                for k in &variants {
                    auths.remove(k);
                }
            });
            self.save()?;
            removed = true;
        }
        Ok(removed)
    }

    /// The helper that holds `key`'s secret, if any: `credHelpers[key]`, else `credsStore`. An
    /// empty name means "no helper" (docker's way to exempt one registry from `credsStore`).
    fn helper_for(&self, key: &str) -> Option<&str> {
        let top = &self.raw;
        let specific = top.get("credHelpers").and_then(|h| h.get(key)).and_then(Value::as_str);
        let name = match specific {
            Some(name) => name,
            None => top.get("credsStore").and_then(Value::as_str).unwrap_or(""),
        };
        (!name.is_empty()).then_some(name)
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.raw.get("auths").and_then(Value::as_object)
    }

    /// Applies `f` to the `auths` object, creating it if missing (or `null`).
    fn update_auths<R>(&mut self, f: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
        let slot = self.raw.entry("auths").or_insert(Value::Null);
        if let Value::Object(auths) = slot {
            return f(auths);
        }
        let mut auths = Map::new();
        let result = f(&mut auths);
        *slot = Value::Object(auths);
        result
    }

    /// Credentials from `auths`: the exact key, else the first key (in sorted order) whose host is
    /// `key` (docker's legacy-key fallback).
    fn file_get(&self, key: &str) -> Result<Option<Credential>> {
        let Some(auths) = self.auths() else {
            return Ok(None);
        };
        let found = match auths.get_key_value(key) {
            Some(kv) => Some(kv),
            None => auths.iter().find(|(k, _)| key_hostname(k) == key),
        };
        let Some((entry_key, entry)) = found else {
            return Ok(None);
        };
        let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or("");
        let (username, secret) = match field("auth") {
            "" => (field("username").to_owned(), field("password").to_owned()),
            auth => {
                let bad = || CredentialsError::BadAuth {
                    path: self.path.clone(),
                    key: entry_key.clone(),
                };
                let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                match decoded.split_once(':') {
                    Some((user, password)) if !user.is_empty() => {
                        (user.to_owned(), password.trim_matches('\0').to_owned())
                    }
                    _ => return Err(bad()),
                }
            }
        };
        let identity_token = Some(field("identitytoken"))
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if username.is_empty() && secret.is_empty() && identity_token.is_none() {
            // An empty entry, e.g. the one docker leaves beside a credential helper.
            return Ok(None);
        }
        Ok(Some(Credential {
            username,
            secret,
            identity_token,
        }))
    }

    /// `docker-credential-<helper> get`, with "not found" as `Ok(None)`.
    fn helper_get(&self, helper: &str, key: &str) -> Result<Option<Credential>> {
        let program = format!("{HELPER_PREFIX}{helper}");
        let out = match self.run_helper(helper, "get", key, key.as_bytes())? {
            HelperAnswer::Done(out) => out,
            HelperAnswer::NotFound => return Ok(None),
        };
        let parsed: HelperCredential = serde_json::from_slice(&out).map_err(|_| CredentialsError::HelperOutput {
            program,
            key: key.to_owned(),
        })?;
        if parsed.username.is_empty() && parsed.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if parsed.username == TOKEN_USERNAME {
            Credential {
                username: String::new(),
                secret: String::new(),
                identity_token: Some(parsed.secret),
            }
        } else {
            Credential {
                username: parsed.username,
                secret: parsed.secret,
                identity_token: None,
            }
        }))
    }

    /// Runs `docker-credential-<helper> <action>` with `input` on stdin, per the
    /// docker-credential-helpers protocol. Helpers print errors on stdout and exit non-zero; a
    /// "credentials not found" message is [`HelperAnswer::NotFound`], anything else an error that
    /// quotes what the helper printed.
    fn run_helper(&self, helper: &str, action: &'static str, key: &str, input: &[u8]) -> Result<HelperAnswer> {
        let program = format!("{HELPER_PREFIX}{helper}");
        tracing::debug!(program = %program, action, key, "running credential helper");
        let mut command = Command::new(&program);
        command
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = &self.helper_path {
            // On Unix, a PATH set on the Command is also the one searched for the program.
            command.env("PATH", path);
        }
        let spawn_error = |source| CredentialsError::HelperSpawn {
            program: program.clone(),
            action,
            key: key.to_owned(),
            source,
        };
        // ETXTBSY: the helper was just written (being upgraded, or a test's fake) and another
        // thread's fork still holds it open for writing until that child's exec. It clears in
        // moments, so retry briefly rather than fail a login.
        let mut attempts = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => break result.map_err(spawn_error)?,
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            // The input is far smaller than a pipe buffer, so writing it all before reading the
            // output cannot deadlock. A helper that exits without reading is judged by its status.
            if let Err(e) = stdin.write_all(input) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(e));
                }
            }
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            return Ok(HelperAnswer::Done(output.stdout));
        }
        let message = one_line(&format!(
            "{} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
        if message.to_ascii_lowercase().contains(NOT_FOUND_MESSAGE) {
            tracing::debug!(program = %program, action, key, "credential helper has no credentials");
            return Ok(HelperAnswer::NotFound);
        }
        Err(CredentialsError::HelperFailed {
            program,
            action,
            key: key.to_owned(),
            status: output.status.to_string(),
            output: if message.is_empty() {
                "no output".to_owned()
            } else {
                message
            },
        })
    }

    /// Writes the config back: temporary file in the same directory (so the rename cannot cross
    /// file systems), mode 0600, fsync, rename over the target — a reader sees the old file or the
    /// new one, never a torn one, and a crash leaves at worst a stray temporary file. The output is
    /// tab-indented like docker's, so a diff against a docker-written file stays small.
    fn save(&self) -> Result<()> {
        // Write through a symlinked config.json (dotfile managers do this) instead of replacing
        // the link with a file.
        let target = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialsError::Write { path, source }
        };
        create_private_dir(&dir).map_err(write_error(&dir))?;

        let mut bytes = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        serde::Serialize::serialize(&self.raw, &mut serializer)
            .map_err(|e| write_error(&target)(io::Error::other(e.to_string())))?;
        bytes.push(b'\n');

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = target
            .file_name()
            .map_or_else(|| CONFIG_FILE.into(), |n| n.to_string_lossy().into_owned());
        let temp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_private_file(&temp, &bytes).and_then(|()| fs::rename(&temp, &target));
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(write_error(&target)(e));
        }
        // Make the rename itself durable; a failure here loses nothing already written.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        tracing::debug!(path = %target.display(), "wrote docker config");
        Ok(())
    }

    /// Searches `path` (a `PATH`-style list) for helpers instead of the process's `PATH`.
    #[cfg(test)]
    fn with_helper_path(mut self, path: OsString) -> Self {
        self.helper_path = Some(path);
        self
    }
}

/// Creates `dir` and missing parents with mode 0700: the directory holds secrets.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` (which must not exist) with mode 0600 and writes `bytes` durably.
fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // The umask can only remove bits, but be explicit: the file holds secrets.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_config(dir: &Path, json: &str) {
        fs::write(dir.join(CONFIG_FILE), json).unwrap();
    }

    fn read_json(dir: &Path) -> Value {
        serde_json::from_slice(&fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn password(user: &str, secret: &str) -> Credential {
        Credential {
            username: user.into(),
            secret: secret.into(),
            identity_token: None,
        }
    }

    #[test]
    fn reads_a_config_written_by_docker() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#,
        );
        let config = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(config.path(), dir.path().join("config.json"));
        assert_eq!(config.get("127.0.0.1:5000").unwrap(), Some(password("alice", "s3cret")));
        assert_eq!(config.get("127.0.0.1:5001").unwrap(), None);
        assert_eq!(config.get("https://index.docker.io/v1/").unwrap(), None);
    }

    #[test]
    fn missing_or_empty_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::load(&dir.path().join("nope")).unwrap();
        assert_eq!(config.get("x").unwrap(), None);
        write_config(dir.path(), "  \n");
        assert_eq!(DockerConfig::load(dir.path()).unwrap().get("x").unwrap(), None);
    }

    #[test]
    fn round_trip_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let proxies = r#"{"default":{"httpProxy":"http://proxy:3128"}}"#;
        write_config(
            dir.path(),
            &format!(r#"{{"proxies":{proxies},"currentContext":"ctx","auths":{{"other:1":{{"auth":"Ym9iOnB3"}}}}}}"#),
        );
        let mut config = DockerConfig::load(dir.path()).unwrap();
        config.store("127.0.0.1:5000", &password("alice", "s3cret")).unwrap();

        let file = dir.path().join(CONFIG_FILE);
        assert_eq!(mode(&file), 0o600);
        let json = read_json(dir.path());
        assert_eq!(
            json["auths"]["127.0.0.1:5000"],
            serde_json::json!({"auth": "YWxpY2U6czNjcmV0"})
        );
        assert_eq!(json["proxies"], serde_json::from_str::<Value>(proxies).unwrap());
        assert_eq!(json["currentContext"], "ctx");
        assert_eq!(json["auths"]["other:1"]["auth"], "Ym9iOnB3");
        assert!(
            fs::read_to_string(&file).unwrap().starts_with("{\n\t\""),
            "tab-indented like docker"
        );

        let reloaded = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.get("127.0.0.1:5000").unwrap(),
            Some(password("alice", "s3cret"))
        );

        let mut config = reloaded;
        assert!(config.erase("127.0.0.1:5000").unwrap());
        assert_eq!(config.get("127.0.0.1:5000").unwrap(), None);
        assert!(!config.erase("127.0.0.1:5000").unwrap());
        let json = read_json(dir.path());
        assert_eq!(json["auths"], serde_json::json!({"other:1": {"auth": "Ym9iOnB3"}}));
        assert_eq!(json["proxies"], serde_json::from_str::<Value>(proxies).unwrap());
        assert_eq!(mode(&file), 0o600);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn store_creates_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("home/.docker");
        let mut config = DockerConfig::load(&conf_dir).unwrap();
        config.store("ghcr.io", &password("u", "p")).unwrap();
        assert_eq!(mode(&conf_dir), 0o700);
        assert_eq!(mode(&conf_dir.join(CONFIG_FILE)), 0o600);
        assert_eq!(
            DockerConfig::load(&conf_dir).unwrap().get("ghcr.io").unwrap(),
            Some(password("u", "p"))
        );
    }

    #[test]
    fn store_tightens_a_loose_file_and_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles");
        fs::create_dir(&real).unwrap();
        write_config(&real, r#"{"aliases":{"builder":"buildx"}}"#);
        fs::set_permissions(real.join(CONFIG_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let conf_dir = dir.path().join("docker");
        fs::create_dir(&conf_dir).unwrap();
        std::os::unix::fs::symlink(real.join(CONFIG_FILE), conf_dir.join(CONFIG_FILE)).unwrap();

        let mut config = DockerConfig::load(&conf_dir).unwrap();
        config.store("h:1", &password("u", "p")).unwrap();
        assert!(fs::symlink_metadata(conf_dir.join(CONFIG_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(mode(&real.join(CONFIG_FILE)), 0o600);
        let json = read_json(&real);
        assert_eq!(json["aliases"]["builder"], "buildx");
        assert_eq!(json["auths"]["h:1"]["auth"], BASE64.encode("u:p"));
    }

    #[test]
    fn identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        // Exactly what `docker login` wrote against berth-registry in token mode.
        write_config(
            dir.path(),
            r#"{"auths":{"127.0.0.1:5199":{"auth":"YWxpY2U6","identitytoken":"eyJ.tok"}}}"#,
        );
        let mut config = DockerConfig::load(dir.path()).unwrap();
        let expected = Credential {
            username: "alice".into(),
            secret: String::new(),
            identity_token: Some("eyJ.tok".into()),
        };
        assert_eq!(config.get("127.0.0.1:5199").unwrap(), Some(expected.clone()));

        // Storing one writes the same shape, dropping any password.
        let mut with_password = expected.clone();
        with_password.secret = "ignored".into();
        config.store("ghcr.io", &with_password).unwrap();
        let json = read_json(dir.path());
        assert_eq!(
            json["auths"]["ghcr.io"],
            serde_json::json!({"auth": "YWxpY2U6", "identitytoken": "eyJ.tok"})
        );
        assert_eq!(
            DockerConfig::load(dir.path()).unwrap().get("ghcr.io").unwrap(),
            Some(expected)
        );

        // A token-only entry.
        write_config(dir.path(), r#"{"auths":{"h:1":{"identitytoken":"t"}}}"#);
        let got = DockerConfig::load(dir.path()).unwrap().get("h:1").unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.identity_token.as_deref()), ("", Some("t")));
    }

    #[test]
    fn other_entry_shapes() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            r#"{"auths":{"plain:1":{"username":"u","password":"p"},"empty:1":{},"nul:1":{"auth":"dTpwAAA="}},"credsStore":null}"#,
        );
        let config = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(config.get("plain:1").unwrap(), Some(password("u", "p")));
        assert_eq!(config.get("empty:1").unwrap(), None);
        assert_eq!(
            config.get("nul:1").unwrap(),
            Some(password("u", "p")),
            "trailing NULs trimmed as docker does"
        );
    }

    #[test]
    fn keys_with_scheme_or_path_match_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let enc = |s: &str| BASE64.encode(s);
        write_config(
            dir.path(),
            &serde_json::json!({"auths": {
                "https://host:5000": {"auth": enc("a:1")},
                "other:5000/v2/": {"auth": enc("b:2")},
                "http://third:1/v1/": {"auth": enc("c:3")},
                "https://u@fourth.io/": {"auth": enc("d:4")},
                "exact:1": {"auth": enc("e:5")},
                "https://exact:1": {"auth": enc("wrong:0")},
            }})
            .to_string(),
        );
        let mut config = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(config.get("host:5000").unwrap(), Some(password("a", "1")));
        assert_eq!(config.get("other:5000").unwrap(), Some(password("b", "2")));
        assert_eq!(config.get("third:1").unwrap(), Some(password("c", "3")));
        assert_eq!(config.get("fourth.io").unwrap(), Some(password("d", "4")));
        assert_eq!(
            config.get("exact:1").unwrap(),
            Some(password("e", "5")),
            "an exact key wins"
        );
        assert_eq!(config.get("host").unwrap(), None);
        assert_eq!(config.get("host:500").unwrap(), None);

        // Logout removes every entry that would still log in.
        assert!(config.erase("exact:1").unwrap());
        assert_eq!(config.get("exact:1").unwrap(), None);
        assert!(config.erase("host:5000").unwrap());
        assert_eq!(config.get("host:5000").unwrap(), None);
        let json = read_json(dir.path());
        let mut keys: Vec<&String> = json["auths"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["http://third:1/v1/", "https://u@fourth.io/", "other:5000/v2/"]);
    }

    #[test]
    fn errors_name_the_problem_but_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "hunter2-very-secret";
        let no_colon = BASE64.encode(secret);
        write_config(
            dir.path(),
            &format!(r#"{{"auths":{{"h:1":{{"auth":"{no_colon}"}},"h:2":{{"auth":"!!{secret}"}}}}}}"#),
        );
        let config = DockerConfig::load(dir.path()).unwrap();
        for key in ["h:1", "h:2"] {
            let e = config.get(key).unwrap_err();
            assert!(matches!(e, CredentialsError::BadAuth { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains("config.json"), "{msg}");
            assert!(!msg.contains(secret) && !msg.contains(&no_colon), "{msg}");
        }

        // serde_json would quote the value; our message gives only the position.
        write_config(dir.path(), &format!(r#"{{"auths": {{"h:1": {{"auth": "{secret}"#));
        let msg = DockerConfig::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
        write_config(dir.path(), &format!(r#"{{"auths": {{"h:1": "{secret}"}}}}"#));
        let e = DockerConfig::load(dir.path()).unwrap_err();
        assert!(matches!(e, CredentialsError::Shape { .. }), "{e:?}");
        assert!(!e.to_string().contains(secret), "{e}");
        write_config(dir.path(), r#"{"auths": []}"#);
        assert!(matches!(
            DockerConfig::load(dir.path()),
            Err(CredentialsError::Shape { .. })
        ));
        write_config(dir.path(), r#"{"credHelpers": {"h": 1}}"#);
        assert!(matches!(
            DockerConfig::load(dir.path()),
            Err(CredentialsError::Shape { .. })
        ));
        write_config(dir.path(), "[]");
        assert!(matches!(
            DockerConfig::load(dir.path()),
            Err(CredentialsError::Shape { .. })
        ));

        let cred = Credential {
            username: "alice".into(),
            secret: secret.into(),
            identity_token: Some(secret.into()),
        };
        let shown = format!("{cred:?}");
        assert!(shown.contains("alice") && !shown.contains(secret), "{shown}");
        write_config(
            dir.path(),
            &format!(
                r#"{{"auths":{{"h:1":{{"auth":"{}"}}}}}}"#,
                BASE64.encode(format!("a:{secret}"))
            ),
        );
        let shown = format!("{:?}", DockerConfig::load(dir.path()).unwrap());
        assert!(!shown.contains(&BASE64.encode(format!("a:{secret}"))), "{shown}");
    }

    #[test]
    fn default_location() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_dir(some("/cfg"), some("/home/u")).unwrap(),
            PathBuf::from("/cfg")
        );
        assert_eq!(
            default_dir(None, some("/home/u")).unwrap(),
            PathBuf::from("/home/u/.docker")
        );
        assert_eq!(
            default_dir(some(""), some("/home/u")).unwrap(),
            PathBuf::from("/home/u/.docker")
        );
        assert!(matches!(
            default_dir(None, some("")),
            Err(CredentialsError::NoConfigDir)
        ));
        assert!(matches!(default_dir(None, None), Err(CredentialsError::NoConfigDir)));
    }

    /// A directory holding fake `docker-credential-fake` and `docker-credential-other` helpers that
    /// keep credentials as files under `state/<helper>/`, log every call to `state/log`, and fail
    /// (on stderr, exit 3) for keys containing "locked". Helpers are found through an injected
    /// `PATH` with this directory first, so no test changes the process environment.
    struct FakeHelpers {
        dir: tempfile::TempDir,
    }

    impl FakeHelpers {
        fn new() -> FakeHelpers {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            let state = dir.path().join("state");
            fs::create_dir_all(&bin).unwrap();
            let script = format!(
                r#"#!/bin/sh
name=$(basename "$0"); name=${{name#docker-credential-}}
store="{state}/$name"
mkdir -p "$store"
input=$(cat)
printf '%s %s\n' "$(basename "$0")" "$1" >> "{state}/log"
case "$1" in
  store) url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p') ;;
  *) url=$input ;;
esac
case "$url" in *locked*) echo "keychain is locked" >&2; exit 3 ;; esac
file="$store/$(printf '%s' "$url" | tr -c 'A-Za-z0-9' '_')"
case "$1" in
  store) printf '%s' "$input" > "$file" ;;
  get) if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  erase) if [ -f "$file" ]; then rm "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  *) echo "unknown action $1"; exit 1 ;;
esac
"#,
                state = state.display()
            );
            for name in ["fake", "other"] {
                let path = bin.join(format!("docker-credential-{name}"));
                fs::write(&path, &script).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            }
            FakeHelpers { dir }
        }

        fn path(&self) -> OsString {
            let mut paths = vec![self.dir.path().join("bin")];
            paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
            std::env::join_paths(paths).unwrap()
        }

        fn config(&self, json: &str) -> DockerConfig {
            let conf = self.dir.path().join("conf");
            fs::create_dir_all(&conf).unwrap();
            write_config(&conf, json);
            DockerConfig::load(&conf).unwrap().with_helper_path(self.path())
        }

        fn log(&self) -> String {
            fs::read_to_string(self.dir.path().join("state/log")).unwrap_or_default()
        }

        fn stored(&self, helper: &str) -> Vec<String> {
            let dir = self.dir.path().join("state").join(helper);
            let mut names: Vec<String> = fs::read_dir(dir)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    #[test]
    fn helpers_from_cred_helpers_and_creds_store() {
        let fake = FakeHelpers::new();
        let mut config = fake
            .config(r#"{"credsStore":"other","credHelpers":{"h1:5000":"fake","plain:1":""},"proxies":{"default":{}}}"#);
        let secret = "s3cret-in-keychain";

        config.store("h1:5000", &password("alice", secret)).unwrap();
        config.store("h2:5000", &password("bob", secret)).unwrap();
        assert_eq!(fake.stored("fake"), ["h1_5000"]);
        assert_eq!(fake.stored("other"), ["h2_5000"]);

        // The file only lists the logins, as docker's does.
        let text = fs::read_to_string(config.path()).unwrap();
        assert!(!text.contains(secret), "{text}");
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["auths"], serde_json::json!({"h1:5000": {}, "h2:5000": {}}));
        assert_eq!(json["credsStore"], "other");
        assert_eq!(json["proxies"], serde_json::json!({"default": {}}));

        let config = DockerConfig::load(config.path().parent().unwrap())
            .unwrap()
            .with_helper_path(fake.path());
        assert_eq!(config.get("h1:5000").unwrap(), Some(password("alice", secret)));
        assert_eq!(config.get("h2:5000").unwrap(), Some(password("bob", secret)));
        assert_eq!(config.get("h3:5000").unwrap(), None);

        // credHelpers[key] = "" exempts a registry from credsStore: the file is used.
        let mut config = config;
        config.store("plain:1", &password("carol", "pw")).unwrap();
        assert_eq!(fake.stored("other"), ["h2_5000"]);
        assert_eq!(
            read_json(config.path().parent().unwrap())["auths"]["plain:1"]["auth"],
            BASE64.encode("carol:pw")
        );
        assert_eq!(config.get("plain:1").unwrap(), Some(password("carol", "pw")));

        let log = fake.log();
        assert!(log.contains("docker-credential-fake store"), "{log}");
        assert!(log.contains("docker-credential-other get"), "{log}");
    }

    #[test]
    fn helper_identity_tokens_and_erase() {
        let fake = FakeHelpers::new();
        let mut config = fake.config(r#"{"credsStore":"fake","auths":{"h:1":{"auth":"b2xkOnBsYWlu"}}}"#);
        let cred = Credential {
            username: "alice".into(),
            secret: String::new(),
            identity_token: Some("refresh-me".into()),
        };
        config.store("h:1", &cred).unwrap();
        // The plaintext entry is replaced by docker's empty marker.
        assert_eq!(
            read_json(config.path().parent().unwrap())["auths"]["h:1"],
            serde_json::json!({})
        );
        let stored = fs::read_to_string(fake.dir.path().join("state/fake/h_1")).unwrap();
        let stored: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"ServerURL": "h:1", "Username": "<token>", "Secret": "refresh-me"})
        );
        // Docker's helper protocol loses the user name of a token login.
        let got = config.get("h:1").unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.secret.as_str()), ("", ""));
        assert_eq!(got.identity_token.as_deref(), Some("refresh-me"));

        assert!(config.erase("h:1").unwrap());
        assert!(fake.stored("fake").is_empty());
        assert_eq!(config.get("h:1").unwrap(), None);
        assert_eq!(
            read_json(config.path().parent().unwrap())["auths"],
            serde_json::json!({})
        );
        assert!(!config.erase("h:1").unwrap(), "second logout removes nothing");
    }

    #[test]
    fn plaintext_entry_is_used_when_the_helper_has_nothing() {
        let fake = FakeHelpers::new();
        let config = fake.config(r#"{"credsStore":"fake","auths":{"h:1":{"auth":"dTpw"}}}"#);
        assert_eq!(config.get("h:1").unwrap(), Some(password("u", "p")));
        assert!(fake.log().contains("docker-credential-fake get"));
    }

    #[test]
    fn failing_and_missing_helpers_are_errors() {
        let fake = FakeHelpers::new();
        let mut config = fake.config(r#"{"credHelpers":{"locked:1":"fake","gone:1":"no-such-helper-xyz"}}"#);
        let secret = "do-not-print-me";

        let e = config.store("locked:1", &password("u", secret)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CredentialsError::HelperFailed { .. }), "{e:?}");
        assert!(
            msg.contains("docker-credential-fake") && msg.contains("keychain is locked"),
            "{msg}"
        );
        assert!(msg.contains("store") && msg.contains("locked:1"), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
        assert!(
            read_json(config.path().parent().unwrap()).get("auths").is_none(),
            "nothing written on failure"
        );

        let msg = config.get("locked:1").unwrap_err().to_string();
        assert!(
            msg.contains("docker-credential-fake get") && msg.contains("keychain is locked"),
            "{msg}"
        );
        assert!(config.erase("locked:1").is_err());

        let e = config.get("gone:1").unwrap_err();
        assert!(matches!(e, CredentialsError::HelperSpawn { .. }), "{e:?}");
        assert!(e.to_string().contains("docker-credential-no-such-helper-xyz"), "{e}");
    }

    #[test]
    fn helper_printing_garbage_is_an_error_without_the_output() {
        let fake = FakeHelpers::new();
        let garbage = "not json but maybe a secret";
        let store = fake.dir.path().join("state/fake");
        fs::create_dir_all(&store).unwrap();
        fs::write(store.join("g_1"), garbage).unwrap();
        let config = fake.config(r#"{"credsStore":"fake"}"#);
        let e = config.get("g:1").unwrap_err();
        assert!(matches!(e, CredentialsError::HelperOutput { .. }), "{e:?}");
        assert!(!e.to_string().contains(garbage), "{e}");
    }

    #[tokio::test]
    async fn get_async_runs_off_the_runtime() {
        let fake = FakeHelpers::new();
        let mut config = fake.config(r#"{"credsStore":"fake"}"#);
        config.store("a:1", &password("u", "p")).unwrap();
        assert_eq!(config.get_async("a:1").await.unwrap(), Some(password("u", "p")));
        assert_eq!(config.get_async("b:1").await.unwrap(), None);
    }
}
