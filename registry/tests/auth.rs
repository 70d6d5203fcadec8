//! Who may do what, end to end: the real `berth-registry` in token and in basic mode, with
//! accounts and a robot made by its own `user add` and `robot add`, asked by a client that does
//! what docker does (request → `WWW-Authenticate: Bearer` challenge → token endpoint with the
//! challenge's scope → retry with the token). Every cell of the access matrix is checked and a
//! mismatch prints the whole table, expected against actual, with the details of each
//! mismatched answer.
//!
//! Also: the lockout after failed logins (per account and client address), secrets never
//! reaching the log, and the conformance runner passing with credentials in both modes.
//!
//! Plain HTTP on loopback: the workspace's reqwest has no TLS. Real clients over HTTPS are in
//! `auth_clients.rs`.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, Method, Url};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const ADMIN_PW: &str = "admin-pw-Kq83vTz1";
const ALICE_PW: &str = "alice-pw-Lm29xWc7";
const WRONG_PW: &str = "wrong-pw-Zr51bNy4";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Token,
    Basic,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Token => "token",
            Mode::Basic => "basic",
        }
    }
}

/// The credentials a client presents.
#[derive(Clone, Debug)]
enum Who {
    /// None at all.
    Anonymous,
    /// A name and password: sent as Basic to the registry (basic mode) or to the token
    /// endpoint (token mode).
    Password(String, String),
    /// A bearer token the client already holds, sent as is.
    Token(String),
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One request, rebuildable for the retry after the token dance.
#[derive(Clone, Debug)]
struct Req {
    method: Method,
    /// Path and query, from `/v2/`.
    path: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// Scopes the client asks for besides the challenge's own: docker asks for pull on the
    /// source of a cross-repository mount (and for `pull,push` when it pushes).
    extra_scopes: Vec<String>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>) -> Req {
        Req {
            method,
            path: path.into(),
            body: Vec::new(),
            content_type: None,
            extra_scopes: Vec::new(),
        }
    }

    fn get(path: impl Into<String>) -> Req {
        Req::new(Method::GET, path)
    }

    fn body(mut self, content_type: &'static str, body: Vec<u8>) -> Req {
        self.content_type = Some(content_type);
        self.body = body;
        self
    }

    fn scopes(mut self, scopes: &[&str]) -> Req {
        self.extra_scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

/// The final answer to a request, after any token dance.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `registry`, or `token endpoint` when the dance stopped there.
    from: &'static str,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: impl reqwest::header::AsHeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn describe(&self) -> String {
        format!(
            "{} from the {}; WWW-Authenticate: {:?}; body: {}",
            self.status,
            self.from,
            self.header(WWW_AUTHENTICATE),
            self.body.chars().take(400).collect::<String>()
        )
    }
}

/// `Scheme k="v",k="v"` → scheme and parameters (values may hold commas and spaces).
fn parse_challenge(h: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (scheme, mut rest) = h.trim().split_once(' ')?;
    let mut params = BTreeMap::new();
    while !rest.trim().is_empty() {
        let (k, r) = rest.split_once('=')?;
        let r = r.strip_prefix('"')?;
        let end = r.find('"')?;
        params.insert(k.trim().to_ascii_lowercase(), r[..end].to_owned());
        rest = r[end + 1..].trim_start_matches([',', ' ']);
    }
    Some((scheme.to_owned(), params))
}

/// A registry client that authenticates like docker in token mode and sends Basic in basic
/// mode. Remembers every token it was given, to check none reaches the log.
struct Api {
    http: Client,
    base: String,
    mode: Mode,
    tokens: Mutex<Vec<String>>,
}

impl Api {
    fn new(base: String, mode: Mode) -> Api {
        Api {
            http: Client::new(),
            base,
            mode,
            tokens: Mutex::new(Vec::new()),
        }
    }

