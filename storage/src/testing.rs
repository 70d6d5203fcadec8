//! Test support: databases for the suites that every metadata backend must pass.
//!
//! PostgreSQL comes from `BERTH_TEST_POSTGRES` (an admin URL such as
//! `postgres://berth:berth@127.0.0.1:5432/berth`, set by `.ci/run` after it starts a
//! cluster); each call makes a database of its own so tests run in parallel. Without it the
//! PostgreSQL half is skipped with a message — and under `CI=true` that is a failure.

use crate::meta::Meta;

/// A fresh PostgreSQL database URL, or `None` (with a message) when none is configured.
pub async fn fresh_postgres() -> Option<String> {
    let Ok(admin) = std::env::var("BERTH_TEST_POSTGRES") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("BERTH_TEST_POSTGRES is not set under CI=true: .ci/run starts PostgreSQL and sets it");
        }
        eprintln!("SKIP: PostgreSQL half of the test (set BERTH_TEST_POSTGRES=postgres://USER:PW@127.0.0.1/DB)");
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("berth_t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach BERTH_TEST_POSTGRES: {e}"));
    let create = format!("CREATE DATABASE {name}");
    sqlx::query(&create)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}

/// Every backend a metadata test should run on: SQLite in memory, and PostgreSQL when
/// configured.
pub async fn metas() -> Vec<(&'static str, Meta)> {
    let mut out = vec![(
        "sqlite",
        Meta::connect("sqlite::memory:").await.expect("sqlite in memory"),
    )];
    if let Some(url) = fresh_postgres().await {
        out.push(("postgres", Meta::connect(&url).await.expect("postgres")));
    }
    out
}
