//! One load run against a running ordersaga: `concurrency` workers, each placing one order at a
//! time and waiting for it (long poll), until `orders` were started or the duration is over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use reqwest::header::HeaderValue;
use uuid::Uuid;

use crate::api::{Api, MessageCounts, Placement, ProductStock, Read, Status};
use crate::report::{LoadReport, Percentiles, Sample, SkuStock, latency_buckets};
use crate::resources;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub base_url: String,
    pub orders: usize,
    pub concurrency: usize,
    /// Number of SKUs created for the run (named `LT-<run>-<n>`, so runs never interfere).
    pub skus: usize,
    /// Units on hand of each SKU at the start.
    pub stock_per_sku: i64,
    /// Share of orders (0..=1) that go to the first SKU, the "hot" one.
    pub hot_share: f64,
    /// Share of orders (0..=1) paid with a card that is declined.
    pub decline_share: f64,
    /// Largest quantity per order (each order asks for 1..=max units of one SKU).
    pub max_quantity: i64,
    /// How long to wait for one order to become terminal.
    pub order_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            orders: 100,
            concurrency: 100,
            skus: 10,
            stock_per_sku: 1000,
            hot_share: 0.0,
            decline_share: 0.0,
            max_quantity: 3,
            order_timeout: Duration::from_secs(60),
        }
    }
}

/// How a run is driven and observed, beyond the workload of [`LoadConfig`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Name written into the report.
    pub scenario: String,
    /// Stop starting orders after this long (and after `orders`, whichever comes first).
    pub duration: Option<Duration>,
    /// Draw a progress bar on stderr (never drawn when stderr is not a terminal).
    pub progress: bool,
    /// Pay every order with this method instead of the visa/declined mix.
    pub payment_method: Option<String>,
    /// Wait for every order to be terminal (the default) or only place it.
    pub wait_for_terminal: bool,
    /// When waiting: place and wait in one request (`POST /orders?wait=`, the default), or place
    /// (202 at once) and then long-poll `GET /orders/{id}?wait=`, two requests per order.
    pub place_then_poll: bool,
    /// Send `X-Client-Key: load-test-<n>` spreading orders over this many keys (0: no header,
    /// the server's rate limit then counts every order against the client's IP address).
    pub client_keys: usize,
    /// Sample the server every second while the load runs.
    pub sampling: Option<Sampling>,
    /// How long to wait after the last order for nothing to be reserved any more.
    pub settle_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Sampling {
    /// Process whose `VmRSS` is read from `/proc/<pid>/status`.
    pub pid: Option<u32>,
    pub interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            scenario: "custom".into(),
            duration: None,
            progress: false,
            payment_method: None,
            wait_for_terminal: true,
            place_then_poll: false,
            client_keys: 0,
            sampling: None,
            settle_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs `config` (a fixed number of orders, no progress bar) and checks the invariants.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    run_with(config, RunOptions::default()).await
}

/// Runs `config` driven as `options` say and checks the invariants.
pub async fn run_with(config: LoadConfig, options: RunOptions) -> anyhow::Result<LoadReport> {
    Ok(execute(config, options).await?.report)
}

pub(crate) struct Executed {
    pub report: LoadReport,
    /// Ids of the orders placed (only when not waiting for them).
    pub placed: Vec<Uuid>,
    pub api: Api,
}

fn validate(config: &LoadConfig, options: &RunOptions) -> anyhow::Result<()> {
    if config.orders == 0 || config.concurrency == 0 || config.skus == 0 || config.max_quantity < 1
    {
        bail!("orders, concurrency, skus and max quantity must all be at least 1");
    }
    if config.max_quantity > 1000 {
        bail!("the server takes at most 1000 units per line");
    }
    if !(0..=1_000_000_000).contains(&config.stock_per_sku) {
        bail!("stock per SKU must be 0 to 1000000000");
    }
    for (name, share) in [
        ("hot share", config.hot_share),
        ("decline share", config.decline_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{name} must be between 0 and 1, not {share}");
        }
    }
    if options.duration.is_some_and(|d| d.is_zero()) {
        bail!("the duration must be above zero");
    }
    Ok(())
}