    async fn raw(&self, req: &Req, authorization: Option<&str>) -> Answer {
        let url = format!("{}{}", self.base, req.path);
        let mut b = self.http.request(req.method.clone(), &url);
        if let Some(a) = authorization {
            b = b.header(AUTHORIZATION, a);
        }
        if let Some(ct) = req.content_type {
            b = b.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let r = b
            .body(req.body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {url}: {e}", req.method));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        Answer {
            status,
            from: "registry",
            headers,
            body,
        }
    }

    /// `GET realm?service=…&scope=…` with the principal's password, if it has one. The token,
    /// or the token endpoint's refusal.
    async fn token(&self, realm: &str, service: &str, scopes: &[String], who: &Who) -> Result<String, Answer> {
        let mut url = Url::parse(realm).unwrap_or_else(|e| panic!("challenge realm {realm:?} is not a URL: {e}"));
        url.query_pairs_mut().append_pair("service", service);
        for s in scopes {
            url.query_pairs_mut().append_pair("scope", s);
        }
        let mut b = self.http.get(url.clone());
        if let Who::Password(u, p) = who {
            b = b.header(AUTHORIZATION, basic_header(u, p));
        }
        let r = b.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        if status != 200 {
            return Err(Answer {
                status,
                from: "token endpoint",
                headers,
                body,
            });
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: answer is not JSON ({e}): {body}"));
        let token = v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {url}: no token in {body}"))
            .to_owned();
        if let Ok(mut t) = self.tokens.lock() {
            t.push(token.clone());
        }
        Ok(token)
    }

    /// A token from this registry's endpoint, asked for directly (not after a challenge).
    async fn token_for(&self, who: &Who, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.token(&format!("{}/token", self.base), "berth", &scopes, who)
            .await
            .unwrap_or_else(|a| panic!("token for {who:?} {scopes:?}: {}", a.describe()))
    }

    /// Sends `req` as `who`.
    async fn send(&self, who: &Who, req: &Req) -> Answer {
        match (self.mode, who) {
            (_, Who::Token(t)) => self.raw(req, Some(&format!("Bearer {t}"))).await,
            (Mode::Basic, Who::Anonymous) => self.raw(req, None).await,
            (Mode::Basic, Who::Password(u, p)) => self.raw(req, Some(&basic_header(u, p))).await,
            (Mode::Token, _) => {
                let first = self.raw(req, None).await;
                if first.status != 401 {
                    return first;
                }
                let Some((scheme, params)) = parse_challenge(first.header(WWW_AUTHENTICATE)) else {
                    return first;
                };
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return first;
                }
                let mut scopes: Vec<String> = params
                    .get("scope")
                    .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default();
                scopes.extend(req.extra_scopes.iter().cloned());
                let realm = params.get("realm").cloned().unwrap_or_default();
                let service = params.get("service").cloned().unwrap_or_default();
                match self.token(&realm, &service, &scopes, who).await {
                    Ok(t) => self.raw(req, Some(&format!("Bearer {t}"))).await,
                    Err(refused) => refused,
                }
            }
        }
    }

    /// Sends `req` as `who` and insists on `status`.
    async fn expect(&self, who: &Who, req: &Req, status: u16) -> Answer {
        let a = self.send(who, req).await;
        assert_eq!(
            a.status,
            status,
            "{} {} as {who:?}: {}",
            req.method,
            req.path,
            a.describe()
        );
        a
    }
}

/// A registry with the accounts of the matrix: `admin`, `alice` and `robot$ci`.
struct Registry {
    // Fields drop in order: the server (printing its log on a panic) before its directory.
    reg: Server,
    api: Api,
    mode: Mode,
    robot: (String, String),
    tmp: tempfile::TempDir,
}

impl Registry {
    fn data(&self) -> std::path::PathBuf {
        self.tmp.path().join("data")
    }

    /// Every secret a client used or was given; none of them may appear in the log.
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = vec![ADMIN_PW.into(), ALICE_PW.into(), WRONG_PW.into(), self.robot.1.clone()];
        for (u, p) in [
            ("admin", ADMIN_PW),
            ("alice", ALICE_PW),
            ("alice", WRONG_PW),
            (self.robot.0.as_str(), self.robot.1.as_str()),
        ] {
            s.push(basic_header(u, p).trim_start_matches("Basic ").to_owned());
        }
        if let Ok(t) = self.api.tokens.lock() {
            s.extend(t.iter().cloned());
        }
        s
    }

