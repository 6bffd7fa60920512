//! `cargo xtask run` and `cargo xtask test`: set up, then hand over to cargo.
//!
//! Both decide the same way for each server: a URL the user set is used as it is (and must
//! answer); with none set, the default server is used when it lets user `postgres` in without a
//! password (or, for NATS, has JetStream on); otherwise a private server is started from the
//! installed binaries, after installing them if needed, and stopped when the command ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::nats::{PrivateNats, probe_jetstream};
use crate::packages::{self, Package, postgres_bin_dir};
use crate::postgres::{Answer, PrivatePostgres, probe};
use crate::system::{answers, endpoint, find_program, services_dir, signal};
use crate::{Result, Stop, say};

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_NATS_PORT: u16 = 4222;

/// Where a command's database comes from.
enum Database {
    /// The URL the user set, or the default server, which answered: nothing to pass on.
    AsConfigured,
    /// A private server must be started.
    Private,
}

/// `cargo xtask test [args]`: every test of the workspace, `cargo test --workspace [args]`.
pub fn test(repository: &Path, args: &[String]) -> Result<ExitCode> {
    let database = choose_database("TEST_DATABASE_URL")?;
    // The suite itself needs `nats-server` (private servers per test), promtool and prometheus
    // (the monitoring bundle's tests) and PostgreSQL's server binaries (xtask's own tests start a
    // private server), whichever database it runs against.
    packages::ensure(
        &[
            Package::NatsServer,
            Package::Prometheus,
            Package::PostgresServer,
        ],
        "the test suite",
    )?;
    let services = services_dir(repository);
    let private = match database {
        Database::AsConfigured => None,
        Database::Private => Some(PrivatePostgres::start(&services, &postgres_bin()?)?),
    };
    let mut cargo = cargo();
    cargo.current_dir(repository).arg("test").arg("--workspace");
    cargo.args(args);
    if let Some(server) = &private {
        cargo.env("TEST_DATABASE_URL", server.url("postgres"));
    }
    if std::env::var_os("NATS_SERVER_BIN").is_none()
        && let Some(nats) = find_program("nats-server")
    {
        cargo.env("NATS_SERVER_BIN", nats);
    }
    say("running `cargo test --workspace` (the first build takes about five minutes on two cores)");
    let outcome = run_and_count(&mut cargo);
    drop(private);
    outcome
}

/// `cargo xtask run [args]`: the whole system, `cargo run --release -- serve [args]`.
pub fn run(repository: &Path, args: &[String]) -> Result<ExitCode> {
    let database = choose_database("DATABASE_URL")?;
    let nats_private = nats_needs_private()?;
    let mut wanted = Vec::new();
    if matches!(database, Database::Private) {
        wanted.push(Package::PostgresServer);
    }
    if nats_private {
        wanted.push(Package::NatsServer);
    }
    packages::ensure(&wanted, "`cargo xtask run`")?;
    let services = services_dir(repository);
    let postgres = match database {
        Database::AsConfigured => None,
        Database::Private => Some(PrivatePostgres::start(&services, &postgres_bin()?)?),
    };
    let nats = if nats_private {
        let binary = find_program("nats-server")
            .ok_or_else(|| Stop("nats-server is still missing after installing it".into()))?;
        Some(PrivateNats::start(&services, &binary)?)
    } else {
        None
    };
    let mut cargo = cargo();
    cargo
        .current_dir(repository)
        .args(["run", "--release", "--bin", "ordersaga", "--", "serve"])
        .args(args);
    if let Some(server) = &postgres {
        cargo.env("DATABASE_URL", server.url("ordersaga"));
    }
    if let Some(server) = &nats {
        cargo.env("NATS_URL", server.url());
    }
    say(
        "starting `ordersaga serve` (the first release build takes about five minutes on two cores); Ctrl-C stops it and the servers started here",
    );
    let terminate = survive_signals();
    let mut child = cargo
        .spawn()
        .map_err(|e| Stop(format!("cannot run cargo: {e}")))?;
    let status = wait_forwarding_termination(&mut child, &terminate);
    // The servers stop after the program that used them has shut down cleanly.
    drop(nats);
    drop(postgres);
    Ok(exit_code(status))
}

/// Keeps this command alive through Ctrl-C and SIGTERM, so that it can stop its private servers
/// after the program they serve (the servers run in process groups of their own, out of the
/// terminal's reach). Returns the flag SIGTERM raises, to pass it on to the child.
fn survive_signals() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let terminate = Arc::new(AtomicBool::new(false));
    // Ctrl-C reaches the whole foreground process group, so the child has it already.
    let _ = signal_hook::flag::register(SIGINT, Arc::new(AtomicBool::new(false)));
    let _ = signal_hook::flag::register(SIGTERM, terminate.clone());
    terminate
}

