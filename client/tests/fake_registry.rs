//! `berth pull` against a registry written here, which misbehaves on purpose: it breaks off the
//! first download of a layer halfway (berth must resume with `Range` from exactly that byte and
//! verify the whole), ignores `Range` (berth must start over), or serves wrong bytes of the
//! right length (berth must refuse them and keep nothing under the layer's digest).
//!
//! The fake speaks just enough HTTP/1.1 by hand over a `std::net::TcpListener` on 127.0.0.1:0,
//! one request per connection (`Connection: close`), so that a response can be cut short at an
//! exact byte. It records every request, printed when a test fails.

mod common;

use common::*;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fake serves the layer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layer {
    /// The first GET sends the full Content-Length but only half the bytes, then closes; later
    /// GETs honour `Range: bytes=N-` with 206.
    BreakFirstThenRange,
    /// The first GET breaks off as above; later GETs ignore `Range` and send 200 with all bytes.
    BreakFirstThenIgnoreRange,
    /// Every GET sends bytes of the right length, one of them wrong.
    Corrupt,
    /// The right bytes, the second half three seconds after the first: still downloading when
    /// another blob fails.
    Slow,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    answer: String,
}

struct Content {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layers: Vec<Served>,
}

/// A layer and how the fake serves it.
struct Served {
    digest: String,
    bytes: Vec<u8>,
    mode: Layer,
    /// GETs so far, counted as they arrive.
    gets: AtomicUsize,
}