    fn assert_no_secret_logged(&self, extra: &[String]) {
        let log = self.reg.log();
        assert!(
            log.contains("berth-registry listening"),
            "the log was not captured:\n{log}"
        );
        let mut secrets = self.secrets();
        secrets.extend(extra.iter().cloned());
        let leaked: Vec<String> = secrets.into_iter().filter(|s| log.contains(s.as_str())).collect();
        assert!(
            leaked.is_empty(),
            "secrets in the registry log: {leaked:?}\n--- log ---\n{log}"
        );
    }
}

/// Starts a registry in `mode` with the matrix's accounts and rules.
fn start_registry(mode: Mode, max_failed_logins: u32) -> Registry {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    user_add(&data, "admin", ADMIN_PW);
    user_add(&data, "alice", ALICE_PW);
    let robot = robot_add(&data, "ci", &["team/*"], "pull");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[auth]
admins = ["admin"]
max_failed_logins = {max_failed_logins}

[[auth.rules]]
repos = ["team/*"]
users = ["alice"]
actions = ["pull", "push", "delete"]

[[auth.rules]]
repos = ["public/*"]
anonymous = true
actions = ["pull"]
"#
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let reg = start_with(&data, &["--auth", mode.flag(), "--config", &config]);
    let api = Api::new(reg.url(), mode);
    Registry {
        tmp,
        reg,
        api,
        mode,
        robot,
    }
}

/// What the seed put in the registry.
struct Seed {
    config: Vec<u8>,
    layer: Vec<u8>,
    /// team/app:v1 (also public/img:v1).
    manifest: String,
    /// The artifact whose subject is `manifest`.
    referrer: String,
}

fn image_manifest(config: &[u8], layer: &[u8], annotation: Option<&str>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": layer.len()}],
    });
    if let Some(a) = annotation {
        m["annotations"] = json!({ "org.example.berth-test.cell": a });
    }
    serde_json::to_vec(&m).expect("json")
}

async fn put_blob(api: &Api, who: &Who, repo: &str, blob: &[u8]) {
    let req = Req::new(
        Method::POST,
        format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(blob)),
    )
    .body("application/octet-stream", blob.to_vec())
    .scopes(&[&format!("repository:{repo}:pull,push")]);
    api.expect(who, &req, 201).await;
}

async fn put_manifest(api: &Api, who: &Who, repo: &str, reference: &str, body: Vec<u8>) {
    let req = Req::new(Method::PUT, format!("/v2/{repo}/manifests/{reference}")).body(OCI_MANIFEST, body);
    api.expect(who, &req, 201).await;
}

fn admin() -> Who {
    Who::Password("admin".into(), ADMIN_PW.into())
}

/// Pushes, as admin: an image in team/app (tag v1), an artifact referring to it, and the same
/// image in public/img.
async fn seed(api: &Api) -> Seed {
    let admin = admin();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = b"not really a tar: the registry stores bytes, it does not unpack them".to_vec();
    let manifest = image_manifest(&config, &layer, None);
    let manifest_digest = sha256(&manifest);
    for repo in ["team/app", "public/img"] {
        put_blob(api, &admin, repo, &config).await;
        put_blob(api, &admin, repo, &layer).await;
        put_manifest(api, &admin, repo, "v1", manifest.clone()).await;
    }
    put_blob(api, &admin, "team/app", b"{}").await;
    let empty = json!({"mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": 2});
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.berth-test.sbom",
        "config": empty,
        "layers": [empty],
        "subject": {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len()},
    }))
    .expect("json");
    let referrer = sha256(&artifact);
    put_manifest(api, &admin, "team/app", &referrer, artifact).await;
    Seed {
        config,
        layer,
        manifest: manifest_digest,
        referrer,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Pull,
    Push,
    Delete,
    Mount,
    Catalog,
    Referrers,
    PublicPull,
}

