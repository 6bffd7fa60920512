//! ordersaga's developer commands as a library, so that their pieces (finding and installing
//! programs, probing and starting private PostgreSQL and NATS servers) are tested like any other
//! code. `main.rs` only parses the command line.
//!
//! The two commands a newcomer runs on a fresh machine are `cargo xtask run` (the whole system)
//! and `cargo xtask test` (every test). Each first makes sure what it needs is there: it uses the
//! servers the default URLs point at when they answer, starts private ones from the installed
//! binaries when they do not, and installs missing packages with the system's package manager.
//! When it cannot, it stops with one sentence that says what to run.

pub mod commands;
pub mod nats;
pub mod packages;
pub mod postgres;
pub mod system;

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a command stopped: one sentence for the person at the terminal, saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop(pub String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

pub type Result<T, E = Stop> = std::result::Result<T, E>;

/// The repository's root: the parent of this crate's folder.
pub fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Prints a progress line of the set-up, prefixed so it stands apart from cargo's own output.
pub fn say(line: impl fmt::Display) {
    eprintln!("xtask: {line}");
}
