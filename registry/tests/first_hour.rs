//! `berth-registry user` and `robot` as a newcomer meets them: they name the database they
//! wrote to, refuse to invent a registry where there is none, refuse names no namespace can
//! have and passwords that are too short (each with the rule), say what an htpasswd import
//! that stops did, and a registry running open notices accounts added under it.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn registry(args: &[&str]) -> Command {
    let mut c = Command::new(registry_bin());
    c.args(args)
        .env_remove("BERTH_DATA")
        .env_remove("BERTH_DATABASE")
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_STORAGE");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `user add NAME` with `password` on stdin in `cwd` with `extra` flags, success or not.
fn user_add_in(cwd: &Path, name: &str, password: &str, extra: &[&str]) -> (Command, Output) {
    let mut c = registry(&["user", "add", name, "--password-stdin"]);
    c.args(extra).current_dir(cwd);
    let out = output_with_stdin(&mut c, &format!("{password}\n"));
    (c, out)
}

#[test]
fn user_add_names_the_database_and_says_when_it_made_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    // No --data and no ./berth-data: refused, and nothing is created.
    let (c, out) = user_add_in(tmp.path(), "alice", "alice-pw-long", &[]);
    assert!(!out.status.success(), "{}", show(&c, &out));
    let err = text(&out.stderr);
    assert!(
        err.contains("no registry data here") && err.contains("--data"),
        "{}",
        show(&c, &out)
    );
    assert!(!tmp.path().join("berth-data").exists(), "user add created ./berth-data");

    // An empty directory given with --data: a new database, and it says so.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let data = empty.to_str().expect("utf-8");
    let (c, out) = user_add_in(tmp.path(), "alice", "alice-pw-long", &["--data", data]);
    assert!(out.status.success(), "{}", show(&c, &out));
    let db = empty.join("berth.db");
    assert!(
        text(&out.stderr).contains("held no registry database")
            && text(&out.stderr).contains(&db.display().to_string()),
        "{}",
        show(&c, &out)
    );
    assert!(
        text(&out.stderr).contains("first account") && text(&out.stderr).contains("restarted"),
        "{}",
        show(&c, &out)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        format!("added user alice to sqlite://{}", db.display()),
        "{}",
        show(&c, &out)
    );

    // The second account: no notices, the database named again.
    let (c, out) = user_add_in(tmp.path(), "bob", "bob-pw-long", &["--data", data]);
    assert!(out.status.success(), "{}", show(&c, &out));
    assert!(text(&out.stderr).is_empty(), "{}", show(&c, &out));
    assert!(text(&out.stdout).contains("berth.db"), "{}", show(&c, &out));

    // Robots: stdout stays name + secret for scripts; the database is named on stderr.
    let mut r = registry(&["robot", "add", "ci", "--repo", "team/*", "--data", data]);
    let out = run(&mut r);
    assert_eq!(text(&out.stdout).lines().count(), 2, "{}", show(&r, &out));
    assert!(
        text(&out.stderr).contains("added robot$ci to sqlite://"),
        "{}",
        show(&r, &out)
    );
}

#[test]
fn names_and_passwords_are_refused_with_the_rule() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().to_str().expect("utf-8");
    let (c, out) = user_add_in(tmp.path(), "Dora", "dora-pw-long", &["--data", data]);
    assert!(!out.status.success(), "{}", show(&c, &out));
    let err = text(&out.stderr);
    assert!(
        err.contains("lowercase") && err.contains("\"dora\""),
        "{}",
        show(&c, &out)
    );
    // One line of refusal (after the notice that the empty directory got a database).
    assert_eq!(
        err.lines().filter(|l| l.contains("invalid user name")).count(),
        1,
        "{}",
        show(&c, &out)
    );

    for bad in ["do/ra", "dora.", "do ra", "do..ra"] {
        let (c, out) = user_add_in(tmp.path(), bad, "dora-pw-long", &["--data", data]);
        assert!(!out.status.success(), "{bad} accepted:\n{}", show(&c, &out));
        assert!(text(&out.stderr).contains("invalid user name"), "{}", show(&c, &out));
    }
    let mut r = registry(&["robot", "add", "CI", "--repo", "team/*", "--data", data]);
    let out = run_fails(&mut r);
    assert!(text(&out.stderr).contains("\"ci\""), "{}", show(&r, &out));

    let (c, out) = user_add_in(tmp.path(), "dora", "short", &["--data", data]);
    assert!(!out.status.success(), "{}", show(&c, &out));
    assert!(
        text(&out.stderr).contains("password too short: use at least 8 characters"),
        "{}",
        show(&c, &out)
    );
    let list = run(&mut registry(&["user", "list", "--data", data]));
    assert!(
        text(&list.stdout).is_empty(),
        "refused accounts were added: {}",
        text(&list.stdout)
    );

    let (c, out) = user_add_in(tmp.path(), "dora.k-9", "dora-pw-long", &["--data", data]);
    assert!(out.status.success(), "{}", show(&c, &out));
}

#[test]
fn an_htpasswd_import_that_stops_says_nothing_was_imported() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let data = data.to_str().expect("utf-8");
    let hash = "$2y$05$6X9rOsZ/sYc3pU7kHzn3/.gGvpS1l7mBb1yY8u1pJmWmQHxq3xB7e";
    let file = tmp.path().join("htpasswd");
    std::fs::write(&file, format!("carol:{hash}\nDave:{hash}\n")).expect("htpasswd");
    let mut c = registry(&["user", "import-htpasswd", file.to_str().expect("utf-8"), "--data", data]);
    let out = run_fails(&mut c);
    let err = text(&out.stderr);
    assert!(
        err.contains(":2:") && err.contains("no users were imported") && err.contains("\"dave\""),
        "{}",
        show(&c, &out)
    );
    let list = run(&mut registry(&["user", "list", "--data", data]));
    assert!(text(&list.stdout).is_empty(), "{}", text(&list.stdout));

    std::fs::write(&file, format!("carol:{hash}\ndave:{hash}\n")).expect("htpasswd");
    let out = run(&mut registry(&[
        "user",
        "import-htpasswd",
        file.to_str().expect("utf-8"),
        "--data",
        data,
    ]));
    assert!(
        text(&out.stdout).starts_with("imported 2 new and 0 existing users into sqlite://"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_registry_running_open_logs_that_new_accounts_need_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let reg = start(&data);
    user_add(&data, "alice", "alice-pw-long");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let wanted = "accounts were added while this registry runs open";
    while !reg.log().contains(wanted) {
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not log {wanted:?} within 20 s:\n{}",
            reg.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(reg.log().contains("restart"), "{}", reg.log());
}