const OPS: [Op; 7] = [
    Op::Pull,
    Op::Push,
    Op::Delete,
    Op::Mount,
    Op::Catalog,
    Op::Referrers,
    Op::PublicPull,
];

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Pull => "pull",
            Op::Push => "push",
            Op::Delete => "delete",
            Op::Mount => "mount",
            Op::Catalog => "catalog",
            Op::Referrers => "referrers",
            Op::PublicPull => "public pull",
        }
    }
}

/// One row: a principal and its expected status per operation, in [`OPS`] order.
struct Row {
    label: String,
    who: Who,
    expected: [u16; 7],
}

/// One observed cell.
struct Cell {
    req: Req,
    answer: Answer,
    /// Side effects that contradict the status (a mount that leaked, a delete that did not
    /// delete), or content that is wrong.
    problems: Vec<String>,
}

/// Runs `op` as `who` on fresh inputs (a throwaway manifest per delete, a fresh source blob
/// per mount), then checks the side effects as admin.
async fn run_cell(api: &Api, seed: &Seed, label: &str, who: &Who, op: Op) -> Cell {
    let admin = admin();
    let mut problems = Vec::new();
    let (req, answer) = match op {
        Op::Pull | Op::PublicPull => {
            let repo = if op == Op::Pull { "team/app" } else { "public/img" };
            let req = Req::get(format!("/v2/{repo}/manifests/v1"));
            let a = api.send(who, &req).await;
            if a.status == 200 && a.header("docker-content-digest") != seed.manifest {
                problems.push(format!(
                    "pulled digest {:?}, pushed {}",
                    a.header("docker-content-digest"),
                    seed.manifest
                ));
            }
            (req, a)
        }
        Op::Push => {
            let req = Req::new(Method::POST, "/v2/team/app/blobs/uploads/").scopes(&["repository:team/app:pull,push"]);
            let a = api.send(who, &req).await;
            if a.status == 202 && !a.header("location").contains("/blobs/uploads/") {
                problems.push(format!("202 without an upload Location: {:?}", a.header("location")));
            }
            (req, a)
        }
        Op::Delete => {
            let m = image_manifest(&seed.config, &seed.layer, Some(label));
            let d = sha256(&m);
            put_manifest(api, &admin, "team/app", &d, m).await;
            let req = Req::new(Method::DELETE, format!("/v2/team/app/manifests/{d}"));
            let a = api.send(who, &req).await;
            let after = api.send(&admin, &Req::get(format!("/v2/team/app/manifests/{d}"))).await;
            match (a.status, after.status) {
                (202, 404) => {}
                (202, s) => problems.push(format!("deleted (202) but the manifest still answers {s}")),
                (_, 200) => {}
                (_, s) => problems.push(format!("refused but the manifest now answers {s}")),
            }
            (req, a)
        }
        Op::Mount => {
            let blob = format!("mount source for {label}").into_bytes();
            let d = sha256(&blob);
            put_blob(api, &admin, "other/src", &blob).await;
            let req = Req::new(
                Method::POST,
                format!("/v2/team/app/blobs/uploads/?mount={d}&from=other/src"),
            )
            .scopes(&["repository:team/app:push,pull", "repository:other/src:pull"]);
            let a = api.send(who, &req).await;
            let head = api
                .send(&admin, &Req::new(Method::HEAD, format!("/v2/team/app/blobs/{d}")))
                .await;
            match (a.status, head.status) {
                (201, 200) => {}
                (201, s) => problems.push(format!("mounted (201) but the blob answers {s} in team/app")),
                (_, 200) => problems.push("not mounted, yet the blob is now in team/app".into()),
                _ => {}
            }
            (req, a)
        }
        Op::Catalog => {
            let req = Req::get("/v2/_catalog");
            let a = api.send(who, &req).await;
            if a.status == 200 && !a.body.contains("\"team/app\"") {
                problems.push(format!("catalog without team/app: {}", a.body));
            }
            (req, a)
        }
        Op::Referrers => {
            let req = Req::get(format!("/v2/team/app/referrers/{}", seed.manifest));
            let a = api.send(who, &req).await;
            if a.status == 200 && !a.body.contains(&seed.referrer) {
                problems.push(format!("referrers without the artifact {}: {}", seed.referrer, a.body));
            }
            (req, a)
        }
    };
    Cell { req, answer, problems }
}