/// What every worker adds to.
struct Tally {
    completed: usize,
    cancelled: usize,
    not_terminal: usize,
    left_running: usize,
    failed_requests: usize,
    placement_failures: usize,
    rate_limited: u64,
    rejected: BTreeMap<u16, u64>,
    cancel_reasons: BTreeMap<String, u64>,
    /// Units sold per SKU (completed orders).
    sold: Vec<i64>,
    /// Microseconds.
    latency: Histogram<u64>,
    finished_within_duration: usize,
    last_finished: Option<Instant>,
    placed: Vec<Uuid>,
}

impl Tally {
    /// Nothing counted yet, for a run over `skus` SKUs.
    fn new(skus: usize) -> anyhow::Result<Self> {
        Ok(Self {
            completed: 0,
            cancelled: 0,
            not_terminal: 0,
            left_running: 0,
            failed_requests: 0,
            placement_failures: 0,
            rate_limited: 0,
            rejected: BTreeMap::new(),
            cancel_reasons: BTreeMap::new(),
            sold: vec![0; skus],
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .context("latency histogram")?,
            finished_within_duration: 0,
            last_finished: None,
            placed: Vec::new(),
        })
    }
}

/// How one order ended, as the client saw it.
enum Fate {
    Completed,
    Cancelled(String),
    NotTerminal,
    /// Placed and not waited for.
    Placed(Uuid),
    NotPlaced,
}

struct Outcome {
    sku: usize,
    quantity: i64,
    fate: Fate,
    latency: Option<Duration>,
    failed_requests: usize,
    rate_limited: u64,
    rejected: Option<u16>,
}

impl Outcome {
    /// An order not placed yet: what it stays if no placement gets through.
    fn not_placed(sku: usize, quantity: i64) -> Self {
        Self {
            sku,
            quantity,
            fate: Fate::NotPlaced,
            latency: None,
            failed_requests: 0,
            rate_limited: 0,
            rejected: None,
        }
    }

    /// The order's end as the client saw it, timed from its placement.
    fn end(&mut self, placed_at: Instant, fate: Fate) {
        self.latency = Some(placed_at.elapsed());
        self.fate = fate;
    }
}

struct Ctx {
    api: Api,
    config: LoadConfig,
    options: RunOptions,
    skus: Vec<String>,
    client_keys: Vec<HeaderValue>,
    started: Instant,
    deadline: Option<Instant>,
    next: AtomicUsize,
    finished: AtomicU64,
    tally: Mutex<Tally>,
}

impl Ctx {
    /// The run about to start: its clock starts now.
    fn new(
        api: Api,
        config: LoadConfig,
        options: RunOptions,
        skus: Vec<String>,
        client_keys: Vec<HeaderValue>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        Ok(Self {
            api,
            deadline: options.duration.map(|d| started + d),
            started,
            tally: Mutex::new(Tally::new(config.skus)?),
            config,
            options,
            skus,
            client_keys,
            next: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
        })
    }

