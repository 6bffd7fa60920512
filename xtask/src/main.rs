//! `cargo xtask <command>`: the two commands a newcomer needs, each doing its own set-up.
//!
//! Why an xtask rather than a Makefile or a shell script: it needs nothing but cargo, which the
//! project needs anyway (a fresh machine may have no `make`), it runs the same on any Unix shell,
//! and its set-up logic is Rust that the test suite checks like the rest of the code.

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [args...]

  run  [serve flags]   the whole system: `cargo run --release -- serve`, after making sure
                       PostgreSQL and NATS with JetStream answer (private servers from the
                       installed binaries when the default ones do not; DATABASE_URL and
                       NATS_URL, when set, are used as they are)
  test [cargo flags]   every test: `cargo test --workspace`, after installing what the suite
                       needs (nats-server, prometheus, PostgreSQL's server) and making sure a
                       PostgreSQL answers (TEST_DATABASE_URL, else the default, else a private one)

Missing packages are installed with apt-get (as root or through `sudo -n`) or Homebrew.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let repository = xtask::repository_root();
    let outcome = match args.split_first() {
        Some((command, rest)) if command == "run" => xtask::commands::run(&repository, rest),
        Some((command, rest)) if command == "test" => xtask::commands::test(&repository, rest),
        Some((command, _)) if command == "help" || command == "--help" || command == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(code) => code,
        Err(stop) => {
            eprintln!("xtask: {stop}");
            ExitCode::FAILURE
        }
    }
}
