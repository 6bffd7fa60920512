//! The server's memory, read from `/proc` (Linux), and what the soak scenario derives from it.

use anyhow::Context;

use crate::report::{Sample, SoakSummary};

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// `VmRSS:   12345 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | Some("KB") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

/// Whether `pid` is gone (or a zombie waiting for its parent).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Idle, after warm-up (10 %), middle (50 %), end, peak; bytes per live actor; growth flag.
/// `samples[0]` is the idle sample; the last one is taken after the drain when `drained`.
pub fn summarize(
    samples: &[Sample],
    pid: Option<u32>,
    drained: bool,
    growth_threshold: f64,
) -> SoakSummary {
    let (idle, rest) = match samples.split_first() {
        Some((idle, rest)) => (Some(idle), rest),
        None => (None, samples),
    };
    let (under_load, after_drain) = match (drained, rest.split_last()) {
        (true, Some((last, under_load))) => (under_load, Some(last)),
        _ => (rest, None),
    };
    let first_at = |share: f64| {
        under_load
            .iter()
            .find(|s| s.progress >= share && s.rss_bytes.is_some())
            .and_then(|s| s.rss_bytes)
    };
    let rss_idle = idle.and_then(|s| s.rss_bytes);
    let rss_warmup = first_at(0.1);
    let rss_end = under_load.iter().rev().find_map(|s| s.rss_bytes);
    let rss_peak = samples.iter().filter_map(|s| s.rss_bytes).max();
    let max_live = samples
        .iter()
        .filter_map(|s| s.order_actors_live)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let bytes_per_live_actor = match (rss_peak, rss_idle, max_live) {
        (Some(peak), Some(idle), Some(live)) if live >= 1.0 => {
            Some((peak as f64 - idle as f64) / live)
        }
        _ => None,
    };
    let growth = match (rss_warmup, rss_end) {
        (Some(w), Some(e)) if w > 0 => Some((e as f64 - w as f64) / w as f64),
        _ => None,
    };
    SoakSummary {
        pid,
        rss_idle_bytes: rss_idle,
        rss_after_warmup_bytes: rss_warmup,
        rss_middle_bytes: first_at(0.5),
        rss_end_bytes: rss_end,
        rss_peak_bytes: rss_peak,
        rss_after_drain_bytes: after_drain.and_then(|s| s.rss_bytes),
        max_order_actors_live: max_live,
        bytes_per_live_actor,
        rss_growth_after_warmup: growth,
        growth_threshold,
        growth_flagged: growth.is_some_and(|g| g > growth_threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tordersaga\nVmPeak:\t  900 kB\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
    }

    #[test]
    fn this_process_has_an_rss_and_is_not_gone() -> anyhow::Result<()> {
        let pid = std::process::id();
        assert!(rss_bytes(pid)? > 0);
        assert!(!process_gone(pid));
        assert!(process_gone(u32::MAX));
        Ok(())
    }

    fn at(progress: f64, rss_mib: u64, live: f64) -> Sample {
        Sample {
            progress,
            rss_bytes: Some(rss_mib << 20),
            order_actors_live: Some(live),
            ..Default::default()
        }
    }

    #[test]
    fn soak_figures_come_from_the_right_samples() {
        let samples = [
            at(0.0, 100, 0.0),
            at(0.05, 150, 500.0),
            at(0.1, 200, 1000.0),
            at(0.5, 210, 900.0),
            at(0.99, 230, 1000.0),
            at(1.0, 120, 0.0),
        ];
        let s = summarize(&samples, Some(1), true, 0.10);
        assert_eq!(s.rss_idle_bytes, Some(100 << 20));
        assert_eq!(s.rss_after_warmup_bytes, Some(200 << 20));
        assert_eq!(s.rss_middle_bytes, Some(210 << 20));
        assert_eq!(s.rss_end_bytes, Some(230 << 20));
        assert_eq!(s.rss_peak_bytes, Some(230 << 20));
        assert_eq!(s.rss_after_drain_bytes, Some(120 << 20));
        assert_eq!(s.max_order_actors_live, Some(1000.0));
        assert_eq!(s.bytes_per_live_actor, Some((130u64 << 20) as f64 / 1000.0));
        assert!(s.growth_flagged, "{s:?}");
        let s = summarize(&samples[..5], None, false, 0.20);
        assert!(!s.growth_flagged, "+15 % is under 20 %");
        assert_eq!(s.rss_after_drain_bytes, None);
    }
}
