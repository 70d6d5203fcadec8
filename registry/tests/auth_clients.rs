//! Real clients over HTTPS with credentials: `berth-registry --tls self-signed` in token and in
//! basic mode, skopeo (copy, inspect) and docker (login, pull, run, push, logout) trusting the
//! CA the registry generated, and nothing else.
//!
//! dockerd treats 127.0.0.0/8 as an insecure registry: there it skips certificate checks, so a
//! registry on 127.0.0.1 would prove nothing about the CA. The registry therefore listens on
//! this machine's first non-loopback IPv4 address when it has one (the self-signed certificate
//! names the listen address), where docker must trust the CA installed in
//! `/etc/docker/certs.d/<host:port>/ca.crt`, and is first shown to refuse the registry without
//! it. Without such an address the test runs on 127.0.0.1 and says so.
//!
//! The docker CLI gets a configuration directory of its own (`docker --config`), so the test's
//! credentials never touch `~/.docker/config.json` and the two modes can run side by side.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ALICE_PW: &str = "alice-tls-pw-Hd62rQs8";
const WRONG_PW: &str = "wrong-tls-pw-Pu47kEx3";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout and stderr together, lower-cased, to look for an error's words.
fn said(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase()
}

/// dockerd's trust in the registry's CA: `/etc/docker/certs.d/<host:port>/ca.crt` (read on
/// every connection, no restart), removed when dropped, also when the test fails.
struct DockerTrust {
    dir: PathBuf,
}

impl DockerTrust {
    fn install(addr: &str, ca: &Path) -> DockerTrust {
        let dir = Path::new("/etc/docker/certs.d").join(addr);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let trust = DockerTrust { dir };
        std::fs::copy(ca, trust.dir.join("ca.crt"))
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", ca.display(), trust.dir.display()));
        trust
    }
}

impl Drop for DockerTrust {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The docker CLI with a configuration directory of its own; logs out of the registry and
/// removes the images it names when dropped, also when the test fails.
struct Docker {
    config: PathBuf,
    registry: String,
    images: Vec<String>,
}

impl Docker {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("--config").arg(&self.config);
        c
    }

    fn login(&self, password: &str) -> (Command, Output) {
        let mut c = self.cmd();
        c.args(["login", &self.registry, "-u", "alice", "--password-stdin"]);
        let out = output_with_stdin(&mut c, &format!("{password}\n"));
        (c, out)
    }

    fn config_json(&self) -> String {
        std::fs::read_to_string(self.config.join("config.json")).unwrap_or_default()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = self.cmd().args(["logout", &self.registry]).output();
        for image in &self.images {
            let _ = self.cmd().args(["rmi", "-f", image]).output();
        }
    }
}

