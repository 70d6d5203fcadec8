//! Docker token auth: signing keys, the JWTs the built-in token service issues, and their
//! verification (including tokens from trusted external issuers).
//!
//! Keys: an ECDSA P-256 key generated on first start and kept in the database (table
//! `signing_keys`), so tokens survive restarts and a token minted by one replica verifies on
//! every other. Replicas starting together agree on one key (the first insert wins). A key
//! an older Berth kept at `<data>/token/signing-key.pem` is imported on first start, so
//! tokens already handed out stay valid. Its `kid` is the libtrust fingerprint that docker's
//! distribution also uses, so a distribution registry could trust this token service too.

use crate::config::{AuthConfig, TrustedIssuer};
use anyhow::{bail, Context as _};
use berth_storage::Meta;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::PublicKeyData as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name, or `catalog`.
    pub name: String,
    /// Granted actions (`pull`, `push`, `delete`, `*`).
    pub actions: Vec<String>,
}

/// Claims of an access token (distribution's docs/spec/auth/jwt.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the account name, empty for anonymous.
    #[serde(default)]
    pub sub: String,
    /// Audience: the registry's service name (external issuers may send a list).
    #[serde(deserialize_with = "one_or_many")]
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before.
    #[serde(default)]
    pub nbf: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Unique id.
    #[serde(default)]
    pub jti: String,
    /// What the bearer may do.
    #[serde(default)]
    pub access: Vec<ResourceActions>,
}

/// An audience given as one string or a list (RFC 7519 allows both); the validation has
/// already checked that ours is in it, so the first entry stands for it.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(s) => s,
        Aud::Many(v) => v.into_iter().next().unwrap_or_default(),
    })
}

/// Claims of a refresh token (docker's identity token): only who, never what.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
    /// Fingerprint of the account's credentials when issued: a changed password (or a
    /// deleted and re-created account) voids every refresh token issued before.
    acct: String,
}

/// A key that verifies tokens of one issuer.
struct Verifier {
    issuer: String,
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Signing and verification keys.
pub struct TokenKeys {
    encoding: EncodingKey,
    kid: String,
    own: DecodingKey,
    trusted: Vec<Verifier>,
    issuer: String,
    service: String,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The libtrust key id: base32 of the first 240 bits of SHA-256(SPKI DER), in 4-character
/// groups joined by ':'.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(spki_der);
    let bytes = &digest[..30];
    let mut out = String::with_capacity(48);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn trusted_verifiers(t: &TrustedIssuer) -> anyhow::Result<Vec<Verifier>> {
    let asymmetric = vec![
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    let mut out = Vec::new();
    if let Some(p) = &t.public_key {
        let pem = std::fs::read(p).with_context(|| format!("reading trusted issuer key {}", p.display()))?;
        let key = DecodingKey::from_ec_pem(&pem)
            .or_else(|_| DecodingKey::from_rsa_pem(&pem))
            .with_context(|| format!("{} is not a PEM EC or RSA public key", p.display()))?;
        out.push(Verifier {
            issuer: t.issuer.clone(),
            kid: None,
            key,
            algorithms: asymmetric.clone(),
        });
    }
    if let Some(p) = &t.jwks {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading JWKS {}", p.display()))?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&text).with_context(|| format!("{} is not a JWKS document", p.display()))?;
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).with_context(|| format!("unusable key in {}", p.display()))?;
            out.push(Verifier {
                issuer: t.issuer.clone(),
                kid: jwk.common.key_id.clone(),
                key,
                algorithms: asymmetric.clone(),
            });
        }
    }
    if out.is_empty() {
        bail!("trusted issuer {:?} needs public_key or jwks", t.issuer);
    }
    Ok(out)
}

/// Name of the token service's key in the `signing_keys` table.
const KEY_NAME: &str = "token";

/// A new ES256 private key, PEM.
pub fn generate_pem() -> anyhow::Result<String> {
    Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the token signing key")?
        .serialize_pem())
}

