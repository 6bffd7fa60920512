//! The monitoring bundle in `ops/`: the Prometheus configuration and alert rules checked by
//! `promtool`, the rules' own unit tests run, the rules and the Grafana dashboard held to the
//! metric names ordersaga exports, and a real Prometheus scraping a running application.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package; without them these tests
//! fail (and say `apt-get install prometheus`), they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{eventually, free_port, spawn_app};

/// Every metric name the alert rules and the dashboard may use: what ordersaga's processes export
/// on `GET /metrics` (`src/metrics.rs`, `actors/src/metrics.rs` and the adapters), plus `up`,
/// which Prometheus records for every scrape.
const METRICS: &[&str] = &[
    "order_saga_started_total",
    "order_saga_completed_total",
    "order_saga_failed_total",
    "order_saga_compensated_total",
    "order_saga_duration_seconds",
    "order_saga_step_duration_seconds",
    "order_saga_step_timeouts_total",
    "order_saga_step_retries_total",
    "order_actors_live",
    "actor_restarts_total",
    "actor_mailbox_depth",
    "order_sagas_stuck",
    "inventory_reservations_active",
    "inventory_reservations_expired_total",
    "inventory_stock_available",
    "inventory_low_stock_alerts_total",
    "inventory_commit_shortfall_total",
    "payment_failure_streak_alerts_total",
    "stripe_webhook_events_total",
    "jetstream_messages_published_total",
    "jetstream_publish_failures_total",
    "jetstream_messages_consumed_total",
    "jetstream_redeliveries_total",
    "http_requests_total",
    "http_request_duration_seconds",
    "http_connections_accepted_total",
    "http_connections_closed_total",
    "http_connections_rejected_total",
    "http_requests_shed_total",
    "http_request_timeouts_total",
    "outbox_pending_messages",
    "outbox_lag_seconds",
    "ordersaga_ready",
    "ordersaga_dependency_up",
    "up",
];

/// The histograms among them: queried through their `_bucket`, `_sum` and `_count` series.
const HISTOGRAMS: &[&str] = &[
    "order_saga_duration_seconds",
    "order_saga_step_duration_seconds",
    "http_request_duration_seconds",
];

/// One section of the runbook per alert.
const RUNBOOK: &str = "docs/runbook.md";
const RUNBOOK_ANCHORS: &[&str] = &[
    "stuck-sagas",
    "compensation-rate",
    "outbox-lag",
    "not-ready",
    "instance-down",
    "payment-failure-streak",
    "low-stock",
    "inventory-shortfall",
    "dead-letters",
    "http-overload",
];

/// What the dashboard must show (the panels asked of it), by the series its queries read.
const DASHBOARD_MUST_READ: &[&str] = &[
    "order_saga_started_total",
    "order_saga_completed_total",
    "order_saga_compensated_total",
    "order_saga_duration_seconds_bucket",
    "inventory_stock_available",
    "order_actors_live",
    "actor_mailbox_depth",
    "outbox_lag_seconds",
    "outbox_pending_messages",
    "http_requests_total",
    "jetstream_messages_published_total",
    "jetstream_messages_consumed_total",
    "jetstream_redeliveries_total",
    "stripe_webhook_events_total",
];

const ALERTS: &str = "ops/prometheus/alerts.yml";
const ALERT_TESTS: &str = "ops/prometheus/alerts.test.yml";
const PROMETHEUS_CONFIG: &str = "ops/prometheus/prometheus.yml";
const DASHBOARD: &str = "ops/grafana/dashboards/ordersaga.json";
const DATASOURCE: &str = "ops/grafana/provisioning/datasources/prometheus.yml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// A binary of Debian's `prometheus` package: on PATH, or in /usr/bin or /usr/local/bin.
fn tool(name: &str) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    [
        Path::new("/usr/bin").join(name),
        Path::new("/usr/local/bin").join(name),
    ]
    .into_iter()
    .chain(on_path)
    .find(|candidate| candidate.is_file())
    .unwrap_or_else(|| {
        panic!(
            "`{name}` not found (PATH, /usr/bin, /usr/local/bin): the ops tests need Debian's \
                 prometheus package: apt-get install prometheus"
        )
    })
}