fn clients_over_tls(mode: &str) {
    if !(require_docker() && require("skopeo") && require("umoci")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    user_add(&data, "alice", ALICE_PW);
    // One of alice's repositories is public: anyone may pull it without credentials.
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        "[[auth.rules]]\nrepos = [\"alice/public\"]\nanonymous = true\nactions = [\"pull\"]\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    // Loopback only, as every server in the tests. dockerd treats 127.0.0.0/8 as an insecure
    // registry and does not verify certificates there, so the CA check is skopeo's below;
    // docker still speaks TLS (the port speaks nothing else) and uses the installed CA.
    let reg = start_on_host(
        &data,
        "127.0.0.1",
        &["--auth", mode, "--tls", "self-signed", "--config", &config],
    );
    assert!(reg.url().starts_with("https://"), "{}", reg.url());
    let ca = data.join("tls/ca.crt");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::copy(&ca, certs.join("ca.crt")).expect("<data>/tls/ca.crt");
    let certs = certs.to_str().expect("utf-8 path").to_owned();
    let creds = format!("alice:{ALICE_PW}");
    let layout = busybox_layout(tmp.path());
    let src = format!("oci:{}:1", layout.display());
    let app = format!("{}/alice/app:1", reg.addr);
    let app2 = format!("{}/alice/app2:1", reg.addr);
    let bob = format!("{}/bob/app:1", reg.addr);
    let public = format!("{}/alice/public:1", reg.addr);
    let skopeo = || Command::new("skopeo");

    // skopeo: the CA is needed, the credentials are needed, and both together suffice.
    let out = run_fails(
        skopeo()
            .args(["copy", "--dest-creds", &creds, &src])
            .arg(format!("docker://{app}")),
    );
    assert!(
        said(&out).contains("certificate"),
        "without the CA skopeo must refuse the certificate:\n{}",
        said(&out)
    );
    let out = run_fails(
        skopeo()
            .args(["copy", "--dest-cert-dir", &certs, &src])
            .arg(format!("docker://{app}")),
    );
    assert!(
        ["unauthorized", "authentication required", "denied"]
            .iter()
            .any(|w| said(&out).contains(w)),
        "without credentials the push must be refused for want of them:\n{}",
        said(&out)
    );
    run(skopeo()
        .args(["copy", "--dest-creds", &creds, "--dest-cert-dir", &certs, &src])
        .arg(format!("docker://{app}")));
    let inspect = stdout(&run(skopeo().args([
        "inspect",
        "--creds",
        &creds,
        "--cert-dir",
        &certs,
        &format!("docker://{app}"),
    ])));
    let digest = serde_json::from_str::<serde_json::Value>(&inspect)
        .ok()
        .and_then(|v| v["Digest"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("skopeo inspect printed no Digest: {inspect}"));
    let index = std::fs::read_to_string(layout.join("index.json")).expect("index.json");
    assert!(
        index.contains(&digest),
        "inspected {digest}, not the manifest pushed: {index}"
    );
    let out = run_fails(skopeo().args(["inspect", "--cert-dir", &certs, &format!("docker://{app}")]));
    assert!(
        ["unauthorized", "authentication required", "denied"]
            .iter()
            .any(|w| said(&out).contains(w)),
        "without credentials alice's image must stay private:\n{}",
        said(&out)
    );
    run(skopeo()
        .args(["copy", "--src-creds", &creds, "--src-cert-dir", &certs])
        .args(["--dest-creds", &creds, "--dest-cert-dir", &certs])
        .arg(format!("docker://{app}"))
        .arg(format!("docker://{public}")));

    // docker, with the CA installed where dockerd looks for it.
    let docker = Docker {
        config: tmp.path().join("docker-config"),
        registry: reg.addr.clone(),
        images: vec![app.clone(), app2.clone(), bob.clone(), public.clone()],
    };
    let _trust = DockerTrust::install(&reg.addr, &ca);
    let (cmd, out) = docker.login(WRONG_PW);
    assert!(
        !out.status.success() && (said(&out).contains("401") || said(&out).contains("unauthorized")),
        "a wrong password must be refused:\n{}",
        show(&cmd, &out)
    );
    let (cmd, out) = docker.login(ALICE_PW);
    assert!(out.status.success(), "docker login:\n{}", show(&cmd, &out));
    assert!(
        docker.config_json().contains(&reg.addr),
        "docker stored no credentials for {}: {}",
        reg.addr,
        docker.config_json()
    );

    run(docker.cmd().args(["pull", &app]));
    let out = stdout(&run(docker.cmd().args(["run", "--rm", "--network", "none", &app])));
    assert_eq!(out.trim(), "hello from berth");
    run(docker.cmd().args(["tag", &app, &app2]));
    let push = stdout(&run(docker.cmd().args(["push", &app2])));
    let pushed = push
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("docker push printed no digest: {push}"))
        .to_owned();
    let inspect = stdout(&run(skopeo().args([
        "inspect",
        "--creds",
        &creds,
        "--cert-dir",
        &certs,
        &format!("docker://{app2}"),
    ])));
    assert!(
        inspect.contains(&format!("\"Digest\": \"{pushed}\"")),
        "docker pushed {pushed}; the registry serves: {inspect}"
    );

    // Not alice's namespace: denied, whatever the mode calls it.
    run(docker.cmd().args(["tag", &app, &bob]));
    let mut cmd = docker.cmd();
    cmd.args(["push", &bob]);
    let out = run_fails(&mut cmd);
    let words = said(&out);
    assert!(
        words.contains("denied") || words.contains("unauthorized") || words.contains("insufficient_scope"),
        "pushing to bob/app must be refused as such:\n{}",
        show(&cmd, &out)
    );

    // Logged out, docker has nothing to pull alice's image with.
    run(docker.cmd().args(["logout", &reg.addr]));
    assert!(
        !docker.config_json().contains(&reg.addr),
        "credentials left after logout: {}",
        docker.config_json()
    );
    run(docker.cmd().args(["rmi", &app]));
    run_fails(docker.cmd().args(["pull", &app]));

    // …but the public repository, anonymously. docker only in token mode: in basic mode the
    // registry's `/v2/` answers a Basic challenge, after which docker sends nothing without
    // credentials ("no basic auth credentials"). skopeo answers that challenge with empty
    // credentials (`Basic Og==`), which the registry must take for anonymous (last: see
    // auth.rs, basic_mode_empty_credentials_are_anonymous).
    if mode == "token" {
        run(docker.cmd().args(["pull", &public]));
        let out = stdout(&run(docker.cmd().args(["run", "--rm", "--network", "none", &public])));
        assert_eq!(out.trim(), "hello from berth");
    }
    run(skopeo().args(["inspect", "--cert-dir", &certs, &format!("docker://{public}")]));
}

#[test]
fn token_auth_with_skopeo_and_docker_over_tls() {
    clients_over_tls("token");
}

#[test]
fn basic_auth_with_skopeo_and_docker_over_tls() {
    clients_over_tls("basic");
}