impl TokenKeys {
    /// The signing key every replica shares, from the database: the one stored, else the key
    /// an older Berth kept in `legacy_dir/signing-key.pem`, else a new one (whichever replica
    /// stores first wins; the others read its key). Trusted issuers' keys come from the
    /// configuration.
    pub async fn shared(meta: &Meta, legacy_dir: &Path, config: &AuthConfig) -> anyhow::Result<TokenKeys> {
        let legacy_path = legacy_dir.join("signing-key.pem");
        let legacy = match std::fs::read_to_string(&legacy_path) {
            Ok(p) => Some(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", legacy_path.display())),
        };
        let pem = match meta.signing_key(KEY_NAME).await? {
            Some(pem) => pem,
            None => {
                let candidate = match &legacy {
                    Some(pem) => {
                        // Checked before it is shared: a bad file must not become every
                        // replica's key.
                        Self::from_pem(pem, config).with_context(|| format!("importing {}", legacy_path.display()))?;
                        pem.clone()
                    }
                    None => generate_pem()?,
                };
                let (pem, ours) = meta.shared_signing_key(KEY_NAME, &candidate).await?;
                match (ours, legacy.is_some()) {
                    (true, true) => tracing::info!(
                        path = %legacy_path.display(),
                        "imported the token signing key into the database (the file is no longer read)"
                    ),
                    (true, false) => tracing::info!("generated the token signing key (kept in the database)"),
                    (false, _) => {}
                }
                pem
            }
        };
        if legacy.as_deref().is_some_and(|l| l.trim() != pem.trim()) {
            tracing::warn!(
                path = %legacy_path.display(),
                "ignoring this token signing key: replicas sign with the one in the database, and tokens signed \
                 with this file's key are refused; remove the file"
            );
        }
        Self::from_pem(&pem, config)
    }

    /// Keys from a PEM private key (ES256), and the trusted issuers' keys from the
    /// configuration.
    pub fn from_pem(pem: &str, config: &AuthConfig) -> anyhow::Result<TokenKeys> {
        let kp = rcgen::KeyPair::from_pem(pem).context("the token signing key is not a PEM private key")?;
        let encoding =
            EncodingKey::from_ec_pem(pem.as_bytes()).context("the token signing key is not an EC P-256 key")?;
        let own = DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes()).context("deriving the public key")?;
        let kid = libtrust_kid(&kp.subject_public_key_info());
        let mut trusted = Vec::new();
        for t in &config.trusted_issuers {
            trusted.extend(trusted_verifiers(t)?);
        }
        Ok(TokenKeys {
            encoding,
            kid,
            own,
            trusted,
            issuer: config.issuer.clone(),
            service: config.service.clone(),
        })
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn header(&self) -> Header {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        h
    }

    /// Signs an access token for `sub` with `access`, valid for `ttl` seconds.
    pub fn issue(&self, sub: &str, access: Vec<ResourceActions>, ttl: u64) -> anyhow::Result<String> {
        let now = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.service.clone(),
            exp: now + ttl,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        Ok(jsonwebtoken::encode(&self.header(), &claims, &self.encoding)?)
    }

    fn refresh_audience(&self) -> String {
        format!("{}:refresh", self.service)
    }

    /// Signs a refresh token for `sub`.
    pub fn issue_refresh(&self, sub: &str, account_fingerprint: &str, ttl: u64) -> anyhow::Result<String> {
        let now = now();
        let claims = RefreshClaims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.refresh_audience(),
            exp: now + ttl,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            acct: account_fingerprint.to_owned(),
        };
        Ok(jsonwebtoken::encode(&self.header(), &claims, &self.encoding)?)
    }

