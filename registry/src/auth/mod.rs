//! Authentication and authorization for every `/v2` request, and the built-in token service.
//!
//! # Modes
//! - `none`: everyone may do everything (a registry on loopback).
//! - `basic`: `Authorization: Basic` on every request, checked against the accounts table
//!   (bcrypt). Anonymous requests get what `anonymous` rules grant; otherwise 401 with a
//!   `Basic` challenge. A signed-in principal lacking an action gets 403 `DENIED`.
//! - `token`: requests carry `Authorization: Bearer <JWT>` issued by `/token` (or a trusted
//!   issuer). A missing, invalid or too narrow token gets 401 with a `Bearer` challenge naming
//!   the realm, service and the scope the request needs, so docker, podman and skopeo fetch
//!   the right token and retry.
//!
//! # Cost
//! bcrypt is deliberately slow, so it runs on the blocking pool, and a successful check is
//! remembered for [`VERIFIED_TTL`] under SHA-256(name, stored hash, password): a pull of 50
//! layers pays one bcrypt, a changed password or deleted account takes effect at once (the
//! stored hash is part of the key and is read on every request), and no password is kept.
//!
//! # Failed logins
//! Counted per account name and client address; after `max_failed_logins` the pair is locked
//! out for `lockout_secs` (429 `TOOMANYREQUESTS` with `Retry-After`). Secrets never reach logs.
//!
//! # What replicas share
//! The signing key and the failed-login counts live in the database, so a token minted by one
//! replica verifies on every other and a lockout earned on one holds on all (a guesser gets
//! `max_failed_logins` tries in all, not per replica). The verified-password and
//! verified-token caches stay in each process: they only spare work, and a replica that misses
//! them checks again.

pub mod rules;
pub mod token;

use crate::config::{Action, AuthConfig, AuthMode};
use crate::http::error::{AppError, Code};
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine as _;
use berth_storage::meta::Account;
use berth_storage::Meta;
use rules::{Actions, Policy, Principal, RobotScope};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use token::{ResourceActions, TokenKeys};

/// How long a verified password is remembered.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// bcrypt cost for new passwords: about 50 ms here, and the cache above pays it once a minute.
pub const BCRYPT_COST: u32 = 10;
/// Bound on the in-memory caches (verified passwords and tokens) before expired entries are
/// swept.
const TABLE_LIMIT: usize = 10_000;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Any valid credentials (`/v2/`, so that `docker login` can check them).
    Login,
    /// `registry:catalog:*`.
    Catalog,
    /// An action on a repository.
    Repo(String, Action),
    /// Not required, but named in a token challenge's scope so that the client's token covers
    /// it: pull on a cross-repository mount's source (as docker and distribution do).
    Hint(String, Action),
}

/// What an authorized request may do; handlers ask it for optional extras (such as pull on a
/// cross-repository mount's source).
#[derive(Debug, Clone)]
pub enum Access {
    /// A principal evaluated against the policy (modes none and basic).
    Principal(Principal),
    /// The grants of a verified token.
    Token(Vec<ResourceActions>),
}

/// Records who a request acts as on its span (the per-request log line names them): the
/// account, or `anonymous`.
fn record_principal(name: &str) {
    let who = if name.is_empty() { "anonymous" } else { name };
    tracing::Span::current().record("principal", who);
}