/// The table, expected against actual, with `!` on every cell that differs.
fn render(mode: Mode, rows: &[Row], cells: &[Vec<Cell>]) -> String {
    let mut out = format!(
        "access matrix, {} mode (expected/actual; ! marks a mismatch)\n",
        mode.flag()
    );
    let _ = write!(out, "{:<22}", "principal");
    for op in OPS {
        let _ = write!(out, "{:<14}", op.label());
    }
    out.push('\n');
    for (row, cells) in rows.iter().zip(cells) {
        let _ = write!(out, "{:<22}", row.label);
        for (want, cell) in row.expected.iter().zip(cells) {
            let got = cell.answer.status;
            let mark = if got != *want || !cell.problems.is_empty() {
                "!"
            } else {
                ""
            };
            let _ = write!(out, "{:<14}", format!("{want}/{got}{mark}"));
        }
        out.push('\n');
    }
    for (row, cells) in rows.iter().zip(cells) {
        for ((want, cell), op) in row.expected.iter().zip(cells).zip(OPS) {
            if cell.answer.status != *want || !cell.problems.is_empty() {
                let _ = writeln!(
                    out,
                    "\n{} × {}: expected {want}, got {}\n  request: {} {}\n  answer: {}",
                    row.label,
                    op.label(),
                    cell.answer.status,
                    cell.req.method,
                    cell.req.path,
                    cell.answer.describe()
                );
                for p in &cell.problems {
                    let _ = writeln!(out, "  problem: {p}");
                }
            }
        }
    }
    out
}

async fn run_matrix(r: &Registry, seed: &Seed, rows: &[Row]) {
    let mut cells = Vec::new();
    for row in rows {
        let mut line = Vec::new();
        for op in OPS {
            line.push(run_cell(&r.api, seed, &row.label, &row.who, op).await);
        }
        cells.push(line);
    }
    let table = render(r.mode, rows, &cells);
    let bad = rows
        .iter()
        .zip(&cells)
        .flat_map(|(row, cells)| row.expected.iter().zip(cells))
        .filter(|(want, cell)| cell.answer.status != **want || !cell.problems.is_empty())
        .count();
    if bad > 0 {
        panic!("{bad} cells differ\n{table}");
    }
    eprintln!("{table}");
}

/// Signs an access token with `pem` (an ES256 PKCS#8 key), as the registry's token service
/// would, with `exp` relative to now.
fn sign_token(pem: &[u8], sub: &str, exp_from_now: i64, actions: &[&str]) -> String {
    let now = unix_now() as i64;
    let claims = json!({
        "iss": "berth",
        "aud": "berth",
        "sub": sub,
        "exp": now + exp_from_now,
        "nbf": now.min(now + exp_from_now) - 60,
        "iat": now.min(now + exp_from_now) - 60,
        "jti": format!("test-{sub}-{exp_from_now}-{}", std::process::id()),
        "access": [{"type": "repository", "name": "team/app", "actions": actions}],
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem).expect("an EC PKCS#8 PEM key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("sign")
}

/// The `access` claim of a JWT (read, not verified).
fn access_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_else(|e| panic!("JWT payload of {jwt:?} is not base64url: {e}"));
    let claims: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("JWT payload of {jwt:?} is not JSON: {e}"));
    claims["access"].clone()
}