/// Runs `promtool <args>` in the repository and asserts it succeeded.
fn promtool(args: &[&str]) -> Output {
    let output = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("cannot run promtool");
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
#[should_panic(expected = "apt-get install prometheus")]
fn a_missing_prometheus_binary_fails_the_tests_with_the_install_command() {
    tool("promtool-that-is-not-installed");
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_rule_file_it_loads() {
    let output = promtool(&["check", "config", PROMETHEUS_CONFIG]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("1 rule files found"), "{text}");
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let output = promtool(&["check", "rules", ALERTS]);
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!("{} rules found", RUNBOOK_ANCHORS.len());
    assert!(text.contains(&expected), "{text}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let output = promtool(&["test", "rules", ALERT_TESTS]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

// ── Reading the files ──────────────────────────────────────────────────────────────────────────

/// One alerting rule of alerts.yml, read as text (the file keeps one `key: value` per line).
#[derive(Debug, Default)]
struct Rule {
    name: String,
    fields: BTreeMap<String, String>,
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

/// The alerting rules of `text`: each `- alert:` item with its `key: value` lines (a block
/// scalar, `key: |` or `key: >-`, is joined into one line).
fn alert_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                name: unquote(name),
                ..Rule::default()
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if trimmed.starts_with('#') || trimmed.starts_with("- ") {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let mut value = value.trim().to_owned();
        if matches!(value.as_str(), "|" | "|-" | ">" | ">-") {
            let indent = line.len() - trimmed.len();
            let mut parts = Vec::new();
            while i < lines.len() {
                let next = lines[i];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                parts.push(next.trim());
                i += 1;
            }
            value = parts.join(" ");
        }
        rule.fields.insert(key.trim().to_owned(), unquote(&value));
    }
    rules
}

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (inside `{...}`, `by (...)`, `on (...)`...), durations, numbers or Grafana
/// variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may be followed by `by (...)` rather than their argument.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index just past the bracket that closes the one at `open`, skipping quoted strings.
    let close = |open: usize, opening: char, closing: char| -> usize {
        let mut depth = 0;
        let mut j = open;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            let c = chars[j];
            match quote {
                Some(_) if c == '\\' => j += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == opening => depth += 1,
                None if c == closing => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                None => {}
            }
            j += 1;
        }
        chars.len()
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            // A string outside braces (e.g. label_replace's arguments).
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = close(next, '(', ')');
                }
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `name` is a series ordersaga (or Prometheus) produces.
fn known_metric(name: &str) -> bool {
    METRICS.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

/// The names in `expr` that are not known metrics, asserting it reads at least one.
fn unknown_metrics(expr: &str) -> Vec<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "no metric read by {expr:?}");
    names.into_iter().filter(|n| !known_metric(n)).collect()
}

#[test]
fn the_metric_name_reader_finds_metrics_and_nothing_else() {
    let expr = r#"histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket{route=~"/orders.*", status!="500"}[$__rate_interval]))) / ignoring(job) group_left clamp_min(sum without (instance) (up{job="ordersaga"} offset 5m), 1e-9) > bool 0.1 and on (x) vector(0) or bottomk(10, min by (sku) (inventory_stock_available))"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "http_request_duration_seconds_bucket",
            "inventory_stock_available",
            "up"
        ]
    );
    assert_eq!(
        unknown_metrics("sum(rate(order_saga_startd_total[5m])) / sum(up)"),
        ["order_saga_startd_total"],
        "a misspelt name is caught"
    );
}

#[test]
fn every_alert_has_a_duration_severity_annotations_runbook_and_tests_both_ways() {
    let rules = alert_rules(&read(ALERTS));
    assert_eq!(
        rules.len(),
        RUNBOOK_ANCHORS.len(),
        "one alert per runbook section: {rules:?}"
    );
    let tests = read(ALERT_TESTS);
    let mut anchors = BTreeSet::new();
    for rule in &rules {
        let name = &rule.name;
        let field = |key: &str| -> &str {
            rule.fields
                .get(key)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| panic!("alert {name} has no `{key}`"))
        };
        let unknown = unknown_metrics(field("expr"));
        assert!(
            unknown.is_empty(),
            "alert {name} reads metrics ordersaga does not export: {unknown:?}"
        );
        field("for");
        assert!(
            ["critical", "warning"].contains(&field("severity")),
            "alert {name}: severity {}",
            field("severity")
        );
        field("summary");
        field("description");
        let anchor = field("runbook_url")
            .strip_prefix(RUNBOOK)
            .and_then(|rest| rest.strip_prefix('#'))
            .unwrap_or_else(|| panic!("alert {name}: runbook_url must be {RUNBOOK}#<anchor>"));
        assert!(
            RUNBOOK_ANCHORS.contains(&anchor),
            "alert {name}: unknown runbook anchor #{anchor}"
        );
        assert!(anchors.insert(anchor.to_owned()), "anchor #{anchor} twice");

        // In alerts.test.yml: at least one evaluation where it fires and one where it must not.
        let (mut fires, mut silent) = (0, 0);
        let lines: Vec<&str> = tests.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) != Some(name.as_str()) {
                continue;
            }
            match lines.get(i + 1).copied() {
                Some("exp_alerts: []") => silent += 1,
                Some(next) if next.starts_with("exp_alerts:") => fires += 1,
                other => panic!("{ALERT_TESTS}: alertname {name} followed by {other:?}"),
            }
        }
        assert!(
            fires > 0 && silent > 0,
            "{ALERT_TESTS} must test {name} firing ({fires} cases) and silent ({silent} cases)"
        );
    }
}

/// The `uid:` of the provisioned datasource.
fn datasource_uid() -> String {
    let text = read(DATASOURCE);
    let uids: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:").map(unquote))
        .collect();
    assert_eq!(uids.len(), 1, "{DATASOURCE} must provision one datasource");
    assert!(text.contains("type: prometheus"), "{DATASOURCE}");
    uids.into_iter().next().unwrap_or_default()
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in list.as_array().into_iter().flatten() {
        out.push(panel.clone());
        out.extend(panels(&panel["panels"]));
    }
    out
}

