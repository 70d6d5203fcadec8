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

/// The endpoint of an S3-compatible server for tests: moto's server mode (`moto_server`, from
/// PyPI; `.ci/run` installs the pinned version), started once per test process on a free
/// loopback port and stopped by a watchdog shell when the process exits. `None` (with a
/// message) when moto is missing — and under `CI=true` that is a failure.
pub fn s3_endpoint() -> Option<String> {
    static ENDPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(start_moto).clone()
}

fn start_moto() -> Option<String> {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("moto_server is missing under CI=true: .ci/run installs moto[server] with pip");
        }
        eprintln!("SKIP: S3 half of the test (moto_server missing: pip install 'moto[server]')");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port for moto: {e}"));
    let log = std::env::temp_dir().join(format!("berth-moto-{port}.log"));
    // The watchdog stops moto once this process is gone, whatever way it ends.
    let script = format!(
        "moto_server -H 127.0.0.1 -p {port} >{log} 2>&1 & m=$!; \
         while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $m; wait $m",
        log = log.display(),
        pid = std::process::id()
    );
    let mut watchdog = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start moto_server: {e}"));
    std::thread::spawn(move || watchdog.wait());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "moto_server did not listen on 127.0.0.1:{port} within 30 s:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A new, empty bucket on the test S3 server: its `s3://` URL (with a prefix, as deployments
/// use) and the options to reach it; `None` when there is no server (see [`s3_endpoint`]).
pub fn fresh_s3() -> Option<(String, crate::blob::StorageOptions)> {
    use std::io::{Read, Write};
    let endpoint = s3_endpoint()?;
    let bucket = format!("berth-test-{}", uuid::Uuid::new_v4().simple());
    let host = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("S3 test server: {e}"));
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket}: {answer}"
    );
    let opts = crate::blob::StorageOptions {
        s3: crate::blob::S3Options {
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            access_key_id: Some("berth-test".into()),
            secret_access_key: Some("berth-test".into()),
            path_style: Some(true),
        },
        ..Default::default()
    };
    Some((format!("s3://{bucket}/registry"), opts))
}
