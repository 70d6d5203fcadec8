//! `berth-conformance --url URL [--user U --password P] [--namespace NS] [--only GROUP]…`
//!
//! Runs the OCI distribution-spec v1.1 checks against the registry at URL and prints one line
//! per check, then `N passed, N failed`. Exit status: 0 when nothing failed, 1 when something
//! did (or the run could not start), 2 on a usage error.

use anyhow::Result;
use berth_conformance::http::Credentials;
use berth_conformance::report::print_line;
use berth_conformance::{run, Group, Options};
use clap::Parser;
use std::process::ExitCode;

/// Black-box OCI distribution-spec v1.1 conformance checks against a registry.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Base URL of the registry, e.g. http://127.0.0.1:5000 (plain HTTP only)
    #[arg(long, env = "BERTH_CONFORMANCE_URL")]
    url: reqwest::Url,
    /// User name, for registries that challenge with Basic or token auth
    #[arg(long, env = "BERTH_CONFORMANCE_USER", requires = "password")]
    user: Option<String>,
    /// Password or token for --user
    #[arg(long, env = "BERTH_CONFORMANCE_PASSWORD", requires = "user")]
    password: Option<String>,
    /// Repositories are created under this prefix, with a per-run suffix
    #[arg(long, default_value = "conformance/test")]
    namespace: String,
    /// Run only this group of checks (repeatable)
    #[arg(long, value_enum)]
    only: Vec<Group>,
}

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors, and 0 for --help/--version.
    let args = Args::parse();
    if let Err(e) = berth_oci::validate_repository(&format!("{}/x", args.namespace)) {
        eprintln!(
            "error: --namespace {:?} is not a valid repository name prefix: {e}",
            args.namespace
        );
        return ExitCode::from(2);
    }
    // The workspace builds reqwest without TLS (every feature is paid for on a 2-core CI
    // machine); test registries are reached over plain HTTP or through a TLS-terminating proxy.
    if args.url.scheme() != "http" {
        eprintln!("error: --url must be an http:// URL: this build has no TLS support");
        return ExitCode::from(2);
    }
    match main_async(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the checks; `true` when none failed.
#[tokio::main]
async fn main_async(args: Args) -> Result<bool> {
    let credentials = match (args.user, args.password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        _ => None,
    };
    let report = run(Options {
        url: args.url,
        credentials,
        namespace: args.namespace,
        only: args.only,
    })
    .await?;
    print_line(&report.tally());
    Ok(report.failed() == 0)
}