fn password(user: &str, pw: &str) -> Who {
    Who::Password(user.into(), pw.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_mode_access_matrix() {
    // Failed logins stay far below the lockout here: the wrong-password row alone fails a
    // dozen times. The lockout has its own test.
    let r = start_registry(Mode::Token, 1000);
    let seed = seed(&r.api).await;
    let (robot, secret) = r.robot.clone();

    // Tokens a client might hold: signed with the registry's own key (a valid one, as a
    // control that the signing below is right, and an expired one), signed with a stranger's
    // key, and a genuine one for another repository.
    let db = format!("sqlite://{}", r.data().join("berth.db").display());
    let meta = berth_storage::Meta::connect(&db)
        .await
        .expect("the registry's database");
    let key = meta
        .signing_key("token")
        .await
        .expect("signing_keys")
        .expect("the registry stored its signing key")
        .into_bytes();
    let all = ["pull", "push", "delete"];
    let valid = sign_token(&key, "alice", 300, &all);
    let expired = sign_token(&key, "alice", -3600, &all);
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let foreign = sign_token(stranger.serialize_pem().as_bytes(), "alice", 300, &all);
    let alice = password("alice", ALICE_PW);
    let other_repo = r
        .api
        .token_for(&alice, &["repository:team/other:pull,push,delete"])
        .await;

    assert_eq!(
        access_of(&other_repo),
        json!([{"type": "repository", "name": "team/other", "actions": ["pull", "push", "delete"]}]),
        "alice's token for team/other"
    );
    // Partial grants are no error: the robot asks for everything and gets pull only.
    let partial = r
        .api
        .token_for(
            &password(&robot, &secret),
            &["repository:team/app:pull,push,delete", "repository:other/src:pull"],
        )
        .await;
    assert_eq!(
        access_of(&partial),
        json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]),
        "the robot's token"
    );

    let rows = vec![
        Row {
            label: "anonymous".into(),
            who: Who::Anonymous,
            expected: [401, 401, 401, 401, 401, 401, 200],
        },
        // What anonymous clients may do, signed-in ones may too (last column): docker, once
        // logged in, always sends credentials, and public images must stay pullable.
        Row {
            label: "alice".into(),
            who: alice.clone(),
            expected: [200, 202, 202, 202, 403, 200, 200],
        },
        Row {
            label: robot.clone(),
            who: password(&robot, &secret),
            expected: [200, 403, 403, 403, 403, 200, 200],
        },
        Row {
            label: "admin".into(),
            who: admin(),
            expected: [200, 202, 202, 201, 200, 200, 200],
        },
        Row {
            label: "valid signed token".into(),
            who: Who::Token(valid.clone()),
            expected: [200, 202, 202, 202, 403, 200, 401],
        },
        Row {
            label: "expired token".into(),
            who: Who::Token(expired.clone()),
            expected: [401; 7],
        },
        Row {
            label: "stranger's token".into(),
            who: Who::Token(foreign.clone()),
            expected: [401; 7],
        },
        Row {
            label: "team/other token".into(),
            who: Who::Token(other_repo.clone()),
            // Signed in, refused by a rule: DENIED, not a login prompt.
            expected: [401, 401, 401, 401, 403, 401, 401],
        },
        Row {
            label: "wrong password".into(),
            who: password("alice", WRONG_PW),
            expected: [401; 7],
        },
    ];
    run_matrix(&r, &seed, &rows).await;

    // The challenges say what to fetch, and why a token was refused.
    let url = r.reg.url();
    let pull = Req::get("/v2/team/app/manifests/v1");
    let base = format!("Bearer realm=\"{url}/token\",service=\"berth\",scope=\"repository:team/app:pull\"");
    let cases = [
        (Who::Anonymous, base.clone()),
        (Who::Token(expired), format!("{base},error=\"invalid_token\"")),
        (Who::Token(foreign), format!("{base},error=\"invalid_token\"")),
        (Who::Token(other_repo), format!("{base},error=\"insufficient_scope\"")),
    ];
    for (who, want) in cases {
        let a = match &who {
            Who::Token(t) => r.api.raw(&pull, Some(&format!("Bearer {t}"))).await,
            _ => r.api.raw(&pull, None).await,
        };
        assert_eq!(
            (a.status, a.header(WWW_AUTHENTICATE)),
            (401, want.as_str()),
            "challenge for {who:?}: {}",
            a.describe()
        );
        assert!(a.body.contains("\"UNAUTHORIZED\""), "{}", a.describe());
    }
    let catalog = r.api.raw(&Req::get("/v2/_catalog"), None).await;
    assert_eq!(
        catalog.header(WWW_AUTHENTICATE),
        format!("Bearer realm=\"{url}/token\",service=\"berth\",scope=\"registry:catalog:*\""),
        "{}",
        catalog.describe()
    );

    r.assert_no_secret_logged(&[valid]);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_mode_access_matrix() {
    let r = start_registry(Mode::Basic, 1000);
    let seed = seed(&r.api).await;
    let (robot, secret) = r.robot.clone();
    let rows = vec![
        Row {
            label: "anonymous".into(),
            who: Who::Anonymous,
            expected: [401, 401, 401, 401, 401, 401, 200],
        },
        // Signed in and lacking access: 403, not 401 (new credentials would not help). Public
        // pull: see token_mode_access_matrix.
        Row {
            label: "alice".into(),
            who: password("alice", ALICE_PW),
            expected: [200, 202, 202, 202, 403, 200, 200],
        },
        Row {
            label: robot.clone(),
            who: password(&robot, &secret),
            expected: [200, 403, 403, 403, 403, 200, 200],
        },
        Row {
            label: "admin".into(),
            who: admin(),
            expected: [200, 202, 202, 201, 200, 200, 200],
        },
        Row {
            label: "wrong password".into(),
            who: password("alice", WRONG_PW),
            expected: [401; 7],
        },
    ];
    run_matrix(&r, &seed, &rows).await;

    let pull = Req::get("/v2/team/app/manifests/v1");
    for who in [Who::Anonymous, password("alice", WRONG_PW)] {
        let a = r.api.send(&who, &pull).await;
        assert_eq!(
            (a.status, a.header(WWW_AUTHENTICATE)),
            (401, "Basic realm=\"berth\""),
            "{who:?}: {}",
            a.describe()
        );
    }
    let a = r
        .api
        .send(&password("alice", ALICE_PW), &Req::get("/v2/_catalog"))
        .await;
    assert!(
        a.status == 403 && a.body.contains("\"DENIED\"") && a.header(WWW_AUTHENTICATE).is_empty(),
        "alice's catalog: {}",
        a.describe()
    );

    r.assert_no_secret_logged(&[]);
}

/// skopeo (and at times docker) answer a Basic challenge without credentials by sending empty
/// ones, `Authorization: Basic Og==` (":"): that is an anonymous client, which may pull what
/// `anonymous` rules allow, and not a failed login of an account named "" (which would also
/// lock every such client out after `max_failed_logins`).
#[tokio::test(flavor = "multi_thread")]
async fn basic_mode_empty_credentials_are_anonymous() {
    let r = start_registry(Mode::Basic, 3);
    seed(&r.api).await;
    let empty = password("", "");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let public = r.api.send(&empty, &Req::get("/v2/public/img/manifests/v1")).await;
        let private = r.api.send(&empty, &Req::get("/v2/team/app/manifests/v1")).await;
        seen.push(format!(
            "public {}, private {} ({})",
            public.status,
            private.status,
            private.header(WWW_AUTHENTICATE)
        ));
    }
    let want = "public 200, private 401 (Basic realm=\"berth\")";
    assert!(
        seen.iter().all(|s| s == want),
        "with `Basic Og==`, expected {want} each time, got:\n{}",
        seen.join("\n")
    );
}