/// What `needs` a principal was refused, in words: `push alice/app, delete alice/app`.
fn describe_needs(needs: &[&Need]) -> String {
    needs
        .iter()
        .filter_map(|n| match n {
            Need::Repo(r, a) => Some(format!("{} {r}", a.as_str())),
            Need::Catalog => Some("list the catalog".to_owned()),
            Need::Login | Need::Hint(..) => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn token_allows(grants: &[ResourceActions], kind: &str, name: &str, action: &str) -> bool {
    grants
        .iter()
        .any(|g| g.kind == kind && g.name == name && g.actions.iter().any(|a| a == action || a == "*"))
}

impl Access {
    /// Whether this request may also do `action` on `repo`.
    pub fn can(&self, auth: &Auth, repo: &str, action: Action) -> bool {
        match self {
            Access::Principal(p) => auth.policy.allowed(p, repo).has(action),
            Access::Token(g) => token_allows(g, "repository", repo, action.as_str()),
        }
    }
}

/// A verified token's subject, grants and expiry (Unix seconds).
type VerifiedToken = (String, Vec<ResourceActions>, u64);

/// The authenticator: mode, policy, accounts, token keys, caches.
pub struct Auth {
    mode: AuthMode,
    config: AuthConfig,
    policy: Policy,
    meta: Meta,
    keys: Option<TokenKeys>,
    tls: bool,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// When this replica last purged failed-login rows that no longer count.
    purged: Mutex<Option<Instant>>,
    /// Tokens already verified, by SHA-256 of the token, with their grants and expiry: a
    /// token is immutable, so its ECDSA check need not be repeated on every layer of a pull.
    tokens: Mutex<HashMap<[u8; 32], VerifiedToken>>,
    /// bcrypt checks at a time: each holds a core for ~50 ms, so a flood of logins (names
    /// varied to dodge the per-name lockout) queues here instead of starving every request.
    bcrypt_slots: tokio::sync::Semaphore,
}

/// The answer of the token endpoint.
#[derive(Debug, serde::Serialize)]
pub struct TokenAnswer {
    /// The JWT (docker's field name).
    pub token: String,
    /// The same JWT (OAuth2's field name).
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// When it was issued, RFC 3339.
    pub issued_at: String,
    /// A refresh token (docker's identity token), when asked for with credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scopes, space-separated (OAuth2).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// Parses `Authorization: Basic base64(user:password)`.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    // skopeo (and sometimes docker) answer a challenge with empty credentials when they have
    // none: that is an anonymous request, not a failed login for an account named "".
    if u.is_empty() && p.is_empty() {
        return None;
    }
    Some((u.to_owned(), p.to_owned()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// A hash for accounts that do not exist, so that their failed logins cost as much as real
/// ones and do not reveal which names exist.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| bcrypt::hash("berth-dummy-password", BCRYPT_COST).unwrap_or_default())
}

/// Longest password bcrypt reads: it ignores every byte after the 72nd, so a longer one
/// would let anything sharing its first 72 bytes log in. Refused when set, and at login.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashes a new password or robot secret (on the blocking pool).
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    anyhow::ensure!(
        password.len() <= MAX_PASSWORD_BYTES,
        "the password has {} bytes; bcrypt reads only the first {MAX_PASSWORD_BYTES}, so the rest \
         would be ignored at login: choose one of at most {MAX_PASSWORD_BYTES} bytes",
        password.len()
    );
    Ok(tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST)).await??)
}

impl Auth {
    /// An authenticator in `mode`; in token mode the signing key is the one in the database
    /// (imported from `data/token` where an older Berth kept it).
    pub async fn new(mode: AuthMode, config: AuthConfig, meta: Meta, data: &Path, tls: bool) -> anyhow::Result<Auth> {
        let keys = match mode {
            AuthMode::Token => Some(TokenKeys::shared(&meta, &data.join("token"), &config).await?),
            _ => None,
        };
        Ok(Auth {
            mode,
            policy: Policy::new(config.clone()),
            config,
            meta,
            keys,
            tls,
            verified: Mutex::new(HashMap::new()),
            purged: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Repositories that no principal may act on: not anonymous clients, no account (user
    /// namespaces, rules, groups), no robot. Without an admin these are lost to everyone until
    /// the configuration changes.
    pub async fn unreachable_repositories(&self) -> anyhow::Result<Vec<String>> {
        let principals: Vec<Principal> = self
            .meta
            .accounts()
            .await?
            .iter()
            .map(Self::principal_of)
            .chain([Principal::Anonymous])
            .collect();
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = self.meta.catalog(1000, last.as_deref()).await?;
            for repo in &page {
                if principals.iter().all(|p| self.policy.allowed(p, repo) == Actions::NONE) {
                    out.push(repo.clone());
                }
            }
            match page.last() {
                Some(l) if page.len() == 1000 => last = Some(l.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The token keys (token mode only).
    pub fn keys(&self) -> Option<&TokenKeys> {
        self.keys.as_ref()
    }

    fn lockout_window(&self) -> Duration {
        Duration::from_secs(self.config.lockout_secs.max(1))
    }

    /// Counts a failed login in the database. A failure to count is logged, not shown: the
    /// client gets its 401 either way.
    async fn record_failure(&self, name: &str, peer: &str) {
        let window = self.lockout_window();
        if let Err(e) = self
            .meta
            .record_login_failure(name, peer, self.config.max_failed_logins, window)
            .await
        {
            tracing::error!(error = %e, account = name, "cannot count a failed login");
        }
        // Rows that no longer count are purged here, at most once a window per replica: only
        // failures make rows, so only failures need to clean up after them.
        let due = match self.purged.lock() {
            Ok(mut last) => {
                let now = Instant::now();
                let due = last.is_none_or(|t| now.duration_since(t) >= window);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            if let Err(e) = self.meta.purge_login_failures().await {
                tracing::warn!(error = %e, "cannot purge expired failed logins");
            }
        }
    }

    /// Checks a password against an account's stored hash, with the verified cache.
    async fn password_ok(&self, account: &Account, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_BYTES {
            // Never set (see `hash_password`); bcrypt would compare only a prefix of it.
            return false;
        }
        let mut h = Sha256::new();
        for part in [
            account.name.as_bytes(),
            account.password_hash.as_bytes(),
            password.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let key: [u8; 32] = h.finalize().into();
        let now = Instant::now();
        if let Ok(map) = self.verified.lock() {
            if map.get(&key).is_some_and(|exp| *exp > now) {
                return true;
            }
        }
        let (pw, hash) = (password.to_owned(), account.password_hash.clone());
        let _slot = self.bcrypt_slots.acquire().await;
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            if let Ok(mut map) = self.verified.lock() {
                if map.len() > TABLE_LIMIT {
                    map.retain(|_, exp| *exp > now);
                }
                map.insert(key, now + VERIFIED_TTL);
            }
        }
        ok
    }

    fn principal_of(account: &Account) -> Principal {
        if account.kind == "robot" {
            let scopes: Vec<RobotScope> = account
                .scopes
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            Principal::Robot {
                name: account.name.clone(),
                scopes,
            }
        } else {
            Principal::User(account.name.clone())
        }
    }

    fn unauthorized(&self, message: &str) -> AppError {
        // Basic mode asks for Basic credentials on every endpoint; token mode only at /token,
        // the one place that takes a password.
        AppError::new(Code::Unauthorized, message).header(
            header::WWW_AUTHENTICATE,
            format!("Basic realm=\"{}\"", self.config.realm),
        )
    }

    /// Signs in with a name and password (basic auth, the token endpoint's credentials).
    pub async fn login(&self, name: &str, password: &str, peer: Option<IpAddr>) -> Result<Principal, AppError> {
        let peer_key = peer.map(|p| p.to_string()).unwrap_or_default();
        let failed = self.meta.login_failures(name, &peer_key).await?;
        if let Some(locked_for) = failed.and_then(|f| f.locked_for) {
            let retry = locked_for.as_millis().div_ceil(1000).max(1);
            return Err(AppError::new(
                Code::TooManyRequests,
                format!("too many failed logins for {name}: try again in {retry} s"),
            )
            .header(header::RETRY_AFTER, retry.to_string()));
        }
        let account = self.meta.account(name).await?;
        let ok = match &account {
            Some(a) => self.password_ok(a, password).await,
            None => {
                let pw = password.to_owned();
                let _slot = self.bcrypt_slots.acquire().await;
                let _ = tokio::task::spawn_blocking(move || bcrypt::verify(pw, dummy_hash())).await;
                false
            }
        };
        match account {
            Some(a) if ok => {
                // Only a pair with failures on record costs a write: basic auth signs in on
                // every request.
                if failed.is_some() {
                    self.meta.clear_login_failures(name, &peer_key).await?;
                }
                Ok(Self::principal_of(&a))
            }
            _ => {
                tracing::info!(account = name, peer = ?peer, "failed login");
                self.record_failure(name, &peer_key).await;
                Err(self.unauthorized("invalid username or password"))
            }
        }
    }

    fn satisfied(&self, p: &Principal, needs: &[Need]) -> bool {
        needs.iter().all(|n| match n {
            Need::Login => *p != Principal::Anonymous,
            Need::Catalog => self.policy.catalog(p),
            Need::Repo(r, a) => self.policy.allowed(p, r).has(*a),
            Need::Hint(..) => true,
        })
    }

    /// The `scope` a request needs, as a token-spec scope string.
    fn scope_of(needs: &[Need]) -> String {
        let mut per_repo: Vec<(String, Vec<&str>)> = Vec::new();
        let mut out = Vec::new();
        for n in needs {
            match n {
                Need::Login => {}
                Need::Catalog => out.push("registry:catalog:*".to_owned()),
                Need::Repo(r, a) | Need::Hint(r, a) => match per_repo.iter_mut().find(|(name, _)| name == r) {
                    Some((_, acts)) => acts.push(a.as_str()),
                    None => per_repo.push((r.clone(), vec![a.as_str()])),
                },
            }
        }
        out.extend(
            per_repo
                .into_iter()
                .map(|(r, a)| format!("repository:{r}:{}", a.join(","))),
        );
        out.join(" ")
    }

    /// The token endpoint's absolute URL, advertised in challenges.
    pub fn realm(&self, headers: &HeaderMap) -> String {
        if let Some(r) = &self.config.token_realm {
            return r.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .unwrap_or("localhost");
        format!("{}://{host}/token", if self.tls { "https" } else { "http" })
    }

    fn bearer_challenge(&self, headers: &HeaderMap, needs: &[Need], error: Option<&str>, message: &str) -> AppError {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.config.service
        );
        let scope = Self::scope_of(needs);
        if !scope.is_empty() {
            c.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        AppError::new(Code::Unauthorized, message)
            .detail(serde_json::json!(needs
                .iter()
                .filter_map(|n| match n {
                    Need::Repo(r, a) =>
                        Some(serde_json::json!({"Type": "repository", "Name": r, "Action": a.as_str()})),
                    Need::Catalog => Some(serde_json::json!({"Type": "registry", "Name": "catalog", "Action": "*"})),
                    Need::Login | Need::Hint(..) => None,
                })
                .collect::<Vec<_>>()))
            .header(header::WWW_AUTHENTICATE, c)
    }

    /// Decides whether a request with `headers` from `peer` may do everything in `needs`.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        needs: &[Need],
    ) -> Result<Access, AppError> {
        match self.mode {
            AuthMode::None => {
                record_principal("");
                Ok(Access::Principal(Principal::Open))
            }
            AuthMode::Basic => {
                let p = match basic_credentials(headers) {
                    Some((u, pw)) => self.login(&u, &pw, peer).await?,
                    None => Principal::Anonymous,
                };
                record_principal(p.name());
                if self.satisfied(&p, needs) {
                    Ok(Access::Principal(p))
                } else if p == Principal::Anonymous {
                    Err(self.unauthorized("authentication required"))
                } else {
                    Err(self.denied(&p, needs))
                }
            }
            AuthMode::Token => {
                let Some(keys) = &self.keys else {
                    return Err(AppError::new(Code::Unknown, "token keys missing"));
                };
                let Some(t) = bearer(headers) else {
                    return Err(self.bearer_challenge(headers, needs, None, "authentication required"));
                };
                let (sub, access) = match self.verify_cached(keys, t) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(error = %e, "token refused");
                        return Err(self.bearer_challenge(
                            headers,
                            needs,
                            Some("invalid_token"),
                            "invalid or expired token",
                        ));
                    }
                };
                let ok = needs.iter().all(|n| match n {
                    Need::Login | Need::Hint(..) => true,
                    Need::Catalog => token_allows(&access, "registry", "catalog", "*"),
                    Need::Repo(r, a) => token_allows(&access, "repository", r, a.as_str()),
                });
                record_principal(&sub);
                if ok {
                    Ok(Access::Token(access))
                } else if let Some(denied) = self.denied_for_good(&sub, needs).await {
                    // A signed-in principal that no token could help: say so, rather than
                    // send the client back to log in again.
                    Err(denied)
                } else {
                    Err(self.bearer_challenge(
                        headers,
                        needs,
                        Some("insufficient_scope"),
                        "the token does not grant the access this request needs",
                    ))
                }
            }
        }
    }

    /// 403 `DENIED` for what `p` may not do of `needs`, naming the principal, the actions and
    /// the repositories ("robot$puller may not push alice/app").
    fn denied(&self, p: &Principal, needs: &[Need]) -> AppError {
        let unmet: Vec<&Need> = needs
            .iter()
            .filter(|n| !self.satisfied(p, std::slice::from_ref(n)))
            .collect();
        AppError::new(Code::Denied, format!("{} may not {}", p.name(), describe_needs(&unmet)))
    }

    /// In token mode, a token of account `sub` that lacks a needed grant: `DENIED` when the
    /// policy would not grant it to that account whatever token it asked for; `None` when a
    /// new token could (the client asked for too narrow a scope), for anonymous tokens, and
    /// for subjects that are not accounts here (a trusted issuer's).
    async fn denied_for_good(&self, sub: &str, needs: &[Need]) -> Option<AppError> {
        if sub.is_empty() {
            return None;
        }
        let account = self.meta.account(sub).await.ok().flatten()?;
        let p = Self::principal_of(&account);
        (!self.satisfied(&p, needs)).then(|| self.denied(&p, needs))
    }

    /// Verifies a bearer token, remembering good ones until they expire: its subject and
    /// grants.
    fn verify_cached(&self, keys: &TokenKeys, t: &str) -> anyhow::Result<(String, Vec<ResourceActions>)> {
        let key: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        let now = token::now();
        if let Ok(map) = self.tokens.lock() {
            if let Some((sub, access, exp)) = map.get(&key) {
                if *exp > now {
                    return Ok((sub.clone(), access.clone()));
                }
            }
        }
        let claims = keys.verify(t)?;
        if let Ok(mut map) = self.tokens.lock() {
            if map.len() >= TABLE_LIMIT {
                map.retain(|_, (_, _, exp)| *exp > now);
            }
            // Still full of live tokens (a flood of anonymous ones, say): verify without
            // remembering rather than grow without bound.
            if map.len() < TABLE_LIMIT {
                map.insert(key, (claims.sub.clone(), claims.access.clone(), claims.exp));
            }
        }
        Ok((claims.sub, claims.access))
    }

    /// Grants for `scopes` to `p`: requested ∩ allowed; a partial grant is not an error.
    pub fn grant(&self, p: &Principal, scopes: &[String]) -> Vec<ResourceActions> {
        let mut out: Vec<ResourceActions> = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            let Some((kind, name, actions)) = token::parse_scope(s) else {
                continue;
            };
            let granted: Vec<String> = match kind.as_str() {
                "repository" if berth_oci::validate_repository(&name).is_ok() => {
                    let allowed = self.policy.allowed(p, &name);
                    let requested = if actions.iter().any(|a| a == "*") {
                        Actions::ALL
                    } else {
                        Actions::of(&actions.iter().filter_map(|a| Action::parse(a)).collect::<Vec<_>>())
                    };
                    requested
                        .intersect(allowed)
                        .list()
                        .iter()
                        .map(|a| a.as_str().to_owned())
                        .collect()
                }
                "registry" if name == "catalog" && self.policy.catalog(p) => vec!["*".to_owned()],
                _ => Vec::new(),
            };
            if granted.is_empty() {
                continue;
            }
            match out.iter_mut().find(|g| g.kind == kind && g.name == name) {
                Some(g) => {
                    for a in granted {
                        if !g.actions.contains(&a) {
                            g.actions.push(a);
                        }
                    }
                }
                None => out.push(ResourceActions {
                    kind,
                    name,
                    actions: granted,
                }),
            }
        }
        out
    }

    fn token_keys(&self) -> Result<&TokenKeys, AppError> {
        self.keys.as_ref().ok_or_else(|| {
            AppError::new(Code::Unsupported, "this registry does not run in token auth mode")
                .status(StatusCode::NOT_FOUND)
        })
    }

    /// Fingerprint of an account's credentials (see the refresh claims).
    fn fingerprint(a: &Account) -> String {
        let mut h = Sha256::new();
        h.update(a.password_hash.as_bytes());
        h.update([0]);
        h.update(a.created_at.to_le_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// Issues a token for `p` covering `scopes`.
    pub async fn answer(&self, p: &Principal, scopes: &[String], refresh: bool) -> Result<TokenAnswer, AppError> {
        let keys = self.token_keys()?;
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %e, "cannot sign a token");
            AppError::new(Code::Unknown, "cannot sign a token")
        };
        let grants = self.grant(p, scopes);
        let scope = grants
            .iter()
            .map(|g| format!("{}:{}:{}", g.kind, g.name, g.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        let ttl = self.config.token_ttl_secs;
        let jwt = keys.issue(p.name(), grants, ttl).map_err(internal)?;
        let refresh_token = match p {
            Principal::User(n) | Principal::Robot { name: n, .. } if refresh => match self.meta.account(n).await? {
                Some(a) => Some(
                    keys.issue_refresh(n, &Self::fingerprint(&a), self.config.refresh_ttl_secs)
                        .map_err(internal)?,
                ),
                None => None,
            },
            _ => None,
        };
        Ok(TokenAnswer {
            token: jwt.clone(),
            access_token: jwt,
            expires_in: ttl,
            issued_at: token::rfc3339(token::now()),
            refresh_token,
            scope,
        })
    }

    /// The principal behind a refresh token, if its account still exists.
    pub async fn refresh_principal(&self, refresh_token: &str) -> Result<Principal, AppError> {
        let keys = self.token_keys()?;
        let (sub, fingerprint) = keys
            .verify_refresh(refresh_token)
            .map_err(|_| AppError::new(Code::Unauthorized, "invalid or expired refresh token"))?;
        match self.meta.account(&sub).await? {
            Some(a) if Self::fingerprint(&a) == fingerprint => Ok(Self::principal_of(&a)),
            Some(_) => Err(AppError::new(
                Code::Unauthorized,
                "the password changed since this refresh token was issued: log in again",
            )),
            None => Err(AppError::new(Code::Unauthorized, "the account no longer exists")),
        }
    }
}
