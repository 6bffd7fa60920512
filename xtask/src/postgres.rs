//! PostgreSQL for the developer commands: whether a server already answers as the default URL
//! expects (user `postgres`, no password), and a private server started from the installed binaries
//! when none does.
//!
//! The probe speaks the first step of PostgreSQL's wire protocol instead of only opening a TCP
//! connection, because the common failure on a fresh machine is a server that listens but wants a
//! password (Debian's package does, for TCP connections), which a port check would take for success.
//!
//! The private server keeps its data in the services folder, so orders placed with `cargo xtask
//! run` are still there next time. It listens on a free loopback port and no Unix socket (whose
//! path length is limited and whose default folder needs root), trusts local connections, and runs
//! as an unprivileged user when we are root, since PostgreSQL refuses to run as root. A server left
//! running by an earlier command (one killed before it could stop it) is found through its
//! `postmaster.pid` and used as it is.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::system::{self, create_reachable_dir, free_port, log_tail, process_alive};
use crate::{Result, Stop, say};

/// What a server said to a connection as user `postgres` without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It let the user in.
    Accepts,
    /// It listens but refused, for the reason given (a password is wanted, no such role, ...).
    Refuses(String),
    /// Nothing listens there.
    Silent,
}

const PROTOCOL_3_0: u32 = 196_608;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the server at `host:port` to let `user` into `database` without a password.
pub fn probe(host: &str, port: u16, user: &str, database: &str) -> Answer {
    let Some(mut stream) = connect(host, port) else {
        return Answer::Silent;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    if stream.write_all(&startup_message(user, database)).is_err() {
        return Answer::Refuses("the connection closed at once".into());
    }
    let answer = read_answer(&mut stream);
    if answer == Answer::Accepts {
        // Terminate, so the server logs an orderly goodbye rather than a lost connection.
        let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
    }
    answer
}

fn connect(host: &str, port: u16) -> Option<TcpStream> {
    (host, port)
        .to_socket_addrs()
        .ok()?
        .find_map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
}

/// A protocol 3.0 StartupMessage: length, version, then `name\0value\0` pairs and a final `\0`.
fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut parameters = Vec::new();
    for (name, value) in [("user", user), ("database", database)] {
        parameters.extend_from_slice(name.as_bytes());
        parameters.push(0);
        parameters.extend_from_slice(value.as_bytes());
        parameters.push(0);
    }
    parameters.push(0);
    let length = (8 + parameters.len()) as u32;
    let mut message = Vec::with_capacity(length as usize);
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    message.extend_from_slice(&parameters);
    message
}

/// Reads the server's messages up to ReadyForQuery (`Z`): the user is in. On the way, `R` with
/// code 0 is AuthenticationOk and any other code asks for a password; `E` is an error (after
/// AuthenticationOk too: a missing database is reported only then) whose `M` field says why.
fn read_answer(stream: &mut impl Read) -> Answer {
    loop {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).is_err() {
            return Answer::Refuses("the server closed the connection without answering".into());
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4).min(64 * 1024)];
        if stream.read_exact(&mut body).is_err() {
            return Answer::Refuses("the server's answer was cut short".into());
        }
        match header[0] {
            b'Z' => return Answer::Accepts,
            b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => continue,
            b'R' => return Answer::Refuses("it asks for a password".into()),
            b'E' => return Answer::Refuses(error_message(&body)),
            // ParameterStatus, BackendKeyData, NoticeResponse, NegotiateProtocolVersion.
            b'S' | b'K' | b'N' | b'v' => continue,
            other => {
                return Answer::Refuses(format!(
                    "it answered with an unexpected message {:?}",
                    char::from(other)
                ));
            }
        }
    }
}

/// The `M` (message) field of an ErrorResponse: `<code><text>\0` fields ended by `\0`.
fn error_message(body: &[u8]) -> String {
    body.split(|byte| *byte == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|text| String::from_utf8_lossy(text).into_owned())
        .unwrap_or_else(|| "it refused the connection".into())
}

