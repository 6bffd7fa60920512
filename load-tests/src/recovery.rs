//! The recovery scenario: place orders whose payment never finishes (`pm_fake_no_webhook`: the
//! sagas wait in PAYMENT_PROCESSING with a timer), restart the server, and measure how long until
//! it is ready and until its supervisor has re-armed a timer for every one of them; then check
//! that no order was lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use uuid::Uuid;

use crate::api::{Api, Read};
use crate::report::{LoadReport, RecoveryReport};
use crate::resources::process_gone;
use crate::run::execute;
use crate::scenario::ScenarioConfig;

/// How the server is restarted and observed.
#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    /// A shell command that restarts the server (`systemctl restart ordersaga`, a script...);
    /// the tool waits for it to exit.
    pub restart_cmd: Option<String>,
    /// With `--pid`: a shell command run after the SIGKILL to start the server again; it may
    /// keep running (the server in the foreground) and is left running.
    pub start_cmd: Option<String>,
    /// Bearer token of the admin API, for `GET /actors` (armed timers).
    pub admin_token: Option<String>,
    /// Longest wait for each phase (statuses before the restart, ready, timers re-armed).
    pub timeout: Duration,
    /// Where the restart or start command's output goes (discarded when `None`).
    pub command_log: Option<PathBuf>,
    /// Orders that can finish (cards that pay or decline) instead of orders parked waiting for
    /// a webhook: against a slow payment provider they are caught at the restart on their way
    /// (charges in flight, answers not recorded), and the run waits until every one is terminal
    /// again, placing new orders meanwhile to see whether recovery starves them.
    pub spread: bool,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        Self {
            restart_cmd: None,
            start_cmd: None,
            admin_token: None,
            timeout: Duration::from_secs(300),
            command_log: None,
            spread: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    RestartCmd,
    Kill,
    KillAndStart,
    Operator,
}

const PROBE: Duration = Duration::from_millis(50);