/// The fake registry: serves `x/y:1` until dropped; prints what it saw when a test fails.
struct Fake {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn start(content: Content) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let content = Arc::new(content);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (content, seen) = (content.clone(), seen2.clone());
                std::thread::spawn(move || handle(conn, &content, &seen));
            }
        });
        Fake { addr, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn requests(&self) -> String {
        self.seen()
            .iter()
            .map(|s| {
                format!(
                    "{} {} range={} → {}",
                    s.method,
                    s.path,
                    s.range.as_deref().unwrap_or("-"),
                    s.answer
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if std::thread::panicking() {
            eprintln!("--- requests the fake registry saw ---\n{}", self.requests());
        }
    }
}

/// Reads a request head; `None` when the peer sent something that is not HTTP (berth first
/// tries TLS on a loopback registry) or nothing at all.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut byte).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
        if !buf[0].is_ascii_uppercase() || buf.len() > 64 * 1024 {
            return None;
        }
    }
    String::from_utf8(buf).ok()
}

fn write_response(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn handle(mut conn: TcpStream, c: &Content, seen: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    // Recorded as it arrives (the answer filled in when sent), so that a request still being
    // answered shows up in a failure message too.
    let record = |method: &str, path: &str, range: Option<String>, answer: &str| {
        seen.lock().ok().map(|mut s| {
            s.push(Seen {
                method: method.to_owned(),
                path: path.to_owned(),
                range,
                answer: answer.to_owned(),
            });
            s.len() - 1
        })
    };
    let Some(head) = read_head(&mut conn) else {
        record("?", "-", None, "not HTTP (a TLS hello?): closed");
        return;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    let at = record(&method, &path, range.clone(), "(being answered)");
    let head_only = method == "HEAD";
    let body = |b: &[u8]| if head_only { Vec::new() } else { b.to_vec() };
    let manifests = "/v2/x/y/manifests/";
    let blobs = "/v2/x/y/blobs/";
    let answer = if method != "GET" && method != "HEAD" {
        write_response(
            &mut conn,
            "405 Method Not Allowed",
            &[("Content-Length", "0".into())],
            b"",
        );
        "405".to_owned()
    } else if path == "/v2/" {
        let h = [
            ("Content-Type", "application/json".to_owned()),
            ("Content-Length", "2".to_owned()),
        ];
        write_response(&mut conn, "200 OK", &h, &body(b"{}"));
        "200".to_owned()
    } else if path == format!("{manifests}1") || path == format!("{manifests}{}", c.manifest_digest) {
        let h = [
            ("Content-Type", OCI_MANIFEST.to_owned()),
            ("Docker-Content-Digest", c.manifest_digest.clone()),
            ("Content-Length", c.manifest.len().to_string()),
        ];
        write_response(&mut conn, "200 OK", &h, &body(&c.manifest));
        "200 manifest".to_owned()
    } else if path == format!("{blobs}{}", c.config_digest) {
        let h = [
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Docker-Content-Digest", c.config_digest.clone()),
            ("Content-Length", c.config.len().to_string()),
        ];
        write_response(&mut conn, "200 OK", &h, &body(&c.config));
        "200 config".to_owned()
    } else if let Some(layer) = c.layers.iter().find(|l| path == format!("{blobs}{}", l.digest)) {
        serve_layer(&mut conn, layer, range.as_deref(), head_only)
    } else {
        let msg = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not served by the fake"}]}"#;
        let h = [
            ("Content-Type", "application/json".to_owned()),
            ("Content-Length", msg.len().to_string()),
        ];
        write_response(&mut conn, "404 Not Found", &h, &body(msg));
        "404".to_owned()
    };
    if let (Some(at), Ok(mut s)) = (at, seen.lock()) {
        s[at].answer = answer;
    }
    let _ = conn.shutdown(Shutdown::Write);
}

fn serve_layer(conn: &mut TcpStream, layer: &Served, range: Option<&str>, head_only: bool) -> String {
    let bytes = &layer.bytes;
    let len = bytes.len();
    let full = |ct_len: usize| {
        vec![
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Docker-Content-Digest", layer.digest.clone()),
            ("Content-Length", ct_len.to_string()),
        ]
    };
    if head_only {
        write_response(conn, "200 OK", &full(len), b"");
        return "200 (HEAD)".into();
    }
    let earlier = layer.gets.fetch_add(1, Ordering::SeqCst);
    match layer.mode {
        Layer::Corrupt => {
            let mut bad = bytes.clone();
            bad[len / 2] ^= 0xff;
            write_response(conn, "200 OK", &full(len), &bad);
            "200 with one byte wrong".into()
        }
        Layer::Slow => {
            write_response(conn, "200 OK", &full(len), &bytes[..len / 2]);
            std::thread::sleep(Duration::from_secs(3));
            let _ = conn.write_all(&bytes[len / 2..]);
            "200, the second half 3 s after the first".into()
        }
        Layer::BreakFirstThenRange | Layer::BreakFirstThenIgnoreRange if earlier == 0 => {
            // Headers promise every byte; half of them arrive, then the connection closes.
            write_response(conn, "200 OK", &full(len), &bytes[..len / 2]);
            format!("200, broken off after {} of {len} bytes", len / 2)
        }
        Layer::BreakFirstThenRange => {
            match range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok()) {
                Some(from) if from < len => {
                    let mut h = full(len - from);
                    h.push(("Content-Range", format!("bytes {from}-{}/{len}", len - 1)));
                    write_response(conn, "206 Partial Content", &h, &bytes[from..]);
                    format!("206 bytes {from}-{}/{len}", len - 1)
                }
                _ => {
                    write_response(conn, "200 OK", &full(len), bytes);
                    "200 all bytes".into()
                }
            }
        }
        Layer::BreakFirstThenIgnoreRange => {
            write_response(conn, "200 OK", &full(len), bytes);
            "200 all bytes, Range ignored".into()
        }
    }
}

/// An image with one ~1 MiB layer per entry of `modes`, built as a layout in `dir` and served
/// by a fake that serves each layer as its mode says.
fn fake_with_image(dir: &Path, modes: &[Layer]) -> (Fake, Image) {
    let img = write_image(dir, "1", &vec![1 << 20; modes.len()], 5);
    let blob = |d: &str| {
        let p = dir.join("blobs/sha256").join(&d["sha256:".len()..]);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let layers = img
        .layers
        .iter()
        .zip(modes)
        .map(|((digest, _), &mode)| Served {
            digest: digest.clone(),
            bytes: blob(digest),
            mode,
            gets: AtomicUsize::new(0),
        })
        .collect();
    let content = Content {
        manifest: img.manifest.clone(),
        manifest_digest: img.digest.clone(),
        config: img.config.clone(),
        config_digest: sha256(&img.config),
        layers,
    };
    (Fake::start(content), img)
}

fn pull(berth: &Berth, fake: &Fake, to: &Path) -> (std::process::Command, std::process::Output) {
    let mut cmd = berth.cmd(&[
        "pull",
        &format!("{}/x/y:1", fake.addr),
        "--to",
        to.to_str().expect("utf-8 path"),
    ]);
    // The client's own account of retries and resumes, for the failure message.
    cmd.env("BERTH_LOG", "berth_client=debug");
    let out = output(&mut cmd, None);
    (cmd, out)
}

fn layer_requests(fake: &Fake, digest: &str) -> Vec<Seen> {
    fake.seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(digest))
        .collect()
}

fn resumes_and_verifies(mode: Layer) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (fake, img) = fake_with_image(&tmp.path().join("origin"), &[mode]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let to = tmp.path().join("pulled");
    let (cmd, out) = pull(&berth, &fake, &to);
    let context = || format!("{}\n--- requests ---\n{}", show(&cmd, &out), fake.requests());
    assert!(out.status.success(), "pull failed:\n{}", context());
    assert_same_blobs(&img.layout, &to);
    assert_eq!(index_entry(&to, "1")["digest"], serde_json::json!(img.digest));

    let (layer_digest, layer_size) = &img.layers[0];
    let half = layer_size / 2;
    let gets = layer_requests(&fake, layer_digest);
    assert!(
        gets.len() >= 2,
        "the layer was fetched {} times:\n{}",
        gets.len(),
        context()
    );
    assert_eq!(
        gets[0].range,
        None,
        "the first GET of the layer asked for a range:\n{}",
        context()
    );
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str()),
        "the resumed GET must start exactly where the first response broke off:\n{}",
        context()
    );
    assert_eq!(gets.len(), 2, "one broken GET and one that completes:\n{}", context());
}

