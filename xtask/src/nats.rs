//! NATS for `cargo xtask run`: whether a server with JetStream answers at the default URL, and a
//! private `nats-server -js` when none does.
//!
//! A NATS server greets every connection with an `INFO {json}` line that says whether JetStream is
//! on, so the probe reads that line rather than only opening a TCP connection: ordersaga's streams
//! need JetStream, and a plain `nats-server` would pass a port check.
//!
//! The private server keeps its streams in `<services>/nats` and writes its pid and port beside
//! them, so a server an earlier command left running is found and used instead of a second one
//! opening the same store.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::postgres::Answer;
use crate::system::{self, create_reachable_dir, free_port, process_alive};
use crate::{Result, Stop, say};

/// What the server at `host:port` said: `Accepts` when its greeting shows JetStream enabled.
pub fn probe_jetstream(host: &str, port: u16) -> Answer {
    let Some(stream) = (host, port).to_socket_addrs().ok().and_then(|mut addrs| {
        addrs.find_map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
    }) else {
        return Answer::Silent;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut greeting = String::new();
    if BufReader::new(stream).read_line(&mut greeting).is_err() {
        return Answer::Refuses("it sent no greeting".into());
    }
    read_greeting(&greeting)
}

/// `INFO {...}`: JetStream is on when the JSON has `"jetstream":true`.
fn read_greeting(line: &str) -> Answer {
    let Some(info) = line.strip_prefix("INFO ") else {
        return Answer::Refuses("it does not speak NATS".into());
    };
    let compact: String = info.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("\"jetstream\":true") {
        Answer::Accepts
    } else {
        Answer::Refuses("JetStream is not enabled on it (start it with -js)".into())
    }
}

/// A `nats-server -js` of our own. Stopped on drop if we started it.
pub struct PrivateNats {
    pub port: u16,
    /// The server process when this command started it; `None` when an earlier one did.
    child: Option<Child>,
}

impl PrivateNats {
    pub fn start(services_dir: &Path, binary: &Path) -> Result<Self> {
        let files = Files::new(services_dir);
        if let Some(port) = files.running_port() {
            say(format!(
                "NATS: using the private server already running on 127.0.0.1:{port}"
            ));
            return Ok(Self { port, child: None });
        }
        create_reachable_dir(services_dir)?;
        let port = free_port()?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&files.log)
            .map_err(|e| Stop(format!("cannot write {}: {e}", files.log.display())))?;
        let stderr = log
            .try_clone()
            .map_err(|e| Stop(format!("cannot write {}: {e}", files.log.display())))?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&files.store)
            // Out of the terminal's process group, like the private PostgreSQL.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| Stop(format!("cannot start {}: {e}", binary.display())))?;
        let mut server = Self {
            port,
            child: Some(child),
        };
        if let Some(child) = server.child.as_mut() {
            let ready = || probe_jetstream("127.0.0.1", port) == Answer::Accepts;
            system::wait_until_ready(
                child,
                "nats-server",
                &files.log,
                Duration::from_secs(30),
                ready,
            )?;
        }
        files.remember(server.child.as_ref().map(Child::id), port);
        say(format!(
            "NATS: started a private nats-server -js on 127.0.0.1:{port} (store in {}, log in {})",
            files.store.display(),
            files.log.display()
        ));
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            system::stop_server(child, Duration::from_secs(15));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the private server keeps its store, log, and the `pid port` line that lets a later
/// command find it.
struct Files {
    store: PathBuf,
    log: PathBuf,
    running: PathBuf,
}

impl Files {
    fn new(services_dir: &Path) -> Self {
        Self {
            store: services_dir.join("nats"),
            log: services_dir.join("nats.log"),
            running: services_dir.join("nats.running"),
        }
    }

    fn remember(&self, pid: Option<u32>, port: u16) {
        if let Some(pid) = pid {
            let _ = std::fs::write(&self.running, format!("{pid} {port}\n"));
        }
    }

    /// The port of a server an earlier command started, if it still runs and answers.
    fn running_port(&self) -> Option<u16> {
        let text = std::fs::read_to_string(&self.running).ok()?;
        let mut fields = text.split_whitespace();
        let pid: u32 = fields.next()?.parse().ok()?;
        let port: u16 = fields.next()?.parse().ok()?;
        (process_alive(pid) && probe_jetstream("127.0.0.1", port) == Answer::Accepts)
            .then_some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_counts_only_when_it_is_nats_with_jetstream() {
        assert_eq!(
            read_greeting("INFO {\"server_id\":\"x\",\"jetstream\":true,\"max_payload\":1}\r\n"),
            Answer::Accepts
        );
        assert!(matches!(
            read_greeting("INFO {\"server_id\":\"x\",\"max_payload\":1}\r\n"),
            Answer::Refuses(reason) if reason.contains("-js")
        ));
        assert!(matches!(read_greeting("+OK\r\n"), Answer::Refuses(_)));
    }
}
