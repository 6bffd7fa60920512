//! The result files of a run: the report as JSON, and beside it a self-contained HTML page (inline
//! SVG, no script, nothing fetched) with the latency histogram and, when sampled, the server's
//! RSS and live order actors over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::{
    LatencyBucket, LoadReport, Percentiles, RecoveryReport, Sample, SoakSummary, mib, secs,
    signed_percent, whole,
};

/// `<dir>/<scenario>-<UTC timestamp>.json`.
pub fn default_json_path(dir: &Path, scenario: &str) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    dir.join(format!("{scenario}-{stamp}.json"))
}

/// Writes `json_path` and the chart next to it (same name, `.html`); creates the directory.
pub fn write_results(report: &LoadReport, json_path: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = json_path.with_extension("html");
    std::fs::write(&html_path, html(report))
        .with_context(|| format!("writing {}", html_path.display()))?;
    Ok((json_path.to_owned(), html_path))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0}ms")
    } else if ms >= 1.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.0}µs", ms * 1000.0)
    }
}

/// The whole page.
pub fn html(report: &LoadReport) -> String {
    let mut page = String::with_capacity(32 * 1024);
    write_head(&mut page, report);
    write_summary(&mut page, &summary_rows(report));
    write_invariants(&mut page, report);
    write_warnings(&mut page, report);
    write_charts(&mut page, report);
    page.push_str("</body></html>\n");
    page
}