#[test]
fn the_dashboard_reads_only_exported_metrics_from_the_provisioned_datasource() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "uid"
    );
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title"
    );
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let uid = datasource_uid();
    let mut ids = BTreeSet::new();
    let mut read_names = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard["panels"]) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["x", "y", "w", "h"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "panel {title:?}: gridPos.{key}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(uid.as_str()),
            "panel {title:?} must use the provisioned datasource"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            if !target["datasource"].is_null() {
                assert_eq!(
                    target["datasource"]["uid"].as_str(),
                    Some(uid.as_str()),
                    "panel {title:?}"
                );
            }
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("panel {title:?}: a query without expr"));
            let unknown = unknown_metrics(expr);
            assert!(
                unknown.is_empty(),
                "panel {title:?} reads metrics ordersaga does not export: {unknown:?} in {expr}"
            );
            read_names.extend(metric_names(expr));
            exprs.push((
                id,
                target["refId"].as_str().unwrap_or("A").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    let missing: Vec<&&str> = DASHBOARD_MUST_READ
        .iter()
        .filter(|m| !read_names.contains(**m))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
    assert!(
        exprs
            .iter()
            .any(|(_, _, e)| e.contains("bottomk(10,") && e.contains("inventory_stock_available")),
        "a panel shows the 10 lowest stocks"
    );

    // Every query is valid PromQL: promtool parses them as recording rules (with Grafana's
    // $__rate_interval given a value).
    let dir = TempDir::new("ordersaga-dashboard-rules");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (id, ref_id, expr) in &exprs {
        let expr = expr.replace("$__rate_interval", "1m");
        assert!(!expr.contains('$'), "unexpected Grafana variable in {expr}");
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:panel_{id}_{ref_id}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.0.join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    promtool(&["check", "rules", &file.to_string_lossy()]);
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ── A real Prometheus ──────────────────────────────────────────────────────────────────────────

/// Percent-encodes a query-string value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A private Prometheus (free port, own config and storage in a temp dir) scraping one target
/// every second with the repository's alert rules loaded; killed on drop. Its log is printed if
/// the test fails.
struct TestPrometheus {
    base: String,
    http: reqwest::Client,
    child: Mutex<Child>,
    dir: TempDir,
}

impl TestPrometheus {
    fn start(target: &str) -> Self {
        let dir = TempDir::new("ordersaga-prometheus");
        let config = dir.0.join("prometheus.yml");
        let rules = repo().join(ALERTS);
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: ordersaga\n    static_configs:\n      - targets: [{target:?}]\n",
                rules = rules.to_string_lossy(),
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("prometheus log");
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            child: Mutex::new(child),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// Panics, with Prometheus's log, if it has exited.
    fn assert_running(&self) {
        let exited = self
            .child
            .lock()
            .ok()
            .and_then(|mut child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// GET `path` as JSON; `None` while Prometheus does not answer 200 yet.
    async fn get(&self, path: &str) -> Option<Value> {
        self.assert_running();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The sample values of an instant query (empty when no series matches).
    async fn query(&self, promql: &str) -> Option<Vec<f64>> {
        let body = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        let result = body["data"]["result"].as_array()?;
        Some(
            result
                .iter()
                .filter_map(|series| series["value"][1].as_str()?.parse().ok())
                .collect(),
        )
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_running_application() {
    let app = spawn_app().await;
    let target = app
        .base
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("app base {}", app.base));
    let prometheus = TestPrometheus::start(target);

    eventually(
        Duration::from_secs(30),
        "Prometheus to scrape the app (up{job=\"ordersaga\"} == 1)",
        || async {
            let values = prometheus.query(r#"up{job="ordersaga"}"#).await?;
            (values == [1.0]).then_some(())
        },
    )
    .await;

    app.put_product("OPS-MUG", 10, 1250).await;
    app.place(&[("OPS-MUG", 1)], "pm_card_visa").await;
    let started = eventually(
        Duration::from_secs(30),
        "Prometheus to see the order (order_saga_started_total >= 1)",
        || async {
            let values = prometheus.query("order_saga_started_total").await?;
            values.into_iter().find(|v| *v >= 1.0)
        },
    )
    .await;
    assert!(started >= 1.0);

    // The repository's alert rules load and evaluate in a real Prometheus.
    let expected: BTreeSet<String> = alert_rules(&read(ALERTS))
        .into_iter()
        .map(|rule| rule.name)
        .collect();
    eventually(
        Duration::from_secs(30),
        "every alert rule to be loaded and evaluated without error",
        || async {
            let body = prometheus.get("/api/v1/rules").await?;
            let rules: Vec<&Value> = body["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().into_iter().flatten())
                .collect();
            let names: BTreeSet<String> = rules
                .iter()
                .filter_map(|rule| rule["name"].as_str().map(str::to_owned))
                .collect();
            assert!(names.is_subset(&expected), "unexpected rules: {names:?}");
            let healthy = rules.iter().all(|rule| rule["health"] == "ok");
            (names == expected && healthy).then_some(())
        },
    )
    .await;
}