/// A PostgreSQL server of our own, in `<services>/postgres`. Stopped on drop if we started it.
pub struct PrivatePostgres {
    pub port: u16,
    pub data_dir: PathBuf,
    /// The server process when this command started it; `None` when an earlier one did.
    child: Option<Child>,
}

impl PrivatePostgres {
    /// Starts the private server (creating its data folder the first time), or finds the one an
    /// earlier command left running.
    pub fn start(services_dir: &Path, bin_dir: &Path) -> Result<Self> {
        let data_dir = services_dir.join("postgres");
        if let Some(port) = running_port(&data_dir) {
            say(format!(
                "PostgreSQL: using the private server already running on 127.0.0.1:{port} ({})",
                data_dir.display()
            ));
            return Ok(Self {
                port,
                data_dir,
                child: None,
            });
        }
        create_reachable_dir(services_dir)?;
        let owner = if system::is_root() {
            Some(system::unprivileged_user().ok_or_else(|| {
                Stop("PostgreSQL cannot run as root and this machine has neither a `postgres` nor a `nobody` user: set DATABASE_URL to a server of yours".into())
            })?)
        } else {
            None
        };
        if !data_dir.join("PG_VERSION").is_file() {
            init_data_dir(&data_dir, bin_dir, owner.as_ref(), services_dir)?;
        }
        let port = free_port()?;
        let log = services_dir.join("postgres.log");
        let child = spawn_server(&data_dir, bin_dir, owner.as_ref(), port, &log)?;
        let mut server = Self {
            port,
            data_dir,
            child: Some(child),
        };
        if let Some(child) = server.child.as_mut() {
            let data_dir = &server.data_dir;
            let ready = || {
                running_port(data_dir) == Some(port)
                    && probe("127.0.0.1", port, "postgres", "postgres") == Answer::Accepts
            };
            system::wait_until_ready(
                child,
                "PostgreSQL server",
                &log,
                Duration::from_secs(60),
                ready,
            )?;
        }
        say(format!(
            "PostgreSQL: started a private server on 127.0.0.1:{port} (data in {}, log in {})",
            server.data_dir.display(),
            log.display()
        ));
        Ok(server)
    }

    /// A connection URL for `database` as user `postgres` (no `sslmode`: the server offers no
    /// TLS, and the test helpers append database names to this URL's path).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Whether this command started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            system::stop_server(child, Duration::from_secs(30));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port of a server running on `data_dir` and ready, from its `postmaster.pid`: line 1 is the
/// pid, line 4 the port, line 8 the status (`ready` once it accepts connections).
pub fn running_port(data_dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let pid: u32 = lines.first()?.parse().ok()?;
    let port: u16 = lines.get(3)?.parse().ok()?;
    (lines.get(7) == Some(&"ready") && process_alive(pid)).then_some(port)
}

/// `initdb` with trust authentication for local connections and a superuser named `postgres`, as
/// the server's future owner.
fn init_data_dir(
    data_dir: &Path,
    bin_dir: &Path,
    owner: Option<&(String, u32, u32)>,
    services_dir: &Path,
) -> Result<()> {
    say(format!(
        "PostgreSQL: creating a private server's data folder in {}",
        data_dir.display()
    ));
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Stop(format!("cannot create {}: {e}", data_dir.display())))?;
    if let Some((name, uid, gid)) = owner {
        std::os::unix::fs::chown(data_dir, Some(*uid), Some(*gid)).map_err(|e| {
            Stop(format!(
                "cannot give {} to user {name}: {e}",
                data_dir.display()
            ))
        })?;
    }
    let log = services_dir.join("initdb.log");
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb.arg("-D").arg(data_dir).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-locale",
        "-E",
        "UTF8",
    ]);
    run_as(&mut initdb, owner);
    let status = initdb
        .stdin(Stdio::null())
        .stdout(log_file(&log)?)
        .stderr(log_file(&log)?)
        .status()
        .map_err(|e| Stop(format!("cannot run initdb: {e}")))?;
    if status.success() {
        return Ok(());
    }
    // A half-made data folder would stop the next try; initdb leaves none behind on failure, but
    // make sure.
    let _ = std::fs::remove_dir_all(data_dir);
    Err(Stop(format!(
        "initdb failed ({status}); its output ({}) ends with:\n{}",
        log.display(),
        log_tail(&log, 15)
    )))
}

