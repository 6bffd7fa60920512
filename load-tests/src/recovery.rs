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

use crate::api::{Api, Placement, Read};
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

/// How the server is restarted, from the flags given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    RestartCmd,
    Kill,
    KillAndStart,
    Operator,
}

impl Mode {
    /// The mode the flags ask for, or why they do not fit together.
    fn of(config: &ScenarioConfig) -> anyhow::Result<Self> {
        let r = &config.recovery;
        Ok(match (&r.restart_cmd, config.pid, &r.start_cmd) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                bail!(
                    "--restart-cmd restarts the server by itself: leave out --pid and --start-cmd"
                )
            }
            (Some(_), None, None) => Mode::RestartCmd,
            (None, Some(_), Some(_)) => Mode::KillAndStart,
            (None, Some(_), None) => Mode::Kill,
            (None, None, Some(_)) => bail!("--start-cmd needs --pid: the process to kill first"),
            (None, None, None) => Mode::Operator,
        })
    }

    /// The name the report gives the mode.
    fn name(self) -> &'static str {
        match self {
            Mode::RestartCmd => "restart-cmd",
            Mode::Kill => "kill-pid",
            Mode::KillAndStart => "kill-pid+start-cmd",
            Mode::Operator => "operator",
        }
    }
}

const PROBE: Duration = Duration::from_millis(50);

/// Runs the recovery scenario: place, restart, wait for ready and re-armed timers, check.
pub async fn run(config: &ScenarioConfig) -> anyhow::Result<LoadReport> {
    let mode = Mode::of(config)?;
    let probe = Api::new(&config.base_url, 4)?;
    if let Some(token) = &config.recovery.admin_token {
        probe
            .armed_timers(token)
            .await
            .context("GET /actors with --admin-token (is ADMIN_TOKEN set on the server?)")?;
    }
    let mut run = Recovery::place_orders(config, mode, probe).await?;
    run.record_before_restart().await;
    let restart = run.restart().await?;
    let (t0, until) = (restart.t0, restart.t0 + run.options.timeout);
    if !run.wait_until_ready(restart).await {
        run.report.violations.push(format!(
            "the server was not ready within {:?} of the restart: no order could be checked",
            run.options.timeout
        ));
        return Ok(run.finish());
    }
    run.wait_for_timers(t0, until).await;
    run.check_none_lost().await;
    if run.options.spread {
        run.finish_spread(t0, until).await;
    } else {
        run.rec.notes.push(
            "the orders were not waited for: they finish when their payment step times out (PAYMENT_STEP_TIMEOUT_MS)".into(),
        );
    }
    Ok(run.finish())
}

/// What the phases of one recovery run share: how the server is restarted and reached, the
/// orders in flight, and the report being filled in.
struct Recovery<'a> {
    options: &'a RecoveryOptions,
    pid: Option<u32>,
    mode: Mode,
    /// Probes readiness and timers on a small pool of its own.
    probe: Api,
    /// The load run's client, to read its orders.
    api: Api,
    ids: Vec<Uuid>,
    concurrency: usize,
    report: LoadReport,
    rec: RecoveryReport,
}

/// The restart as begun: from when it is timed, the restart command while it runs, and whether
/// the old server was already seen gone.
struct Restart {
    t0: Instant,
    command: Option<tokio::process::Child>,
    down_seen: bool,
}

impl<'a> Recovery<'a> {
    /// Places the scenario's orders without waiting for them: they are what the restart catches.
    async fn place_orders(
        config: &'a ScenarioConfig,
        mode: Mode,
        probe: Api,
    ) -> anyhow::Result<Self> {
        let options = &config.recovery;
        let (load, mut run_options) = config.resolve();
        let concurrency = load.concurrency;
        if !options.spread {
            run_options.payment_method = Some("pm_fake_no_webhook".into());
        }
        run_options.wait_for_terminal = false;
        // `--pid` is the process to kill here, not one to sample.
        run_options.sampling = None;
        let executed = execute(load, run_options).await?;
        let mut report = executed.report;
        report
            .invariants_checked
            .push("no order lost across the restart: every placed order still exists".into());
        let rec = RecoveryReport {
            restart_mode: mode.name().into(),
            orders_in_flight: executed.placed.len(),
            ..Default::default()
        };
        Ok(Self {
            options,
            pid: config.pid,
            mode,
            probe,
            api: executed.api,
            ids: executed.placed,
            concurrency,
            report,
            rec,
        })
    }

