//! The few facts about the machine the set-up needs, read without any crate: who we run as, where a
//! program lives, whether a process is alive, which port is free, and where private servers keep
//! their files.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Result, Stop};

/// Folders searched after PATH: Debian puts daemons such as `nats-server` in /usr/sbin, which is
/// not on an ordinary user's PATH.
const EXTRA_PROGRAM_DIRS: [&str; 5] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/opt/homebrew/bin",
];

/// The effective user id, from `id -u` (std has no call for it).
pub fn effective_uid() -> Option<u32> {
    let output = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// A program's path: on PATH, else in the usual system folders.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(EXTRA_PROGRAM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether `command args...` runs and succeeds, with its output discarded.
pub fn succeeds(command: &str, args: &[&str]) -> bool {
    Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Whether a process with this pid exists (`kill -0`; as root this also sees other users').
pub fn process_alive(pid: u32) -> bool {
    succeeds("kill", &["-0", &pid.to_string()])
}

/// Sends a signal by name (`INT`, `TERM`) to a process; false if it could not be delivered.
pub fn signal(pid: u32, name: &str) -> bool {
    succeeds("kill", &[&format!("-{name}"), &pid.to_string()])
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| Stop(format!("no free TCP port on 127.0.0.1: {e}")))
}

/// A user a server can run as when we are root (PostgreSQL refuses to run as root): the
/// `postgres` user that distributions' packages create, else `nobody`. Read from /etc/passwd.
pub fn unprivileged_user() -> Option<(String, u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    ["postgres", "nobody"]
        .iter()
        .find_map(|wanted| passwd_entry(&passwd, wanted))
}

/// `(name, uid, gid)` of one user in the text of /etc/passwd.
pub fn passwd_entry(passwd: &str, user: &str) -> Option<(String, u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != user {
            return None;
        }
        Some((
            user.to_string(),
            fields[2].parse().ok()?,
            fields[3].parse().ok()?,
        ))
    })
}

/// Where private servers keep their data and logs: `target/dev-services`, so `cargo clean` removes
/// them with the rest. When we are root the servers run as another user, who must be able to reach
/// that folder; if some parent folder shuts others out (a clone under /root), a folder under
/// /var/tmp named after the repository is used instead.
pub fn services_dir(repository: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository.join("target"));
    let preferred = target.join("dev-services");
    if !is_root() || others_can_reach(&target) {
        return preferred;
    }
    let tag = fnv1a(repository.to_string_lossy().as_bytes());
    PathBuf::from(format!("/var/tmp/ordersaga-dev-services-{tag:08x}"))
}

/// Whether every existing folder from the root down to `path` lets other users through.
fn others_can_reach(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .filter_map(|dir| std::fs::metadata(dir).ok())
        .all(|meta| meta.permissions().mode() & 0o001 != 0)
}

/// FNV-1a 32, only to give a repository's private folder a short stable name.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Creates a folder (and its parents) readable by others, so a server running as another user can
/// reach the folders below it.
pub fn create_reachable_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| Stop(format!("cannot create {}: {e}", dir.display())))
}

/// `(host, port)` of a `scheme://[user[:password]@]host[:port][/path][?query]` URL, for a
/// reachability check of a server the user configured.
pub fn endpoint(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Whether something accepts TCP connections at `host:port`.
pub fn answers(host: &str, port: u16) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    (host, port)
        .to_socket_addrs()
        .map(|mut addrs| {
            addrs.any(|addr| {
                TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
            })
        })
        .unwrap_or(false)
}

/// Waits until `ready()` holds for the server `child` just started, failing with the end of its
/// log when it exits first or `within` runs out.
pub fn wait_until_ready(
    child: &mut std::process::Child,
    name: &str,
    log: &Path,
    within: std::time::Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Stop(format!(
                "the private {name} exited ({status}); its log ({}) ends with:\n{}",
                log.display(),
                log_tail(log, 15)
            )));
        }
        if ready() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Stop(format!(
                "the private {name} was not ready within {} s; see {}",
                within.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops a server this command started with SIGINT, which both PostgreSQL (fast shutdown:
/// transactions roll back, the data stays consistent) and nats-server (its store flushed) take
/// as a clean stop; killed if still running after `grace`.
pub fn stop_server(mut child: std::process::Child, grace: std::time::Duration) {
    // One that already exited was reaped: its pid may belong to another process by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "INT");
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a log file, to show why a server did not start.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passwd_entry_is_found_by_name_with_its_ids() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            passwd_entry(passwd, "postgres"),
            Some(("postgres".to_string(), 101, 104))
        );
        assert_eq!(passwd_entry(passwd, "post"), None);
        assert_eq!(passwd_entry("broken:line", "broken"), None);
    }

    #[test]
    fn an_endpoint_is_read_from_urls_with_and_without_credentials_port_and_query() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/ordersaga?sslmode=disable",
                5432,
                Some(("127.0.0.1", 5432)),
            ),
            (
                "postgres://u:p%40ss@db.example:6543/x",
                5432,
                Some(("db.example", 6543)),
            ),
            ("postgresql://db/x", 5432, Some(("db", 5432))),
            ("nats://127.0.0.1:4222", 4222, Some(("127.0.0.1", 4222))),
            ("nats://[::1]:14222", 4222, Some(("::1", 14222))),
            ("nats://[::1]", 4222, Some(("::1", 4222))),
            ("postgres://host:notaport/x", 5432, None),
            ("not a url", 5432, None),
        ];
        for (url, default_port, expected) in cases {
            let expected = expected.map(|(host, port)| (host.to_string(), port));
            assert_eq!(endpoint(url, default_port), expected, "{url}");
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }
}
