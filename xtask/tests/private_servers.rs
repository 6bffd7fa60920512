//! The set-up's real servers: a private PostgreSQL and a private nats-server started from the
//! installed binaries in a folder of the test's own, probed over their wire protocols, found again
//! by a second command while they run, and stopped. Fake listeners stand in only for servers that
//! refuse (one wanting a password, one without JetStream), which the machine does not run.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use xtask::nats::{PrivateNats, probe_jetstream};
use xtask::packages::postgres_bin_dir;
use xtask::postgres::{Answer, PrivatePostgres, probe};
use xtask::system::{create_reachable_dir, find_program, free_port};

/// A services folder of the test's own under the system's temp folder (reachable by the
/// unprivileged user PostgreSQL runs as when the tests run as root); removed on drop.
struct ServicesDir(PathBuf);

impl ServicesDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xtask-{name}-{}-{}",
            std::process::id(),
            free_port().unwrap()
        ));
        create_reachable_dir(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ServicesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-connection server on a free port that answers with `respond`; joined by the caller.
fn fake_server(
    respond: impl FnOnce(TcpStream) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        respond(socket);
    });
    (port, server)
}

#[test]
fn a_private_postgres_lets_postgres_in_without_a_password_is_found_again_while_it_runs_and_stops() {
    let bin_dir = postgres_bin_dir().unwrap_or_else(|| {
        panic!("PostgreSQL's server binaries are needed (apt-get install postgresql)")
    });
    let services = ServicesDir::new("pg");

    let mut first = PrivatePostgres::start(&services.0, &bin_dir).unwrap();
    assert!(first.started_here());
    assert_eq!(
        probe("127.0.0.1", first.port, "postgres", "postgres"),
        Answer::Accepts
    );
    assert!(matches!(
        probe("127.0.0.1", first.port, "postgres", "no_such_database"),
        Answer::Refuses(reason) if reason.contains("no_such_database")
    ));

    let second = PrivatePostgres::start(&services.0, &bin_dir).unwrap();
    assert!(!second.started_here(), "a second server on the same data");
    assert_eq!(second.port, first.port);
    drop(second);
    assert_eq!(
        probe("127.0.0.1", first.port, "postgres", "postgres"),
        Answer::Accepts,
        "the command that found the server running must not stop it"
    );

    first.stop();
    assert_eq!(
        probe("127.0.0.1", first.port, "postgres", "postgres"),
        Answer::Silent
    );
}

#[test]
fn a_server_that_wants_a_password_is_told_apart_from_one_that_lets_postgres_in() {
    let (port, server) = fake_server(|mut socket| {
        let mut length = [0u8; 4];
        socket.read_exact(&mut length).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(length) as usize - 4];
        socket.read_exact(&mut rest).unwrap();
        // AuthenticationSASL, as Debian's PostgreSQL answers over TCP by default.
        let _ = socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 10]);
    });
    assert_eq!(
        probe("127.0.0.1", port, "postgres", "postgres"),
        Answer::Refuses("it asks for a password".into())
    );
    server
        .join()
        .unwrap_or_else(|_| panic!("fake server panicked"));

    let closed = free_port().unwrap();
    assert_eq!(
        probe("127.0.0.1", closed, "postgres", "postgres"),
        Answer::Silent
    );
}

#[test]
fn a_private_nats_server_has_jetstream_is_found_again_while_it_runs_and_stops() {
    let binary =
        find_program("nats-server").expect("nats-server is needed (apt-get install nats-server)");
    let services = ServicesDir::new("nats");

    let mut first = PrivateNats::start(&services.0, &binary).unwrap();
    assert_eq!(probe_jetstream("127.0.0.1", first.port), Answer::Accepts);
    assert!(
        services.0.join("nats").is_dir(),
        "the store is in the services folder"
    );

    let second = PrivateNats::start(&services.0, &binary).unwrap();
    assert_eq!(second.port, first.port, "a second server on the same store");
    drop(second);
    assert_eq!(probe_jetstream("127.0.0.1", first.port), Answer::Accepts);

    first.stop();
    assert_eq!(probe_jetstream("127.0.0.1", first.port), Answer::Silent);
}

#[test]
fn a_nats_server_without_jetstream_is_refused_with_the_flag_it_lacks() {
    let (port, server) = fake_server(|mut socket| {
        let _ = socket.write_all(b"INFO {\"server_id\":\"plain\",\"max_payload\":1048576}\r\n");
    });
    assert!(matches!(
        probe_jetstream("127.0.0.1", port),
        Answer::Refuses(reason) if reason.contains("-js")
    ));
    server
        .join()
        .unwrap_or_else(|_| panic!("fake server panicked"));
}