    /// Waits until every saga awaits its payment (with `spread`: is past its reservation).
    async fn record_before_restart(&mut self) {
        let r = self.options;
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
        let before =
            wait_for_statuses(&self.api, &self.ids, self.concurrency, r.timeout, accepted).await;
        self.rec.status_before_restart = before.by_status;
        if before.unreadable > 0 || before.lost > 0 {
            self.rec.notes.push(format!(
                "before the restart, {} orders could not be read and {} were not found",
                before.unreadable, before.lost
            ));
        }
        let waiting = self
            .rec
            .status_before_restart
            .get("PAYMENT_PROCESSING")
            .copied()
            .unwrap_or(0);
        if !r.spread && waiting < self.ids.len() as u64 {
            self.report.warnings.push(format!(
                "only {waiting} of {} orders were waiting for their payment at the restart ({:?}); a short PAYMENT_STEP_TIMEOUT_MS may have cancelled them",
                self.ids.len(),
                self.rec.status_before_restart
            ));
        }
        if let Some(token) = &r.admin_token {
            self.rec.armed_timers_before_restart = self.api.armed_timers(token).await.ok();
        }
    }

    /// Begins the restart the mode asks for.
    async fn restart(&mut self) -> anyhow::Result<Restart> {
        match self.mode {
            Mode::RestartCmd => {
                let cmd = self.options.restart_cmd.as_deref().unwrap_or_default();
                eprintln!("recovery: running the restart command: {cmd}");
                let t0 = Instant::now();
                let command = Some(shell(cmd, self.options.command_log.as_ref())?);
                Ok(Restart {
                    t0,
                    command,
                    down_seen: false,
                })
            }
            Mode::Kill | Mode::KillAndStart => self.kill_and_start().await,
            Mode::Operator => self.wait_for_operator().await,
        }
    }

    /// SIGKILLs `--pid` and, once it is gone, starts the server unless a supervisor will.
    async fn kill_and_start(&self) -> anyhow::Result<Restart> {
        let pid = self.pid.unwrap_or_default();
        eprintln!("recovery: SIGKILL to pid {pid}");
        let t0 = Instant::now();
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
        if let Some(cmd) = &self.options.start_cmd {
            eprintln!("recovery: starting the server: {cmd}");
            // Left running: it may be the server itself, in the foreground.
            shell(cmd, self.options.command_log.as_ref())?;
        } else {
            eprintln!("recovery: waiting for the server to be started again (by its supervisor)");
        }
        Ok(Restart {
            t0,
            command: None,
            down_seen: true,
        })
    }

    /// Operator mode: asks for a restart and times it from the first failed readiness probe.
    async fn wait_for_operator(&mut self) -> anyhow::Result<Restart> {
        let r = self.options;
        eprintln!(
            "recovery: {} orders are waiting for their payment. Restart the server now; waiting up to {:?} for it to go down.",
            self.ids.len(),
            r.timeout
        );
        let until = Instant::now() + r.timeout;
        loop {
            if !self.probe.ready(Duration::from_secs(1)).await {
                break;
            }
            if Instant::now() > until {
                bail!("the server did not go down within {:?}", r.timeout);
            }
            tokio::time::sleep(PROBE).await;
        }
        let t0 = Instant::now();
        self.rec.notes.push(
            "operator mode: times are from the first failed /health/ready probe (50 ms polling), not from the moment the server stopped".into(),
        );
        Ok(Restart {
            t0,
            command: None,
            down_seen: true,
        })
    }

    /// Whether /health/ready answered 200 in time, once the old process was known gone.
    async fn wait_until_ready(&mut self, restart: Restart) -> bool {
        let Restart {
            t0,
            mut command,
            mut down_seen,
        } = restart;
        let until = t0 + self.options.timeout;
        let mut command_done = command.is_none() && self.mode != Mode::RestartCmd;
        loop {
            if let Some(child) = command.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                command = None;
                command_done = true;
                if !status.success() {
                    self.report
                        .violations
                        .push(format!("the restart command failed: {status}"));
                }
            }
            let ready = self.probe.ready(Duration::from_secs(1)).await;
            if !ready {
                down_seen = true;
            } else if down_seen || command_done {
                self.rec.time_to_ready_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > until {
                break;
            }
            tokio::time::sleep(PROBE).await;
        }
        self.rec.server_down_observed = down_seen;
        if !down_seen {
            self.rec.notes.push(
                "the server was never seen down: either it restarted between two 50 ms probes, or it did not restart".into(),
            );
        }
        if let Some(mut child) = command {
            // A restart command still running after the timeout: not ours to leave behind.
            let _ = child.kill().await;
        }
        self.rec.time_to_ready_s.is_some()
    }

    /// Recovered and progressing: the supervisor holds a timer for every order in flight.
    async fn wait_for_timers(&mut self, t0: Instant, until: Instant) {
        match &self.options.admin_token {
            // Spread orders finish (and disarm) while their timers are counted: not a measure.
            _ if self.options.spread => self.rec.notes.push(
                "timers re-armed: not measured with --spread (the orders finish meanwhile)".into(),
            ),
            None => self.rec.notes.push(
                "timers re-armed: not measured (pass --admin-token to read GET /actors)".into(),
            ),
            Some(token) => self.count_armed_timers(token, t0, until).await,
        }
    }