fn spawn_server(
    data_dir: &Path,
    bin_dir: &Path,
    owner: Option<&(String, u32, u32)>,
    port: u16,
    log: &Path,
) -> Result<Child> {
    let mut postgres = Command::new(bin_dir.join("postgres"));
    postgres
        .arg("-D")
        .arg(data_dir)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k", ""])
        // The test suite opens a pool per test database, many tests at a time.
        .args(["-c", "max_connections=200"]);
    run_as(&mut postgres, owner);
    postgres
        // Out of the terminal's process group: Ctrl-C stops the program first, then this
        // command stops the server (see commands.rs).
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log_file(log)?)
        .stderr(log_file(log)?)
        .spawn()
        .map_err(|e| {
            Stop(format!(
                "cannot start {}: {e}",
                bin_dir.join("postgres").display()
            ))
        })
}

fn run_as(command: &mut Command, owner: Option<&(String, u32, u32)>) {
    if let Some((_, uid, gid)) = owner {
        command.uid(*uid).gid(*gid);
    }
}

fn log_file(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Stop(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_message_carries_its_length_the_version_and_the_parameters() {
        let message = startup_message("postgres", "db");
        assert_eq!(&message[..4], &(message.len() as u32).to_be_bytes());
        assert_eq!(&message[4..8], &PROTOCOL_3_0.to_be_bytes());
        assert_eq!(&message[8..], b"user\0postgres\0database\0db\0\0");
    }

    #[test]
    fn answers_are_read_as_accepted_password_wanted_or_refused_with_the_servers_reason() {
        let auth = |code: u32| {
            let mut bytes = vec![b'R', 0, 0, 0, 8];
            bytes.extend_from_slice(&code.to_be_bytes());
            bytes
        };
        let ready = [b'Z', 0, 0, 0, 5, b'I'];
        let accepted = [
            auth(0),
            vec![b'S', 0, 0, 0, 8, b'a', 0, b'b', 0],
            ready.to_vec(),
        ]
        .concat();
        assert_eq!(read_answer(&mut &accepted[..]), Answer::Accepts);
        assert_eq!(
            read_answer(&mut &auth(10)[..]),
            Answer::Refuses("it asks for a password".into())
        );
        let fields = b"SFATAL\0C28000\0Mno pg_hba.conf entry\0\0";
        let mut error = vec![b'E'];
        error.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        error.extend_from_slice(fields);
        assert_eq!(
            read_answer(&mut &error[..]),
            Answer::Refuses("no pg_hba.conf entry".into())
        );
        let after_auth = [auth(0), error.clone()].concat();
        assert_eq!(
            read_answer(&mut &after_auth[..]),
            Answer::Refuses("no pg_hba.conf entry".into()),
            "a missing database is reported after AuthenticationOk"
        );
        assert!(matches!(read_answer(&mut &auth(0)[..]), Answer::Refuses(_)));
        assert!(matches!(read_answer(&mut &b"R\0"[..]), Answer::Refuses(_)));
    }

    #[test]
    fn a_postmaster_pid_file_that_is_not_ready_or_whose_process_is_gone_gives_no_port() {
        let dir = std::env::temp_dir().join(format!("xtask-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let own = std::process::id();
        let write = |pid: u32, status: &str| {
            let text = format!("{pid}\n/data\n1700000000\n54321\n\n127.0.0.1\n  1 2\n{status}\n");
            std::fs::write(dir.join("postmaster.pid"), text).unwrap_or_else(|e| panic!("{e}"));
        };
        write(own, "ready");
        assert_eq!(running_port(&dir), Some(54321));
        write(own, "starting");
        assert_eq!(running_port(&dir), None);
        write(99_999_999, "ready");
        assert_eq!(running_port(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