/// One login attempt from `from`: `/v2/` with Basic in basic mode, the token endpoint in token
/// mode.
async fn login(r: &Registry, from: IpAddr, user: &str, pw: &str) -> Answer {
    let http = Client::builder().local_address(from).build().expect("client");
    let path = match r.mode {
        Mode::Basic => "/v2/",
        Mode::Token => "/token?service=berth&scope=repository:team/app:pull",
    };
    let url = format!("{}{path}", r.reg.url());
    let resp = http
        .get(&url)
        .header(AUTHORIZATION, basic_header(user, pw))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} from {from}: {e}"));
    Answer {
        status: resp.status().as_u16(),
        from: if r.mode == Mode::Token {
            "token endpoint"
        } else {
            "registry"
        },
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap_or_default(),
    }
}

const HERE: [u8; 4] = [127, 0, 0, 1];

/// Three wrong passwords for alice from 127.0.0.1, then her right one: 429 with Retry-After.
async fn lock_out_alice(r: &Registry) {
    for i in 1..=3 {
        let a = login(r, HERE.into(), "alice", WRONG_PW).await;
        assert_eq!(a.status, 401, "wrong password #{i}: {}", a.describe());
    }
    let a = login(r, HERE.into(), "alice", ALICE_PW).await;
    let retry: u64 = a.header(RETRY_AFTER).parse().unwrap_or(0);
    assert!(
        a.status == 429 && a.body.contains("\"TOOMANYREQUESTS\"") && (1..=60).contains(&retry),
        "after 3 failures even the right password must get 429 with Retry-After in 1..=60: {}",
        a.describe()
    );
}