    /// Reads the armed timers until they cover this run's orders still in flight, or `until`.
    async fn count_armed_timers(&mut self, token: &str, t0: Instant, until: Instant) {
        let finished_before: u64 = ["COMPLETED", "CANCELLED"]
            .iter()
            .filter_map(|s| self.rec.status_before_restart.get(*s))
            .sum();
        let target = (self.ids.len() as u64).saturating_sub(finished_before);
        loop {
            if let Ok(armed) = self.probe.armed_timers(token).await {
                self.rec.armed_timers_after_restart = Some(armed);
                if armed >= target {
                    self.rec.time_to_timers_rearmed_s = Some(t0.elapsed().as_secs_f64());
                    break;
                }
            }
            if Instant::now() > until {
                self.report.warnings.push(format!(
                    "armed timers did not reach {target} within {:?} of the restart (last seen {:?}); timers that fired in the meantime are not counted",
                    self.options.timeout, self.rec.armed_timers_after_restart
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.rec.notes.push(format!(
            "timers re-armed = order_supervisor.armed_timers >= {target} (this run's orders); the count includes any other live saga of the server"
        ));
    }

    /// No order lost: every order placed before the restart can still be read.
    async fn check_none_lost(&mut self) {
        let after = read_all(&self.api, &self.ids, self.concurrency).await;
        self.rec.status_after_restart = after.by_status;
        self.rec.lost_orders = after.lost;
        if after.lost > 0 {
            self.report.violations.push(format!(
                "{} of {} orders placed before the restart no longer exist",
                after.lost,
                self.ids.len()
            ));
        }
        if after.unreadable > 0 {
            self.report.violations.push(format!(
                "{} orders could not be read after the restart: not verified",
                after.unreadable
            ));
        }
    }

    /// `spread`: times new placements, then waits until every order of the run is terminal.
    async fn finish_spread(&mut self, t0: Instant, until: Instant) {
        self.place_during_recovery().await;
        self.wait_all_terminal(t0, until).await;
    }

    /// Places `PROBES` orders of a fresh SKU at once and records how long their placements took.
    async fn place_during_recovery(&mut self) {
        let sku = format!("LT-PROBE-{}", &Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
        if let Err(e) = self.api.put_product(&sku, PROBES as i64).await {
            self.report
                .warnings
                .push(format!("no placements during recovery: {e:#}"));
        }
        let placing = placement_times_ms(&self.api, &sku).await;
        self.rec.placements_during_recovery = placing.len();
        self.rec.placement_p99_during_recovery_ms = placing
            .get((placing.len() * 99 / 100).min(placing.len().saturating_sub(1)))
            .copied();
        if placing.len() < PROBES {
            self.report.warnings.push(format!(
                "{} of {PROBES} placements during recovery were refused or failed",
                PROBES - placing.len()
            ));
        }
    }

    /// Reads the run's orders until none is live, or `until` (a violation).
    async fn wait_all_terminal(&mut self, t0: Instant, until: Instant) {
        loop {
            let now = read_all(&self.api, &self.ids, self.concurrency).await;
            let live: u64 = now
                .by_status
                .iter()
                .filter(|(status, _)| !matches!(status.as_str(), "COMPLETED" | "CANCELLED"))
                .map(|(_, n)| n)
                .sum();
            if live == 0 && now.lost == 0 && now.unreadable == 0 {
                self.rec.time_to_all_terminal_s = Some(t0.elapsed().as_secs_f64());
                self.rec.status_after_restart = now.by_status;
                return;
            }
            if Instant::now() > until {
                self.report.violations.push(format!(
                    "{live} orders still live {:?} after the restart; statuses {:?}",
                    until - t0,
                    now.by_status
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The report with what the recovery measured in it.
    fn finish(mut self) -> LoadReport {
        self.report.recovery = Some(self.rec);
        self.report
    }
}

/// Orders placed while the restarted server re-drives the old ones: how long their placement
/// takes shows whether recovery leaves room for new work.
const PROBES: usize = 200;

/// Milliseconds to 202 of `PROBES` one-unit orders of `sku` placed at once, sorted.
async fn placement_times_ms(api: &Api, sku: &str) -> Vec<f64> {
    let mut placing: Vec<f64> = futures::stream::iter(0..PROBES)
        .map(|_| async move {
            let started = Instant::now();
            match api.place(sku, 1, "pm_card_visa", None, None).await {
                Placement::Placed(_) | Placement::Finished(_) => {
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
    placing
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