    /// The finished run's figures (checks come later), units sold per SKU, orders left running.
    fn report(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        samples: Vec<Sample>,
    ) -> (LoadReport, Vec<i64>, Vec<Uuid>) {
        let orders_started = self.next.load(Ordering::Relaxed).min(self.config.orders);
        let mut t = self.tally();
        let elapsed = t
            .last_finished
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.started);
        let c = &self.config;
        let o = &self.options;
        let report = LoadReport {
            scenario: o.scenario.clone(),
            started_at: started_at.to_rfc3339(),
            base_url: self.api.base().to_owned(),
            orders: orders_started,
            concurrency: c.concurrency,
            skus: c.skus,
            stock_per_sku: c.stock_per_sku,
            hot_share: c.hot_share,
            decline_share: c.decline_share,
            max_quantity: c.max_quantity,
            duration_s: o.duration.map(|d| d.as_secs_f64()),
            completed: t.completed,
            cancelled: t.cancelled,
            not_terminal: t.not_terminal,
            left_running: t.left_running,
            failed_requests: t.failed_requests,
            placement_failures: t.placement_failures,
            rejected_by_status: t.rejected.clone(),
            rate_limited_retries: t.rate_limited,
            cancel_reasons: t.cancel_reasons.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            orders_per_s: orders_started as f64 / elapsed.as_secs_f64().max(1e-9),
            sustained_orders_per_s: o
                .duration
                .map(|d| t.finished_within_duration as f64 / d.as_secs_f64()),
            latency_measured: self.latency_measured().into(),
            latency: Percentiles::of_histogram(&t.latency),
            latency_histogram: latency_buckets(&t.latency),
            samples,
            ..Default::default()
        };
        let sold = std::mem::take(&mut t.sold);
        let placed = std::mem::take(&mut t.placed);
        (report, sold, placed)
    }

    /// What the latency figures time, which depends on how orders are placed and waited for.
    fn latency_measured(&self) -> &'static str {
        let o = &self.options;
        if o.wait_for_terminal && o.place_then_poll {
            "placed -> terminal, client-side (POST, then GET ?wait=)"
        } else if o.wait_for_terminal {
            "placed -> terminal, client-side (POST ?wait=)"
        } else {
            "POST /orders -> 202, client-side"
        }
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        // A worker never panics while holding the lock; if one did, the figures are still usable.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Share of the run done: orders finished of those to start, or time elapsed of the duration.
    fn progress(&self) -> f64 {
        let by_orders = self.finished.load(Ordering::Relaxed) as f64 / self.config.orders as f64;
        let by_time = self.deadline.map_or(0.0, |d| {
            let total = d.saturating_duration_since(self.started).as_secs_f64();
            self.started.elapsed().as_secs_f64() / total.max(1e-9)
        });
        by_orders.max(by_time).clamp(0.0, 1.0)
    }

    fn pick(&self) -> (usize, i64, bool) {
        let mut rng = rand::rng();
        let c = &self.config;
        let sku = if c.skus > 1 && !rng.random_bool(c.hot_share) {
            rng.random_range(0..c.skus)
        } else {
            0
        };
        (
            sku,
            rng.random_range(1..=c.max_quantity),
            rng.random_bool(c.decline_share),
        )
    }

    fn record(&self, o: Outcome) {
        let now = Instant::now();
        let mut t = self.tally();
        t.failed_requests += o.failed_requests;
        t.rate_limited += o.rate_limited;
        if let Some(status) = o.rejected {
            *t.rejected.entry(status).or_default() += 1;
        }
        match o.fate {
            Fate::Completed => {
                t.completed += 1;
                if let Some(sold) = t.sold.get_mut(o.sku) {
                    *sold += o.quantity;
                }
            }
            Fate::Cancelled(reason) => {
                t.cancelled += 1;
                match t.cancel_reasons.get_mut(&reason) {
                    Some(n) => *n += 1,
                    None => {
                        t.cancel_reasons.insert(reason, 1);
                    }
                }
            }
            Fate::NotTerminal => t.not_terminal += 1,
            Fate::Placed(id) => {
                t.left_running += 1;
                t.placed.push(id);
            }
            Fate::NotPlaced => {
                // Never placed: it cannot hold stock, so it counts as cancelled.
                t.cancelled += 1;
                t.placement_failures += 1;
                *t.cancel_reasons.entry("not_placed".into()).or_default() += 1;
            }
        }
        if let Some(latency) = o.latency {
            t.latency
                .saturating_record((latency.as_micros() as u64).max(1));
        }
        if self.deadline.is_none_or(|d| now <= d) {
            t.finished_within_duration += 1;
        }
        t.last_finished = Some(now);
        drop(t);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// One run, set-up to checks; also hands back the client and the orders left running.
pub(crate) async fn execute(config: LoadConfig, options: RunOptions) -> anyhow::Result<Executed> {
    validate(&config, &options)?;
    let pid = options.sampling.as_ref().and_then(|s| s.pid);
    if let Some(pid) = pid {
        resources::rss_bytes(pid).with_context(|| format!("reading the RSS of pid {pid}"))?;
    }
    let api = Api::new(&config.base_url, config.concurrency + 16)?;
    let skus = create_skus(&api, &config).await?;
    let client_keys = client_key_headers(options.client_keys)?;

    let started_at = chrono::Utc::now();
    let mut samples = Vec::new();
    if options.sampling.is_some() {
        // Idle: the catalog is set up, no order placed yet.
        samples.push(sample_server(&api, pid, 0.0, 0.0, 0).await);
    }
    let messages_before = api.message_counts().await;
    let ctx = Arc::new(Ctx::new(api.clone(), config, options, skus, client_keys)?);
    samples.append(&mut drive(&ctx).await?);

    let (mut report, sold, placed) = ctx.report(started_at, samples);
    count_messages(&api, messages_before, &mut report).await;
    warn_about_placements(&mut report);
    if ctx.options.wait_for_terminal {
        check_terminal_and_stock(&ctx, &sold, &mut report).await?;
        if ctx.options.sampling.is_some() {
            let t_s = ctx.started.elapsed().as_secs_f64();
            let finished = ctx.finished.load(Ordering::Relaxed);
            report
                .samples
                .push(sample_server(&api, pid, t_s, 1.0, finished).await);
        }
    }
    Ok(Executed {
        report,
        placed,
        api,
    })
}

/// Creates the run's SKUs, named after a fresh run id so runs never share stock.
async fn create_skus(api: &Api, config: &LoadConfig) -> anyhow::Result<Vec<String>> {
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_uppercase();
    let skus: Vec<String> = (0..config.skus)
        .map(|i| format!("LT-{run_id}-{i}"))
        .collect();
    for sku in &skus {
        api.put_product(sku, config.stock_per_sku).await?;
    }
    Ok(skus)
}

/// The `X-Client-Key` values orders are spread over (none: no header).
fn client_key_headers(count: usize) -> anyhow::Result<Vec<HeaderValue>> {
    (0..count)
        .map(|i| HeaderValue::from_str(&format!("load-test-{i}")))
        .collect::<Result<Vec<_>, _>>()
        .context("client key")
}

/// The server's RSS and live order actors now, for a sample outside the sampler's ticks.
async fn sample_server(
    api: &Api,
    pid: Option<u32>,
    t_s: f64,
    progress: f64,
    orders_finished: u64,
) -> Sample {
    Sample {
        t_s,
        progress,
        orders_finished,
        rss_bytes: pid.and_then(|p| resources::rss_bytes(p).ok()),
        order_actors_live: api.order_actors_live().await,
    }
}

/// Runs the workers to the end beside the progress bar and the sampler; returns the samples.
async fn drive(ctx: &Arc<Ctx>) -> anyhow::Result<Vec<Sample>> {
    let bar = progress_bar(ctx);
    let ticker = tokio::spawn(tick(ctx.clone(), bar.clone()));
    let sampler = ctx.options.sampling.clone().map(|s| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        (stop, tokio::spawn(sample(ctx.clone(), s, stopped)))
    });
    let workers: Vec<_> = (0..ctx.config.concurrency.min(ctx.config.orders))
        .map(|_| tokio::spawn(worker(ctx.clone())))
        .collect();
    for w in workers {
        w.await.context("a load worker panicked")?;
    }
    ticker.abort();
    let mut samples = Vec::new();
    if let Some((stop, sampler)) = sampler {
        let _ = stop.send(());
        samples = sampler.await.context("the sampler panicked")?;
    }
    bar.finish_and_clear();
    Ok(samples)
}