/// Waits for `child`, sending it SIGTERM once if this process gets one; its exit code.
fn wait_forwarding_termination(child: &mut Child, terminate: &AtomicBool) -> Option<i32> {
    let mut forwarded = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) => {}
            Err(_) => return None,
        }
        if !forwarded && terminate.load(Ordering::Relaxed) {
            forwarded = signal(child.id(), "TERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Decides where the database comes from, from the URL in `variable` if the user set one.
fn choose_database(variable: &str) -> Result<Database> {
    if let Some(url) = configured(variable) {
        let (host, port) = endpoint(&url, DEFAULT_PG_PORT)
            .ok_or_else(|| Stop(format!("{variable} is not a postgres:// URL")))?;
        if !answers(&host, port) {
            return Err(Stop(format!(
                "{variable} points at {host}:{port}, where no PostgreSQL answers: start it, or \
                 unset {variable} to use a private server"
            )));
        }
        say(format!("PostgreSQL: using {variable} ({host}:{port})"));
        return Ok(Database::AsConfigured);
    }
    match probe(DEFAULT_HOST, DEFAULT_PG_PORT, "postgres", "postgres") {
        Answer::Accepts => {
            say("PostgreSQL: using the server on 127.0.0.1:5432");
            Ok(Database::AsConfigured)
        }
        Answer::Refuses(why) => {
            say(format!(
                "PostgreSQL on 127.0.0.1:5432 does not let user postgres in without a password ({why}): starting a private server"
            ));
            Ok(Database::Private)
        }
        Answer::Silent => {
            say("PostgreSQL: nothing answers on 127.0.0.1:5432: starting a private server");
            Ok(Database::Private)
        }
    }
}

/// Whether `run` must start its own NATS: only when NATS_URL is unset and the default server is
/// missing or has no JetStream.
fn nats_needs_private() -> Result<bool> {
    if let Some(url) = configured("NATS_URL") {
        let (host, port) = endpoint(&url, DEFAULT_NATS_PORT)
            .ok_or_else(|| Stop("NATS_URL is not a nats:// URL".into()))?;
        return match probe_jetstream(&host, port) {
            Answer::Accepts => {
                say(format!("NATS: using NATS_URL ({host}:{port})"));
                Ok(false)
            }
            Answer::Refuses(why) => Err(Stop(format!(
                "NATS_URL points at {host}:{port}, which cannot serve ordersaga: {why}"
            ))),
            Answer::Silent => Err(Stop(format!(
                "NATS_URL points at {host}:{port}, where no NATS answers: start it, or unset \
                 NATS_URL to use a private server"
            ))),
        };
    }
    match probe_jetstream(DEFAULT_HOST, DEFAULT_NATS_PORT) {
        Answer::Accepts => {
            say("NATS: using the server on 127.0.0.1:4222");
            Ok(false)
        }
        Answer::Refuses(why) => {
            say(format!(
                "NATS on 127.0.0.1:4222 cannot serve ordersaga ({why}): starting a private server"
            ));
            Ok(true)
        }
        Answer::Silent => {
            say("NATS: nothing answers on 127.0.0.1:4222: starting a private server");
            Ok(true)
        }
    }
}

fn configured(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn postgres_bin() -> Result<PathBuf> {
    postgres_bin_dir()
        .ok_or_else(|| Stop("PostgreSQL's server binaries are still missing after installing them: set DATABASE_URL to a server of yours".into()))
}

/// The cargo that runs us (cargo sets CARGO for the programs it runs), else the one on PATH.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cargo test`, passing its output through, and closes with one line of totals over every
/// test binary (cargo's own last line belongs to the last crate's doc-tests).
fn run_and_count(cargo: &mut Command) -> Result<ExitCode> {
    let terminate = survive_signals();
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Stop(format!("cannot run cargo: {e}")))?;
    let pid = child.id();
    std::thread::spawn(move || {
        while !terminate.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        signal(pid, "TERM");
    });
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            totals.add(&line);
            let _ = writeln!(out, "{line}");
        }
    }
    let status = child
        .wait()
        .map_err(|e| Stop(format!("cargo test did not finish: {e}")))?;
    println!();
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(exit_code(status.code()))
}

fn exit_code(code: Option<i32>) -> ExitCode {
    match code {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// Sums of libtest's `test result: ok. N passed; M failed; ...` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
}

impl Totals {
    pub fn add(&mut self, line: &str) {
        let Some(result) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in result.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(count), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_test_binarys_result_line_and_nothing_else() {
        let mut totals = Totals::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "this line says 5 passed but is not a result",
        ] {
            totals.add(line);
        }
        assert_eq!(
            totals,
            Totals {
                passed: 13,
                failed: 2
            }
        );
    }
}