    /// Verifies a refresh token issued here; returns its subject and account fingerprint.
    pub fn verify_refresh(&self, token: &str) -> anyhow::Result<(String, String)> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[self.refresh_audience()]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let c = jsonwebtoken::decode::<RefreshClaims>(token, &self.own, &v)?.claims;
        Ok((c.sub, c.acct))
    }

    /// Verifies an access token, from this service or a trusted issuer, for this registry's
    /// service (audience).
    pub fn verify(&self, token: &str) -> anyhow::Result<Claims> {
        let header = jsonwebtoken::decode_header(token)?;
        let validation = |issuer: &str, algorithms: &[Algorithm]| {
            // jsonwebtoken checks every listed algorithm against the key's family, so list
            // only the token's own, and only when the key may use it (never HS*: a public key
            // used as an HMAC secret would let anyone sign).
            let mut v = Validation::new(header.alg);
            v.algorithms = if algorithms.contains(&header.alg) {
                vec![header.alg]
            } else {
                Vec::new()
            };
            v.set_audience(&[&self.service]);
            v.set_issuer(&[issuer]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.leeway = 30;
            v.validate_nbf = true;
            v
        };
        if header.kid.as_deref().is_none_or(|k| k == self.kid) {
            let r = jsonwebtoken::decode::<Claims>(token, &self.own, &validation(&self.issuer, &[Algorithm::ES256]));
            if r.is_ok() || self.trusted.is_empty() {
                return Ok(r?.claims);
            }
        }
        let mut last = None;
        for t in self.trusted.iter().filter(|t| t.kid.is_none() || t.kid == header.kid) {
            match jsonwebtoken::decode::<Claims>(token, &t.key, &validation(&t.issuer, &t.algorithms)) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e.into()),
            None => bail!("token signed by an unknown key"),
        }
    }
}

/// Parses a token-spec scope `type[(class)]:name:actions`; the name may hold `host:port`.
pub fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let actions = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    Some((kind.to_owned(), name.to_owned(), actions))
}

