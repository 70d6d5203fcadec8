//! Auth state that replicas share through the database: the token service's signing key and
//! failed-login counts. Nothing here interprets them (the registry's `auth` module does); this
//! only makes every replica see one value, and makes concurrent writers agree.
//!
//! # Why in SQL, not in process memory
//! A client's requests may land on any replica: a token minted by one must verify on the
//! others, and a password guesser must not get `max_failed_logins` tries per replica.

use super::{now_ms, Meta};
use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256};
use sqlx::Row;
use std::borrow::Cow;
use std::time::Duration;

/// One (account, client address) pair's failed logins, as the database holds them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failures counted in the current window.
    pub failures: u32,
    /// Time left of a lockout in force, if any.
    pub locked_for: Option<Duration>,
}

/// Account names longer than any account can have are keyed by their hash: a guesser sending
/// megabyte-long names must not fill the table with them.
fn account_key(account: &str) -> Cow<'_, str> {
    if account.len() <= 128 {
        Cow::Borrowed(account)
    } else {
        Cow::Owned(format!("sha256:{}", hex::encode(Sha256::digest(account.as_bytes()))))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn remaining(until: Option<i64>, now: i64) -> Option<Duration> {
    until
        .filter(|u| *u > now)
        .map(|u| Duration::from_millis(u64::try_from(u - now).unwrap_or(0)))
}

impl Meta {
    /// The private key stored under `name`, storing `candidate` first when there is none.
    ///
    /// Replicas starting together each offer a freshly generated candidate; the conditional
    /// insert lets exactly one win and every caller gets the winner, so they all sign with
    /// one key. Returns the key and whether `candidate` is the one stored.
    pub async fn shared_signing_key(&self, name: &str, candidate: &str) -> Result<(String, bool)> {
        sqlx::query(
            "INSERT INTO signing_keys (name, private_key_pem, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now_ms() / 1000)
        .execute(&self.write)
        .await
        .map_err(Error::db("storing the signing key"))?;
        let pem = self
            .signing_key(name)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("signing key {name:?} vanished after it was stored")))?;
        let ours = pem == candidate;
        Ok((pem, ours))
    }

    /// The private key stored under `name`, if any.
    pub async fn signing_key(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT private_key_pem FROM signing_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.write)
            .await
            .map_err(Error::db("reading the signing key"))
    }

    /// The failed logins of `account` from `peer` (`""` when the address is unknown), `None`
    /// when there are none that still count.
    pub async fn login_failures(&self, account: &str, peer: &str) -> Result<Option<LoginFailures>> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT failures, locked_until FROM login_failures WHERE account = $1 AND peer = $2 AND expires_at > $3",
        )
        .bind(account_key(account).as_ref())
        .bind(peer)
        .bind(now)
        .fetch_optional(&self.read)
        .await
        .map_err(Error::db("reading failed logins"))?;
        let Some(row) = row else { return Ok(None) };
        let failures: i64 = row.try_get(0).map_err(Error::db("reading failed logins"))?;
        let locked_until: Option<i64> = row.try_get(1).map_err(Error::db("reading failed logins"))?;
        Ok(Some(LoginFailures {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_for: remaining(locked_until, now),
        }))
    }

    /// Counts a failed login of `account` from `peer`: failures count for `window` from the
    /// first one; the `limit`-th within it locks the pair out for `window`. Returns the count
    /// after this one. Concurrent failures on any replicas are all counted: the row is locked
    /// (created or touched) before it is read.
    pub async fn record_login_failure(
        &self,
        account: &str,
        peer: &str,
        limit: u32,
        window: Duration,
    ) -> Result<LoginFailures> {
        let op = "counting a failed login";
        let (now, window) = (now_ms(), ms(window).max(1));
        let account = account_key(account);
        let mut tx = self.begin().await?;
        // A new row starts expired, so the reset below applies to it as to a stale one.
        sqlx::query(
            "INSERT INTO login_failures (account, peer, failures, first_at, locked_until, expires_at) \
             VALUES ($1, $2, 0, $3, NULL, $3) \
             ON CONFLICT (account, peer) DO UPDATE SET failures = login_failures.failures",
        )
        .bind(account.as_ref())
        .bind(peer)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(op))?;
        let row = sqlx::query(
            "SELECT failures, first_at, locked_until, expires_at FROM login_failures WHERE account = $1 AND peer = $2",
        )
        .bind(account.as_ref())
        .bind(peer)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db(op))?;
        let mut failures: i64 = row.try_get(0).map_err(Error::db(op))?;
        let mut first_at: i64 = row.try_get(1).map_err(Error::db(op))?;
        let mut locked_until: Option<i64> = row.try_get(2).map_err(Error::db(op))?;
        let expires_at: i64 = row.try_get(3).map_err(Error::db(op))?;
        if expires_at <= now {
            (failures, first_at, locked_until) = (0, now, None);
        }
        failures += 1;
        if failures >= i64::from(limit.max(1)) {
            locked_until = Some(now.saturating_add(window));
        }
        let expires_at = first_at.saturating_add(window).max(locked_until.unwrap_or(0));
        sqlx::query(
            "UPDATE login_failures SET failures = $1, first_at = $2, locked_until = CAST($3 AS BIGINT), expires_at = $4 \
             WHERE account = $5 AND peer = $6",
        )
        .bind(failures)
        .bind(first_at)
        .bind(locked_until)
        .bind(expires_at)
        .bind(account.as_ref())
        .bind(peer)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(op))?;
        tx.commit().await.map_err(Error::db(op))?;
        Ok(LoginFailures {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_for: remaining(locked_until, now),
        })
    }

    /// Forgets the failed logins of `account` from `peer` (after a successful login).
    pub async fn clear_login_failures(&self, account: &str, peer: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE account = $1 AND peer = $2")
            .bind(account_key(account).as_ref())
            .bind(peer)
            .execute(&self.write)
            .await
            .map_err(Error::db("clearing failed logins"))?;
        Ok(())
    }

    /// Deletes the failed-login rows that no longer count (window and lockout over). Returns
    /// how many.
    pub async fn purge_login_failures(&self) -> Result<u64> {
        let r = sqlx::query("DELETE FROM login_failures WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&self.write)
            .await
            .map_err(Error::db("purging failed logins"))?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signing_key_first_writer_wins() {
        for (name, meta) in crate::testing::metas().await {
            assert_eq!(meta.signing_key("token").await.expect("read"), None, "{name}");
            let (k, ours) = meta.shared_signing_key("token", "A").await.expect("store");
            assert_eq!((k.as_str(), ours), ("A", true), "{name}");
            let (k, ours) = meta.shared_signing_key("token", "B").await.expect("store");
            assert_eq!((k.as_str(), ours), ("A", false), "{name}: the first key stays");
            assert_eq!(meta.signing_key("token").await.expect("read").as_deref(), Some("A"));
        }
    }

    /// Replicas starting at once on one PostgreSQL database all end up with one key.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_first_starts_agree_on_one_key() {
        let Some(url) = crate::testing::fresh_postgres().await else {
            return;
        };
        let mut metas = Vec::new();
        for _ in 0..6 {
            metas.push(Meta::connect(&url).await.expect("connect"));
        }
        let tasks: Vec<_> = metas
            .into_iter()
            .enumerate()
            .map(|(i, m)| tokio::spawn(async move { m.shared_signing_key("token", &format!("key-{i}")).await }))
            .collect();
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await.expect("join").expect("store"));
        }
        assert_eq!(keys.iter().filter(|(_, ours)| *ours).count(), 1, "{keys:?}");
        assert!(keys.iter().all(|(k, _)| *k == keys[0].0), "{keys:?}");
    }

    #[tokio::test]
    async fn failed_logins_lock_out_then_expire() {
        for (name, meta) in crate::testing::metas().await {
            let window = Duration::from_millis(600);
            assert_eq!(meta.login_failures("alice", "10.0.0.1").await.expect("read"), None);
            for n in 1..=2 {
                let f = meta
                    .record_login_failure("alice", "10.0.0.1", 3, window)
                    .await
                    .expect("count");
                assert_eq!((f.failures, f.locked_for), (n, None), "{name}");
            }
            let f = meta
                .record_login_failure("alice", "10.0.0.1", 3, window)
                .await
                .expect("count");
            assert_eq!(f.failures, 3);
            assert!(f.locked_for.is_some_and(|d| d <= window), "{name}: {f:?}");
            let seen = meta.login_failures("alice", "10.0.0.1").await.expect("read");
            assert!(seen.and_then(|f| f.locked_for).is_some(), "{name}: {seen:?}");
            // Per pair: another address, another account.
            assert_eq!(meta.login_failures("alice", "10.0.0.2").await.expect("read"), None);
            assert_eq!(meta.login_failures("bob", "10.0.0.1").await.expect("read"), None);
            // Expiry: the row stops counting and is purged; counting starts over.
            tokio::time::sleep(window + Duration::from_millis(50)).await;
            assert_eq!(meta.login_failures("alice", "10.0.0.1").await.expect("read"), None);
            assert_eq!(meta.purge_login_failures().await.expect("purge"), 1, "{name}");
            let f = meta
                .record_login_failure("alice", "10.0.0.1", 3, window)
                .await
                .expect("count");
            assert_eq!((f.failures, f.locked_for), (1, None), "{name}");
            meta.clear_login_failures("alice", "10.0.0.1").await.expect("clear");
            assert_eq!(meta.login_failures("alice", "10.0.0.1").await.expect("read"), None);
            // Absurdly long names are kept by hash, and still counted.
            let long = "x".repeat(100_000);
            meta.record_login_failure(&long, "", 2, window).await.expect("count");
            let f = meta.record_login_failure(&long, "", 2, window).await.expect("count");
            assert!(f.locked_for.is_some(), "{name}");
            assert!(meta.login_failures(&long, "").await.expect("read").is_some());
        }
    }

    /// Failures sent to several replicas at once are each counted.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_failures_are_all_counted() {
        let Some(url) = crate::testing::fresh_postgres().await else {
            return;
        };
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let m = Meta::connect(&url).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    m.record_login_failure("alice", "", 1000, Duration::from_secs(60))
                        .await
                        .expect("count");
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        let m = Meta::connect(&url).await.expect("connect");
        let f = m.login_failures("alice", "").await.expect("read").expect("counted");
        assert_eq!(f.failures, 20);
    }
}