/// The document head (title, inline style) and the page heading.
fn write_head(page: &mut String, report: &LoadReport) {
    let title = format!(
        "ordersaga load test: {} ({})",
        report.scenario, report.started_at
    );
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}.bad{{color:#b00020;font-weight:bold}}.ok{{color:#1b7a1b}}svg text{{font-size:11px;fill:#333}}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
}

/// The summary table's rows: the run and its figures, then what the scenario adds.
fn summary_rows(report: &LoadReport) -> Vec<(&'static str, String)> {
    let mut rows = run_rows(report);
    rows.push(("throughput", report.throughput()));
    rows.push((
        "latency",
        format!("{}: {}", report.latency_measured, report.latency.summary()),
    ));
    for t in &report.targets {
        rows.push(("target", format!("{}: {}", t.what, t.verdict())));
    }
    if let Some(r) = &report.recovery {
        rows.push(("recovery", recovery_row(r)));
    }
    if let Some(s) = &report.soak {
        rows.push(("server RSS", soak_row(s)));
    }
    rows
}

/// Where the load went, what it was, and how the orders ended.
fn run_rows(report: &LoadReport) -> Vec<(&'static str, String)> {
    vec![
        ("server", report.base_url.clone()),
        (
            "orders",
            format!(
                "{} started, {} in flight{}",
                report.orders,
                report.concurrency,
                report
                    .duration_s
                    .map(|d| format!(", for {d:.0} s"))
                    .unwrap_or_default()
            ),
        ),
        (
            "workload",
            format!(
                "{} SKUs of {} units, hot share {}, declines {}, 1..={} units per order",
                report.skus,
                report.stock_per_sku,
                report.hot_share,
                report.decline_share,
                report.max_quantity
            ),
        ),
        (
            "outcome",
            format!(
                "{} completed, {} cancelled {:?}, {} not terminal, {} left running, {} failed requests",
                report.completed,
                report.cancelled,
                report.cancel_reasons,
                report.not_terminal,
                report.left_running,
                report.failed_requests
            ),
        ),
    ]
}

/// The restart's timings in one row.
fn recovery_row(r: &RecoveryReport) -> String {
    format!(
        "{} ({} orders in flight): ready after {}, timers re-armed after {}, {} lost",
        r.restart_mode,
        r.orders_in_flight,
        secs(r.time_to_ready_s),
        secs(r.time_to_timers_rearmed_s),
        r.lost_orders
    )
}

/// The server's memory over a soak in one row.
fn soak_row(s: &SoakSummary) -> String {
    format!(
        "idle {}, after warm-up {}, middle {}, end {}, peak {}, after drain {}; {} bytes per live actor; growth after warm-up {}{}",
        mib(s.rss_idle_bytes),
        mib(s.rss_after_warmup_bytes),
        mib(s.rss_middle_bytes),
        mib(s.rss_end_bytes),
        mib(s.rss_peak_bytes),
        mib(s.rss_after_drain_bytes),
        whole(s.bytes_per_live_actor),
        signed_percent(s.rss_growth_after_warmup),
        if s.growth_flagged { " (FLAGGED)" } else { "" }
    )
}

/// The summary as a two-column table.
fn write_summary(page: &mut String, rows: &[(&str, String)]) {
    page.push_str("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(
            page,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    page.push_str("</table>\n");
}

/// The invariants checked when all held, else every violation.
fn write_invariants(page: &mut String, report: &LoadReport) {
    page.push_str("<h2>Invariants</h2>\n");
    if report.violations.is_empty() {
        let _ = writeln!(
            page,
            "<p class=\"ok\">All hold: {}</p>",
            escape(&report.invariants_checked.join(", "))
        );
    } else {
        page.push_str("<ul>\n");
        for v in &report.violations {
            let _ = writeln!(page, "<li class=\"bad\">{}</li>", escape(v));
        }
        page.push_str("</ul>\n");
    }
}

/// The warnings, when there are any.
fn write_warnings(page: &mut String, report: &LoadReport) {
    if !report.warnings.is_empty() {
        page.push_str("<h2>Warnings</h2>\n<ul>\n");
        for w in &report.warnings {
            let _ = writeln!(page, "<li>{}</li>", escape(w));
        }
        page.push_str("</ul>\n");
    }
}

/// The latency histogram, and the server's RSS and live order actors when they were sampled.
fn write_charts(page: &mut String, report: &LoadReport) {
    let _ = writeln!(
        page,
        "<h2>Latency histogram ({})</h2>",
        escape(&report.latency_measured)
    );
    page.push_str(&histogram_svg(&report.latency_histogram, report));
    if report.samples.iter().any(|s| s.rss_bytes.is_some()) {
        page.push_str("<h2>Server RSS (MiB) over time</h2>\n");
        page.push_str(&line_svg(&report.samples, |s| {
            s.rss_bytes.map(|b| b as f64 / 1048576.0)
        }));
    }
    if report.samples.iter().any(|s| s.order_actors_live.is_some()) {
        page.push_str("<h2>Live order actors over time</h2>\n");
        page.push_str(&line_svg(&report.samples, |s| s.order_actors_live));
    }
}

const W: f64 = 900.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 30.0;
/// The plotting area inside the axes.
const PLOT_W: f64 = W - LEFT - 30.0;
const PLOT_H: f64 = H - BOTTOM - TOP;

/// The x and y axes around the plotting area.
fn axes() -> String {
    format!(
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#999\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{y}\" stroke=\"#999\"/>",
        y = TOP + PLOT_H,
        x2 = LEFT + PLOT_W
    )
}

/// Orders per latency bucket as bars on a log scale, with the percentiles marked.
fn histogram_svg(buckets: &[LatencyBucket], report: &LoadReport) -> String {
    if buckets.is_empty() {
        return "<p>No latency recorded.</p>\n".into();
    }
    let mut svg = String::new();
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    let bar_w = PLOT_W / buckets.len() as f64;
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"latency histogram\">"
    );
    let _ = writeln!(svg, "{}", axes());
    let _ = writeln!(
        svg,
        "<text x=\"4\" y=\"{}\">{}</text><text x=\"4\" y=\"{}\">0</text><text x=\"4\" y=\"14\">orders</text>",
        TOP + 10.0,
        max as u64,
        TOP + PLOT_H
    );
    write_bars(&mut svg, buckets, max, bar_w);
    write_percentile_markers(&mut svg, buckets, &report.latency, bar_w);
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\">latency (log scale)</text></svg>",
        LEFT + PLOT_W / 2.0 - 50.0,
        H - 4.0
    );
    svg
}

/// One bar per bucket, scaled to the fullest, with a latency label under every few.
fn write_bars(svg: &mut String, buckets: &[LatencyBucket], max: f64, bar_w: f64) {
    let label_every = (buckets.len() / 12).max(1);
    for (i, b) in buckets.iter().enumerate() {
        let h = b.count as f64 / max * PLOT_H;
        let x = LEFT + i as f64 * bar_w;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7ab5\"><title>{} to {}: {} orders</title></rect>",
            TOP + PLOT_H - h,
            (bar_w - 1.0).max(1.0),
            ms_label(b.from_ms),
            ms_label(b.to_ms),
            b.count
        );
        if i % label_every == 0 {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
                TOP + PLOT_H + 14.0,
                ms_label(b.from_ms)
            );
        }
    }
}