async fn lockout(mode: Mode) {
    let r = start_registry(mode, 3);
    lock_out_alice(&r).await;
    let a = login(&r, HERE.into(), "admin", ADMIN_PW).await;
    assert_eq!(a.status, 200, "another account is not locked out: {}", a.describe());
    let log = r.reg.log();
    assert!(log.contains("failed login"), "failed logins are logged:\n{log}");
    r.assert_no_secret_logged(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_mode_locks_out_after_failed_logins() {
    lockout(Mode::Basic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_locks_out_after_failed_logins() {
    lockout(Mode::Token).await;
}

/// Failures count per account *and client address* (auth/mod.rs): alice signing in from
/// another address is not locked out, so nobody can lock a user out of the whole registry by
/// guessing. Loopback has a whole /8 of source addresses to show it with.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_is_per_client_address() {
    for mode in [Mode::Basic, Mode::Token] {
        let r = start_registry(mode, 3);
        lock_out_alice(&r).await;
        let elsewhere: IpAddr = [127, 0, 0, 2].into();
        let a = login(&r, elsewhere, "alice", ALICE_PW).await;
        assert_eq!(
            a.status,
            200,
            "{mode:?} mode: alice from {elsewhere} must not be locked out by failures from 127.0.0.1: {}",
            a.describe()
        );
    }
}

fn conformance_with_admin(r: &Registry) {
    let mut cmd = Command::new(sibling_bin("berth-conformance"));
    cmd.args(["--url", &r.reg.url(), "--user", "admin", "--password", ADMIN_PW]);
    let out = cmd.output().expect("run berth-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!(
        "command: {cmd:?}\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(out.status.success(), "conformance failed:\n{all}");
    assert!(passed >= 40, "too few checks ran:\n{all}");
    assert_eq!(
        stdout.lines().last().unwrap_or(""),
        format!("{passed} passed, 0 failed"),
        "{all}"
    );
    r.assert_no_secret_logged(&[]);
}

#[test]
fn conformance_passes_with_token_auth() {
    conformance_with_admin(&start_registry(Mode::Token, 1000));
}

#[test]
fn conformance_passes_with_basic_auth() {
    conformance_with_admin(&start_registry(Mode::Basic, 1000));
}

/// docker keeps the refresh token (its identity token) for weeks: changing the password must
/// void it, or a leaked one would outlive the fix.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_die_with_the_password() {
    let r = start_registry(Mode::Token, 5);
    let client = reqwest::Client::new();
    let url = r.reg.url();
    let first = client
        .get(format!(
            "{url}/token?service=berth&offline_token=true&scope=repository:team/app:pull"
        ))
        .header("authorization", basic_header("alice", ALICE_PW))
        .send()
        .await
        .expect("GET /token");
    assert_eq!(first.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&first.bytes().await.expect("body")).expect("json");
    let refresh = body["refresh_token"].as_str().expect("a refresh token").to_owned();
    let exchange = |refresh: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(format!("{url}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=refresh_token&service=berth&scope=repository:team/app:pull&refresh_token={refresh}"
                ))
                .send()
                .await
                .expect("POST /token")
                .status()
        }
    };
    assert_eq!(exchange(refresh.clone()).await, 200, "a fresh refresh token works");
    run_with_stdin(
        Command::new(registry_bin())
            .args(["user", "passwd", "alice", "--password-stdin", "--data"])
            .arg(r.reg.data.as_path()),
        "a-new-password-9f3k\n",
    );
    assert_eq!(
        exchange(refresh).await,
        401,
        "the old refresh token must die with the old password"
    );
}