/// RFC 3339 UTC time of Unix seconds (for `issued_at`), without a date library.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:team/app:pull,push"),
            Some((
                "repository".into(),
                "team/app".into(),
                vec!["pull".into(), "push".into()]
            ))
        );
        assert_eq!(
            parse_scope("repository:localhost:5000/app:pull"),
            Some(("repository".into(), "localhost:5000/app".into(), vec!["pull".into()]))
        );
        assert_eq!(
            parse_scope("repository(plugin):x:pull"),
            Some(("repository".into(), "x".into(), vec!["pull".into()]))
        );
        assert_eq!(
            parse_scope("registry:catalog:*").map(|s| s.2),
            Some(vec!["*".to_owned()])
        );
        assert_eq!(parse_scope("nonsense"), None);
        assert_eq!(parse_scope("repository::pull"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_996_800), "2026-11-30T00:00:00Z");
    }

    #[test]
    fn issue_verify_and_refuse() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = AuthConfig::default();
        let pem = generate_pem().expect("key");
        let keys = TokenKeys::from_pem(&pem, &cfg).expect("keys");
        assert_eq!(keys.kid().len(), 59, "12 groups of 4 and 11 colons");
        let access = vec![ResourceActions {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["pull".into()],
        }];
        let t = keys.issue("alice", access.clone(), 60).expect("issue");
        let c = keys.verify(&t).expect("verify");
        assert_eq!((c.sub.as_str(), c.access), ("alice", access));
        // The same key, loaded again (another replica, a restart), verifies it.
        let again = TokenKeys::from_pem(&pem, &cfg).expect("reload");
        assert!(again.verify(&t).is_ok());
        // Expired.
        let old = keys.issue("alice", vec![], 0).expect("issue");
        let mut claims = keys.verify(&old).expect("fresh enough within leeway");
        claims.exp = 1;
        claims.nbf = 0;
        let expired = jsonwebtoken::encode(&keys.header(), &claims, &keys.encoding).expect("encode");
        assert!(keys.verify(&expired).is_err());
        // Another key.
        let other_pem = generate_pem().expect("key");
        let other = TokenKeys::from_pem(&other_pem, &cfg).expect("other");
        assert!(keys
            .verify(&other.issue("mallory", vec![], 60).expect("issue"))
            .is_err());
        // A refresh token is not an access token, and the reverse.
        let r = keys.issue_refresh("alice", "fp", 60).expect("refresh");
        assert!(keys.verify(&r).is_err());
        assert_eq!(
            keys.verify_refresh(&r).expect("refresh verifies"),
            ("alice".to_owned(), "fp".to_owned())
        );
        assert!(keys.verify_refresh(&t).is_err());
        // A trusted external issuer's key.
        let kp = rcgen::KeyPair::from_pem(&other_pem).expect("kp");
        let pubfile = dir.path().join("other.pub.pem");
        std::fs::write(&pubfile, kp.public_key_pem()).expect("write");
        let trusting = AuthConfig {
            trusted_issuers: vec![TrustedIssuer {
                issuer: "berth".into(),
                public_key: Some(pubfile),
                jwks: None,
            }],
            ..AuthConfig::default()
        };
        let keys2 = TokenKeys::from_pem(&pem, &trusting).expect("keys");
        assert!(keys2.verify(&other.issue("ext", vec![], 60).expect("issue")).is_ok());
    }

    #[test]
    fn trusted_issuer_from_jwks() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // An external auth server's key, published as a JWKS with its own kid.
        let ext = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let point = ext.public_key_raw(); // 0x04 || X || Y
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "ext-1", "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        let dir = tempfile::tempdir().expect("tmp");
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).expect("write");
        let cfg = AuthConfig {
            trusted_issuers: vec![TrustedIssuer {
                issuer: "https://auth.example".into(),
                public_key: None,
                jwks: Some(jwks_file),
            }],
            ..AuthConfig::default()
        };
        let keys = TokenKeys::from_pem(&generate_pem().expect("key"), &cfg).expect("keys");
        let encoding = EncodingKey::from_ec_pem(ext.serialize_pem().as_bytes()).expect("encoding key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ext-1".into());
        let n = now();
        let claims = |iss: &str, aud: &str| Claims {
            iss: iss.into(),
            sub: "ci".into(),
            aud: aud.into(),
            exp: n + 60,
            nbf: n - 1,
            iat: n,
            jti: "j".into(),
            access: vec![ResourceActions {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
        };
        let good = jsonwebtoken::encode(&header, &claims("https://auth.example", "berth"), &encoding).expect("sign");
        assert_eq!(keys.verify(&good).expect("trusted").access.len(), 1);
        // The same key claiming another issuer, or meant for another service, is refused.
        let wrong_iss =
            jsonwebtoken::encode(&header, &claims("https://evil.example", "berth"), &encoding).expect("sign");
        assert!(keys.verify(&wrong_iss).is_err());
        let wrong_aud =
            jsonwebtoken::encode(&header, &claims("https://auth.example", "other"), &encoding).expect("sign");
        assert!(keys.verify(&wrong_aud).is_err());
    }

    /// Replicas share one key through the database; a key file of an older Berth is imported
    /// once, and a bad one is refused rather than shared.
    #[tokio::test]
    async fn shared_key_from_the_database_and_the_legacy_file() {
        let cfg = AuthConfig::default();
        for (name, meta) in berth_storage::testing::metas().await {
            let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
            let first = TokenKeys::shared(&meta, a.path(), &cfg).await.expect("first start");
            let second = TokenKeys::shared(&meta, b.path(), &cfg).await.expect("second replica");
            assert_eq!(first.kid(), second.kid(), "{name}");
            let t = first.issue("alice", vec![], 60).expect("issue");
            assert!(second.verify(&t).is_ok(), "{name}");
            assert!(
                !a.path().join("signing-key.pem").exists(),
                "{name}: no key file is written"
            );
        }
        for (name, meta) in berth_storage::testing::metas().await {
            let dir = tempfile::tempdir().expect("tmp");
            let pem = generate_pem().expect("key");
            std::fs::write(dir.path().join("signing-key.pem"), &pem).expect("write");
            let old = TokenKeys::from_pem(&pem, &cfg).expect("keys");
            let imported = TokenKeys::shared(&meta, dir.path(), &cfg).await.expect("import");
            assert_eq!(imported.kid(), old.kid(), "{name}: the file's key is imported");
            let elsewhere = tempfile::tempdir().expect("tmp");
            let other = TokenKeys::shared(&meta, elsewhere.path(), &cfg).await.expect("replica");
            assert!(
                other.verify(&old.issue("alice", vec![], 60).expect("issue")).is_ok(),
                "{name}"
            );
        }
        for (name, meta) in berth_storage::testing::metas().await {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::write(dir.path().join("signing-key.pem"), "not a key").expect("write");
            assert!(TokenKeys::shared(&meta, dir.path(), &cfg).await.is_err(), "{name}");
            assert_eq!(meta.signing_key(KEY_NAME).await.expect("read"), None, "{name}");
        }
    }
}