#[test]
fn interrupted_download_resumes_with_range_and_verifies() {
    resumes_and_verifies(Layer::BreakFirstThenRange);
}

#[test]
fn interrupted_download_starts_over_when_range_is_ignored() {
    resumes_and_verifies(Layer::BreakFirstThenIgnoreRange);
}

#[test]
fn corrupted_blob_is_refused_and_nothing_is_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (fake, img) = fake_with_image(&tmp.path().join("origin"), &[Layer::Corrupt]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let to = tmp.path().join("pulled");
    let (cmd, out) = pull(&berth, &fake, &to);
    let context = || format!("{}\n--- requests ---\n{}", show(&cmd, &out), fake.requests());
    assert_eq!(out.status.code(), Some(1), "pull of a corrupted blob:\n{}", context());

    let (layer_digest, _) = &img.layers[0];
    let mut bad = std::fs::read(img.layout.join("blobs/sha256").join(&layer_digest["sha256:".len()..])).expect("layer");
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let err = stderr(&out);
    assert!(
        err.contains(layer_digest.as_str()) && err.contains(&sha256(&bad)) && err.contains("digest"),
        "the error must name the expected digest and the one received:\n{}",
        context()
    );

    let hex = &layer_digest["sha256:".len()..];
    let names = blob_names(&to);
    assert!(
        !names.iter().any(|n| n.contains(hex) || n.contains("partial")),
        "the refused layer (or a partial download) was kept in {}: {names:?}\n{}",
        to.join("blobs/sha256").display(),
        context()
    );
    if let Ok(text) = std::fs::read(to.join("index.json")) {
        let index: serde_json::Value = serde_json::from_slice(&text).expect("index JSON");
        assert_eq!(
            index["manifests"],
            serde_json::json!([]),
            "a failed pull tagged the image"
        );
    }
}

#[test]
fn failed_pull_leaves_no_partial_downloads() {
    // One layer fails verification while the other is still arriving: berth gives up, and must
    // not leave the unfinished download behind in the layout.
    let tmp = tempfile::tempdir().expect("tmp");
    let (fake, img) = fake_with_image(&tmp.path().join("origin"), &[Layer::Corrupt, Layer::Slow]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let to = tmp.path().join("pulled");
    let (cmd, out) = pull(&berth, &fake, &to);
    let context = || format!("{}\n--- requests ---\n{}", show(&cmd, &out), fake.requests());
    assert_eq!(
        out.status.code(),
        Some(1),
        "pull with a corrupted layer:\n{}",
        context()
    );
    let names = blob_names(&to);
    let layer_hexes: Vec<&str> = img.layers.iter().map(|(d, _)| &d["sha256:".len()..]).collect();
    let left: Vec<&String> = names
        .iter()
        .filter(|n| n.contains("partial") || layer_hexes.iter().any(|h| n.contains(h)))
        .collect();
    assert!(
        left.is_empty(),
        "a failed pull left {left:?} in {}\n{}",
        to.join("blobs/sha256").display(),
        context()
    );
}