/// Messages per finished order, when the server's metrics were readable before and after.
async fn count_messages(api: &Api, before: Option<MessageCounts>, report: &mut LoadReport) {
    let finished = (report.completed + report.cancelled) as f64;
    if let (Some(before), Some(after), true) = (before, api.message_counts().await, finished > 0.0)
    {
        report.messages_per_order = Some(after.since(&before).per(finished));
    }
}

/// Placements the server limited or refused skew the figures: say so beside them.
fn warn_about_placements(report: &mut LoadReport) {
    if report.rate_limited_retries > 0 {
        report.warnings.push(format!(
            "the server rate-limited {} placements (429, retried): throughput is capped by ORDER_RATE_LIMIT_PER_SEC; run the server with it at 0, or pass --client-keys",
            report.rate_limited_retries
        ));
    }
    if report.placement_failures > 0 {
        report.warnings.push(format!(
            "{} orders could not be placed (rejected: {:?}; the rest got no answer, and one without an answer may still have been placed)",
            report.placement_failures, report.rejected_by_status
        ));
    }
}

/// Every order terminal, and per SKU no oversell, stock conserved and nothing left reserved.
async fn check_terminal_and_stock(
    ctx: &Ctx,
    sold: &[i64],
    report: &mut LoadReport,
) -> anyhow::Result<()> {
    report.invariants_checked.extend([
        "every order terminal".to_owned(),
        "no oversell".to_owned(),
        "stock conserved".to_owned(),
        "nothing left reserved".to_owned(),
    ]);
    if report.not_terminal > 0 {
        report.violations.push(format!(
            "{} orders did not reach a terminal status within {:?} (stock conservation is not judged while orders run)",
            report.not_terminal, ctx.config.order_timeout
        ));
    }
    // Completion commits stock asynchronously (inventory reacts to order.confirmed.v1): wait,
    // with a deadline, for every SKU to be at rest before judging conservation.
    let settle_deadline = Instant::now() + ctx.options.settle_timeout;
    for (i, sku) in ctx.skus.iter().enumerate() {
        let product = settled_product(ctx, sku, settle_deadline, report.not_terminal > 0).await?;
        let sold = sold.get(i).copied().unwrap_or(0);
        check_stock(report, sku, ctx.config.stock_per_sku, sold, &product);
    }
    Ok(())
}