pub async fn run(config: &ScenarioConfig) -> anyhow::Result<LoadReport> {
    let r = &config.recovery;
    let mode = match (&r.restart_cmd, config.pid, &r.start_cmd) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            bail!("--restart-cmd restarts the server by itself: leave out --pid and --start-cmd")
        }
        (Some(_), None, None) => Mode::RestartCmd,
        (None, Some(_), Some(_)) => Mode::KillAndStart,
        (None, Some(_), None) => Mode::Kill,
        (None, None, Some(_)) => bail!("--start-cmd needs --pid: the process to kill first"),
        (None, None, None) => Mode::Operator,
    };
    let probe_api = Api::new(&config.base_url, 4)?;
    if let Some(token) = &r.admin_token {
        probe_api
            .armed_timers(token)
            .await
            .context("GET /actors with --admin-token (is ADMIN_TOKEN set on the server?)")?;
    }

    let (load, mut options) = config.resolve();
    let concurrency = load.concurrency;
    if !r.spread {
        options.payment_method = Some("pm_fake_no_webhook".into());
    }
    options.wait_for_terminal = false;
    // `--pid` is the process to kill here, not one to sample.
    options.sampling = None;
    let executed = execute(load, options).await?;
    let mut report = executed.report;
    let api = executed.api;
    let ids = executed.placed;
    report
        .invariants_checked
        .push("no order lost across the restart: every placed order still exists".into());
    let mut rec = RecoveryReport {
        restart_mode: match mode {
            Mode::RestartCmd => "restart-cmd",
            Mode::Kill => "kill-pid",
            Mode::KillAndStart => "kill-pid+start-cmd",
            Mode::Operator => "operator",
        }
        .into(),
        orders_in_flight: ids.len(),
        ..Default::default()
    };

    // Before the restart: every saga waiting for its payment (its timer armed), or with
    // `spread` past its reservation, most with their charge in flight.
    let accepted: &[&str] = if r.spread {
        &[
            "STOCK_RESERVED",
            "PAYMENT_PROCESSING",
            "COMPLETED",
            "CANCELLED",
        ]
    } else {
        &["PAYMENT_PROCESSING", "COMPLETED", "CANCELLED"]
    };
    let before = wait_for_statuses(&api, &ids, concurrency, r.timeout, accepted).await;
    rec.status_before_restart = before.by_status;
    if before.unreadable > 0 || before.lost > 0 {
        rec.notes.push(format!(
            "before the restart, {} orders could not be read and {} were not found",
            before.unreadable, before.lost
        ));
    }
    let waiting = rec
        .status_before_restart
        .get("PAYMENT_PROCESSING")
        .copied()
        .unwrap_or(0);
    if !r.spread && waiting < ids.len() as u64 {
        report.warnings.push(format!(
            "only {waiting} of {} orders were waiting for their payment at the restart ({:?}); a short PAYMENT_STEP_TIMEOUT_MS may have cancelled them",
            ids.len(),
            rec.status_before_restart
        ));
    }
    if let Some(token) = &r.admin_token {
        rec.armed_timers_before_restart = api.armed_timers(token).await.ok();
    }

    // The restart.
    let t0;
    let mut command: Option<tokio::process::Child> = None;
    let mut down_seen = false;
    match mode {
        Mode::RestartCmd => {
            let cmd = r.restart_cmd.as_deref().unwrap_or_default();
            eprintln!("recovery: running the restart command: {cmd}");
            t0 = Instant::now();
            command = Some(shell(cmd, r.command_log.as_ref())?);
        }
        Mode::Kill | Mode::KillAndStart => {
            let pid = config.pid.unwrap_or_default();
            eprintln!("recovery: SIGKILL to pid {pid}");
            t0 = Instant::now();
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await
                .context("running kill")?;
            if !status.success() {
                bail!("kill -KILL {pid} failed ({status}): is it the server's pid?");
            }
            let gone_by = Instant::now() + Duration::from_secs(10);
            while !process_gone(pid) {
                if Instant::now() > gone_by {
                    bail!("pid {pid} still runs 10 s after SIGKILL");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            down_seen = true;
            if let Some(cmd) = &r.start_cmd {
                eprintln!("recovery: starting the server: {cmd}");
                // Left running: it may be the server itself, in the foreground.
                shell(cmd, r.command_log.as_ref())?;
            } else {
                eprintln!(
                    "recovery: waiting for the server to be started again (by its supervisor)"
                );
            }
        }
        Mode::Operator => {
            eprintln!(
                "recovery: {} orders are waiting for their payment. Restart the server now; waiting up to {:?} for it to go down.",
                ids.len(),
                r.timeout
            );
            let until = Instant::now() + r.timeout;
            loop {
                if !probe_api.ready(Duration::from_secs(1)).await {
                    break;
                }
                if Instant::now() > until {
                    bail!("the server did not go down within {:?}", r.timeout);
                }
                tokio::time::sleep(PROBE).await;
            }
            t0 = Instant::now();
            down_seen = true;
            rec.notes.push(
                "operator mode: times are from the first failed /health/ready probe (50 ms polling), not from the moment the server stopped".into(),
            );
        }
    }

    // Ready: a 200 from /health/ready once the old process is known gone (seen down, or the
    // restart command finished).
    let until = t0 + r.timeout;
    let mut command_done = command.is_none() && mode != Mode::RestartCmd;
    loop {
        if let Some(child) = command.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            command = None;
            command_done = true;
            if !status.success() {
                report
                    .violations
                    .push(format!("the restart command failed: {status}"));
            }
        }
        let ready = probe_api.ready(Duration::from_secs(1)).await;
        if !ready {
            down_seen = true;
        } else if down_seen || command_done {
            rec.time_to_ready_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > until {
            break;
        }
        tokio::time::sleep(PROBE).await;
    }
    rec.server_down_observed = down_seen;
    if !down_seen {
        rec.notes.push(
            "the server was never seen down: either it restarted between two 50 ms probes, or it did not restart".into(),
        );
    }
    if let Some(mut child) = command {
        // A restart command still running after the timeout: not ours to leave behind.
        let _ = child.kill().await;
    }
    if rec.time_to_ready_s.is_none() {
        report.violations.push(format!(
            "the server was not ready within {:?} of the restart: no order could be checked",
            r.timeout
        ));
        report.recovery = Some(rec);
        return Ok(report);
    }

    // Recovered and progressing: the supervisor holds a timer for every order in flight.
    let finished_before: u64 = ["COMPLETED", "CANCELLED"]
        .iter()
        .filter_map(|s| rec.status_before_restart.get(*s))
        .sum();
    match &r.admin_token {
        // Spread orders finish (and disarm) while their timers are counted: not a measure.
        _ if r.spread => rec.notes.push(
            "timers re-armed: not measured with --spread (the orders finish meanwhile)".into(),
        ),
        None => rec
            .notes
            .push("timers re-armed: not measured (pass --admin-token to read GET /actors)".into()),
        Some(token) => {
            let target = (ids.len() as u64).saturating_sub(finished_before);
            loop {
                if let Ok(armed) = probe_api.armed_timers(token).await {
                    rec.armed_timers_after_restart = Some(armed);
                    if armed >= target {
                        rec.time_to_timers_rearmed_s = Some(t0.elapsed().as_secs_f64());
                        break;
                    }
                }
                if Instant::now() > until {
                    report.warnings.push(format!(
                        "armed timers did not reach {target} within {:?} of the restart (last seen {:?}); timers that fired in the meantime are not counted",
                        r.timeout, rec.armed_timers_after_restart
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rec.notes.push(format!(
                "timers re-armed = order_supervisor.armed_timers >= {target} (this run's orders); the count includes any other live saga of the server"
            ));
        }
    }

    // No order lost.
    let after = read_all(&api, &ids, concurrency).await;
    rec.status_after_restart = after.by_status;
    rec.lost_orders = after.lost;
    if after.lost > 0 {
        report.violations.push(format!(
            "{} of {} orders placed before the restart no longer exist",
            after.lost,
            ids.len()
        ));
    }
    if after.unreadable > 0 {
        report.violations.push(format!(
            "{} orders could not be read after the restart: not verified",
            after.unreadable
        ));
    }
    if r.spread {
        finish_spread(&api, &ids, concurrency, t0, until, &mut rec, &mut report).await;
    } else {
        rec.notes.push(
            "the orders were not waited for: they finish when their payment step times out (PAYMENT_STEP_TIMEOUT_MS)".into(),
        );
    }
    report.recovery = Some(rec);
    Ok(report)
}

/// Orders placed while the restarted server re-drives the old ones: how long their placement
/// takes shows whether recovery leaves room for new work.
const PROBES: usize = 200;

/// `spread`: places `PROBES` new orders at once (time to 202 each), then waits until every
/// order of the run is terminal, and records both.
async fn finish_spread(
    api: &Api,
    ids: &[Uuid],
    concurrency: usize,
    t0: Instant,
    until: Instant,
    rec: &mut RecoveryReport,
    report: &mut LoadReport,
) {
    let sku = format!("LT-PROBE-{}", &Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
    if let Err(e) = api.put_product(&sku, PROBES as i64).await {
        report
            .warnings
            .push(format!("no placements during recovery: {e:#}"));
    }
    let sku = &sku;
    let mut placing: Vec<f64> = futures::stream::iter(0..PROBES)
        .map(|_| async move {
            let started = Instant::now();
            match api.place(sku, 1, "pm_card_visa", None, None).await {
                crate::api::Placement::Placed(_) | crate::api::Placement::Finished(_) => {
                    Some(started.elapsed().as_secs_f64() * 1000.0)
                }
                _ => None,
            }
        })
        .buffer_unordered(PROBES)
        .filter_map(|ms| async move { ms })
        .collect()
        .await;
    placing.sort_by(f64::total_cmp);
    rec.placements_during_recovery = placing.len();
    rec.placement_p99_during_recovery_ms = placing
        .get((placing.len() * 99 / 100).min(placing.len().saturating_sub(1)))
        .copied();
    if placing.len() < PROBES {
        report.warnings.push(format!(
            "{} of {PROBES} placements during recovery were refused or failed",
            PROBES - placing.len()
        ));
    }
    loop {
        let now = read_all(api, ids, concurrency).await;
        let live: u64 = now
            .by_status
            .iter()
            .filter(|(status, _)| !matches!(status.as_str(), "COMPLETED" | "CANCELLED"))
            .map(|(_, n)| n)
            .sum();
        if live == 0 && now.lost == 0 && now.unreadable == 0 {
            rec.time_to_all_terminal_s = Some(t0.elapsed().as_secs_f64());
            rec.status_after_restart = now.by_status;
            return;
        }
        if Instant::now() > until {
            report.violations.push(format!(
                "{live} orders still live {:?} after the restart; statuses {:?}",
                until - t0,
                now.by_status
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `sh -c <cmd>` in its own process group (a Ctrl-C of the tool does not reach it).
fn shell(cmd: &str, log: Option<&PathBuf>) -> anyhow::Result<tokio::process::Child> {
    let (out, err) = match log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let copy = file.try_clone()?;
            (Stdio::from(file), Stdio::from(copy))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {cmd}"))
}

#[derive(Default)]
struct Statuses {
    by_status: BTreeMap<String, u64>,
    lost: usize,
    unreadable: usize,
}

enum Seen {
    Status(String),
    NotFound,
    Unreadable,
}

/// Reads one order, trying again on errors (a restarting server drops connections).
async fn read_one(api: &Api, id: Uuid) -> Seen {
    for attempt in 0..5 {
        match api.order(id, None).await {
            Ok(Read::Found(status)) => return Seen::Status(status.name().to_owned()),
            Ok(Read::NotFound) => return Seen::NotFound,
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await,
        }
    }
    Seen::Unreadable
}

async fn read_all(api: &Api, ids: &[Uuid], concurrency: usize) -> Statuses {
    let seen: Vec<Seen> = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { read_one(api, id).await })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut statuses = Statuses::default();
    for s in seen {
        match s {
            Seen::Status(status) => *statuses.by_status.entry(status).or_default() += 1,
            Seen::NotFound => statuses.lost += 1,
            Seen::Unreadable => statuses.unreadable += 1,
        }
    }
    statuses
}

/// Reads the orders until every one is in one of the `accepted` statuses, or `timeout` passes.
async fn wait_for_statuses(
    api: &Api,
    ids: &[Uuid],
    concurrency: usize,
    timeout: Duration,
    accepted: &[&str],
) -> Statuses {
    let until = Instant::now() + timeout;
    let mut pending: Vec<Uuid> = ids.to_vec();
    let mut settled: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let seen: Vec<(Uuid, Seen)> = futures::stream::iter(pending.iter().copied())
            .map(|id| async move { (id, read_one(api, id).await) })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut still = Vec::new();
        let mut statuses = Statuses::default();
        for (id, s) in seen {
            match s {
                Seen::Status(status) if accepted.contains(&status.as_str()) => {
                    *settled.entry(status).or_default() += 1;
                }
                Seen::Status(status) => {
                    *statuses.by_status.entry(status).or_default() += 1;
                    still.push(id);
                }
                Seen::NotFound => {
                    statuses.lost += 1;
                    still.push(id);
                }
                Seen::Unreadable => {
                    statuses.unreadable += 1;
                    still.push(id);
                }
            }
        }
        if still.is_empty() || Instant::now() > until {
            for (status, n) in settled {
                *statuses.by_status.entry(status).or_default() += n;
            }
            return statuses;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
