//! The programs the commands need and the packages that bring them, installed with the system's
//! package manager when missing.
//!
//! Only what is missing is installed, so running a command twice installs nothing the second time.
//! apt-get is used as root, or through `sudo -n` when that needs no password; Homebrew as the
//! user. Anything else (no package manager, or one we may not use) stops with the command to run.

use std::path::PathBuf;
use std::process::Command;

use crate::system::{find_program, is_root, succeeds};
use crate::{Result, Stop, say};

/// Something a command needs from the system: a package and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// PostgreSQL's server binaries (`initdb`, `postgres`), for a private server.
    PostgresServer,
    /// `nats-server` with JetStream: the tests start private ones; `run` one when none answers.
    NatsServer,
    /// `promtool` and `prometheus`: the monitoring bundle's tests run both.
    Prometheus,
}

impl Package {
    fn debian_name(self) -> &'static str {
        match self {
            Package::PostgresServer => "postgresql",
            Package::NatsServer => "nats-server",
            Package::Prometheus => "prometheus",
        }
    }

    fn homebrew_name(self) -> &'static str {
        match self {
            Package::PostgresServer => "postgresql@16",
            Package::NatsServer => "nats-server",
            Package::Prometheus => "prometheus",
        }
    }

    /// Whether what this package brings is already on the machine.
    pub fn is_present(self) -> bool {
        match self {
            Package::PostgresServer => postgres_bin_dir().is_some(),
            Package::NatsServer => find_program("nats-server").is_some(),
            Package::Prometheus => {
                find_program("promtool").is_some() && find_program("prometheus").is_some()
            }
        }
    }
}

/// The folder holding PostgreSQL's `initdb` and `postgres`: Debian keeps them per major version
/// under /usr/lib/postgresql (newest wins), other systems on PATH or in Homebrew's kegs.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut candidates = versioned_dirs("/usr/lib/postgresql", "bin");
    if let Some(initdb) = find_program("initdb") {
        candidates.extend(initdb.parent().map(PathBuf::from));
    }
    candidates.extend(versioned_dirs("/opt/homebrew/opt", "bin"));
    candidates.extend(versioned_dirs("/usr/local/opt", "bin"));
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
}

/// `<root>/<entry>/<sub>` for every entry of `root`, highest version first (`16` before `15`,
/// `postgresql@16` before `postgresql@15`).
fn versioned_dirs(root: &str, sub: &str) -> Vec<PathBuf> {
    let mut entries: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .filter_map(|path| {
                    let name = path.file_name()?.to_string_lossy().to_string();
                    let version = name.rsplit(['@', '-']).next()?.parse::<u32>().ok()?;
                    Some((version, path.join(sub)))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    entries.into_iter().map(|(_, dir)| dir).collect()
}

/// Installs whichever of `wanted` is missing, or stops with the command that would.
pub fn ensure(wanted: &[Package], why: &str) -> Result<()> {
    let missing: Vec<Package> = wanted
        .iter()
        .copied()
        .filter(|package| !package.is_present())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if find_program("apt-get").is_some() {
        install_with_apt(&missing, why)
    } else if find_program("brew").is_some() {
        install_with_homebrew(&missing, why)
    } else {
        Err(Stop(format!(
            "{why} needs {} and this machine has neither apt-get nor Homebrew: install them with \
             your package manager (or start the servers with `docker compose up -d postgres nats` \
             and set DATABASE_URL and NATS_URL), then run this command again",
            names(&missing, Package::debian_name)
        )))
    }
}

fn install_with_apt(missing: &[Package], why: &str) -> Result<()> {
    let list = names(missing, Package::debian_name);
    let through_sudo = if is_root() {
        false
    } else if succeeds("sudo", &["-n", "true"]) {
        true
    } else {
        return Err(Stop(format!(
            "{why} needs {list}: run `sudo apt-get install -y {list}`, then this command again"
        )));
    };
    say(format!("installing {list} with apt-get ({why})"));
    let install = || {
        apt_get(
            through_sudo,
            &["install", "-y", "--no-install-recommends"],
            missing,
        )
    };
    if install() || (apt_get(through_sudo, &["update"], &[]) && install()) {
        return Ok(());
    }
    Err(Stop(format!(
        "apt-get could not install {list}: run `sudo apt-get update && sudo apt-get install -y \
         {list}` to see why, then this command again"
    )))
}

/// Runs apt-get non-interactively (as root, or through `sudo -n env ...`, since sudo drops the
/// environment).
fn apt_get(through_sudo: bool, args: &[&str], packages: &[Package]) -> bool {
    let mut command = if through_sudo {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        sudo
    } else {
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive");
        apt
    };
    command
        .args(args)
        .args(packages.iter().map(|package| package.debian_name()))
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn install_with_homebrew(missing: &[Package], why: &str) -> Result<()> {
    let list = names(missing, Package::homebrew_name);
    say(format!("installing {list} with Homebrew ({why})"));
    let installed = Command::new("brew")
        .arg("install")
        .args(missing.iter().map(|package| package.homebrew_name()))
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if installed {
        Ok(())
    } else {
        Err(Stop(format!(
            "Homebrew could not install {list}: run `brew install {list}` to see why, then this \
             command again"
        )))
    }
}

fn names(packages: &[Package], name: fn(Package) -> &'static str) -> String {
    packages
        .iter()
        .map(|package| name(*package))
        .collect::<Vec<_>>()
        .join(" ")
}