/// Reads `sku` until nothing of it is reserved, unless orders still run or the deadline passed.
async fn settled_product(
    ctx: &Ctx,
    sku: &str,
    deadline: Instant,
    orders_running: bool,
) -> anyhow::Result<ProductStock> {
    loop {
        let product = ctx.api.product(sku).await?;
        if product.reserved == 0 || orders_running || Instant::now() > deadline {
            return Ok(product);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Judges one SKU's stock against the units the client saw sold, and records it.
fn check_stock(
    report: &mut LoadReport,
    sku: &str,
    initial: i64,
    sold: i64,
    product: &ProductStock,
) {
    if sold > initial || product.on_hand < 0 {
        report.violations.push(format!(
            "{sku}: oversold: {sold} units sold of {initial}, {} on hand",
            product.on_hand
        ));
    }
    // Orders still running hold or take units the client has not seen: conservation cannot
    // be judged then (the missing terminal statuses are a violation already).
    let judged = report.not_terminal == 0;
    if judged && product.reserved != 0 {
        report.violations.push(format!(
            "{sku}: {} units still reserved at rest",
            product.reserved
        ));
    } else if judged && product.on_hand + sold != initial {
        report.violations.push(format!(
            "{sku}: stock not conserved: on_hand {} + sold {sold} != initial {initial}",
            product.on_hand
        ));
    }
    report.stock.push(SkuStock {
        sku: sku.to_owned(),
        initial,
        sold,
        on_hand: product.on_hand,
        reserved: product.reserved,
    });
}

async fn worker(ctx: Arc<Ctx>) {
    loop {
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let n = ctx.next.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.config.orders {
            return;
        }
        let (sku, quantity, declined) = ctx.pick();
        let key =
            (!ctx.client_keys.is_empty()).then(|| &ctx.client_keys[n % ctx.client_keys.len()]);
        let outcome = one_order(&ctx, sku, quantity, declined, key).await;
        ctx.record(outcome);
    }
}

/// How long a placement waits for its order's outcome before the client long-polls instead.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);

/// Places one order and, unless told not to, waits for it to end.
async fn one_order(
    ctx: &Ctx,
    sku: usize,
    quantity: i64,
    declined: bool,
    client_key: Option<&HeaderValue>,
) -> Outcome {
    let mut outcome = Outcome::not_placed(sku, quantity);
    let method = match &ctx.options.payment_method {
        Some(m) => m.as_str(),
        None if declined => "pm_card_chargeDeclined",
        None => "pm_card_visa",
    };
    let Some((order_id, placed_at)) = place(ctx, method, client_key, &mut outcome).await else {
        return outcome;
    };
    if !ctx.options.wait_for_terminal {
        outcome.end(placed_at, Fate::Placed(order_id));
        return outcome;
    }
    outcome.fate = Fate::NotTerminal;
    wait_until_terminal(ctx, order_id, placed_at, &mut outcome).await;
    outcome
}

/// Places the order, riding out 429s: its id and start, or `None` once `outcome` is settled.
async fn place(
    ctx: &Ctx,
    method: &str,
    client_key: Option<&HeaderValue>,
    outcome: &mut Outcome,
) -> Option<(Uuid, Instant)> {
    let give_up = Instant::now() + ctx.config.order_timeout;
    // The placement itself waits for the outcome unless told not to (or not waiting at all).
    let wait_in_post = (ctx.options.wait_for_terminal && !ctx.options.place_then_poll)
        .then(|| ctx.config.order_timeout.min(PLACEMENT_WAIT));
    let sku = &ctx.skus[outcome.sku];
    loop {
        let placed_at = Instant::now();
        match ctx
            .api
            .place(sku, outcome.quantity, method, client_key, wait_in_post)
            .await
        {
            Placement::Finished(status) => {
                let fate = match status {
                    Status::Cancelled(reason) => Fate::Cancelled(reason),
                    _ => Fate::Completed,
                };
                outcome.end(placed_at, fate);
                return None;
            }
            Placement::Placed(id) => return Some((id, placed_at)),
            Placement::RateLimited(wait) if Instant::now() + wait < give_up => {
                outcome.rate_limited += 1;
                tokio::time::sleep(wait).await;
            }
            Placement::RateLimited(_) => {
                // No time left to try again: not placed.
                outcome.failed_requests += 1;
                outcome.rejected = Some(429);
                return None;
            }
            Placement::Rejected(status) => {
                outcome.failed_requests += 1;
                outcome.rejected = Some(status);
                return None;
            }
            Placement::Failed => {
                outcome.failed_requests += 1;
                return None;
            }
        }
    }
}

/// Long-polls a placed order until it is terminal or its time is up.
async fn wait_until_terminal(ctx: &Ctx, order_id: Uuid, placed_at: Instant, outcome: &mut Outcome) {
    let deadline = placed_at + ctx.config.order_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match ctx
            .api
            .order(order_id, Some(left.min(Duration::from_secs(5))))
            .await
        {
            Ok(Read::Found(Status::Completed)) => {
                return outcome.end(placed_at, Fate::Completed);
            }
            Ok(Read::Found(Status::Cancelled(reason))) => {
                return outcome.end(placed_at, Fate::Cancelled(reason));
            }
            Ok(Read::Found(Status::Running(_))) => {}
            Ok(Read::NotFound) | Err(_) => {
                outcome.failed_requests += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn progress_bar(ctx: &Ctx) -> ProgressBar {
    if !ctx.options.progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match ctx.options.duration {
        Some(d) => (
            d.as_secs().max(1),
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s  {wide_msg}",
        ),
        None => (
            ctx.config.orders as u64,
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} orders  {wide_msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Updates the progress bar five times a second.
async fn tick(ctx: Arc<Ctx>, bar: ProgressBar) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        let finished = ctx.finished.load(Ordering::Relaxed);
        let elapsed = ctx.started.elapsed();
        match ctx.options.duration {
            Some(d) => bar.set_position(elapsed.as_secs().min(d.as_secs())),
            None => bar.set_position(finished),
        }
        let (completed, cancelled, left_running) = {
            let t = ctx.tally();
            (t.completed, t.cancelled, t.left_running)
        };
        let draining = ctx.deadline.is_some_and(|d| Instant::now() >= d)
            || ctx.next.load(Ordering::Relaxed) >= ctx.config.orders;
        bar.set_message(format!(
            "{finished} done ({completed} completed, {cancelled} cancelled{}), {:.0} orders/s{}",
            if left_running > 0 {
                format!(", {left_running} placed")
            } else {
                String::new()
            },
            finished as f64 / elapsed.as_secs_f64().max(1e-3),
            if draining { ", draining" } else { "" }
        ));
    }
}

/// Samples the server every `interval` until `stop` fires (or is dropped); returns the samples.
async fn sample(
    ctx: Arc<Ctx>,
    sampling: Sampling,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut interval = tokio::time::interval(sampling.interval.max(Duration::from_millis(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return samples,
            _ = interval.tick() => {}
        }
        let rss = sampling.pid.and_then(|p| resources::rss_bytes(p).ok());
        let live = ctx.api.order_actors_live().await;
        samples.push(Sample {
            t_s: ctx.started.elapsed().as_secs_f64(),
            progress: ctx.progress(),
            orders_finished: ctx.finished.load(Ordering::Relaxed),
            rss_bytes: rss,
            order_actors_live: live,
        });
    }
}