/// Percentile markers, placed on the same log scale as the bars, with a legend above.
fn write_percentile_markers(
    svg: &mut String,
    buckets: &[LatencyBucket],
    l: &Percentiles,
    bar_w: f64,
) {
    let first = buckets[0].from_ms.max(1e-6);
    let factor = (buckets[0].to_ms / first).max(1.000_001);
    let mut legend_x = LEFT + 60.0;
    for (name, ms, colour) in [
        ("p50", l.p50_ms, "#1b7a1b"),
        ("p90", l.p90_ms, "#7a5c00"),
        ("p95", l.p95_ms, "#d08000"),
        ("p99", l.p99_ms, "#b00020"),
        ("max", l.max_ms, "#555555"),
    ] {
        if ms <= 0.0 {
            continue;
        }
        let x = (LEFT + (ms / first).ln() / factor.ln() * bar_w).clamp(LEFT, LEFT + PLOT_W);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"><title>{name} {}</title></line><text x=\"{legend_x:.1}\" y=\"14\" style=\"fill:{colour}\">- - {name} {}</text>",
            TOP + PLOT_H,
            ms_label(ms),
            ms_label(ms)
        );
        legend_x += 120.0;
    }
}

/// One value of the samples over time as a line, scaled to its largest.
fn line_svg(samples: &[Sample], value: impl Fn(&Sample) -> Option<f64>) -> String {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| value(s).map(|v| (s.t_s, v)))
        .collect();
    if points.is_empty() {
        return String::new();
    }
    let (t_min, t_max) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (t, _)| {
        (a.min(*t), b.max(*t))
    });
    let v_max = points
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let span = (t_max - t_min).max(1e-9);
    let coords: Vec<String> = points
        .iter()
        .map(|(t, v)| {
            format!(
                "{:.1},{:.1}",
                LEFT + (t - t_min) / span * PLOT_W,
                TOP + PLOT_H - v / v_max * PLOT_H
            )
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" role=\"img\">{axes}<text x=\"4\" y=\"{top_label}\">{v_max:.0}</text><text x=\"4\" y=\"{y}\">0</text><text x=\"{LEFT}\" y=\"{t_label}\">{t_min:.0} s</text><text x=\"{x_end}\" y=\"{t_label}\">{t_max:.0} s</text><polyline fill=\"none\" stroke=\"#4a7ab5\" stroke-width=\"1.5\" points=\"{}\"/></svg>\n",
        coords.join(" "),
        axes = axes(),
        y = TOP + PLOT_H,
        top_label = TOP + 10.0,
        t_label = TOP + PLOT_H + 14.0,
        x_end = LEFT + PLOT_W - 40.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = LoadReport {
            scenario: "baseline".into(),
            base_url: "http://x/<script>".into(),
            latency: Percentiles {
                p50_ms: 10.0,
                p90_ms: 20.0,
                p95_ms: 30.0,
                p99_ms: 40.0,
                max_ms: 50.0,
            },
            latency_histogram: vec![
                LatencyBucket {
                    from_ms: 8.0,
                    to_ms: 9.5,
                    count: 3,
                },
                LatencyBucket {
                    from_ms: 9.5,
                    to_ms: 11.3,
                    count: 7,
                },
            ],
            samples: vec![
                Sample {
                    t_s: 0.0,
                    rss_bytes: Some(1 << 20),
                    ..Default::default()
                },
                Sample {
                    t_s: 1.0,
                    rss_bytes: Some(2 << 20),
                    ..Default::default()
                },
            ],
            violations: vec!["a < b".into()],
            ..Default::default()
        };
        let page = html(&report);
        assert!(!page.contains("<script"), "escaped");
        assert!(!page.contains("http://") || !page.contains("src=\"http"));
        assert!(!page.contains("<link") && !page.contains(" src="));
        assert_eq!(page.matches("<rect").count(), 2);
        assert!(page.contains("<polyline"));
        assert!(page.contains("a &lt; b"));
    }

    #[test]
    fn results_are_written_side_by_side() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("lt-{}", uuid::Uuid::new_v4().simple()));
        let path = default_json_path(&dir.join("results"), "flash-sale");
        let (json, html) = write_results(&LoadReport::default(), &path)?;
        assert!(json.exists() && html.exists());
        assert_eq!(html.extension().and_then(|e| e.to_str()), Some("html"));
        assert!(
            json.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("flash-sale-") && n.ends_with(".json"))
        );
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
