//! Run reports: the JSON record (with the full configuration), the text
//! table, side-by-side comparison of two reports, and a percentile chart.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::Summary;
use crate::RunArgs;

/// The JSON report of one `load run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub config: RunArgs,
    pub duration_s: f64,
    /// Calls answered within the measured window (responses and errors).
    pub requests: u64,
    /// Logical reads completed within the window.
    pub reads_completed: u64,
    pub responses: Summary,
    pub reads: Summary,
    pub rows: u64,
    pub rows_scanned: u64,
    /// Rows delivered to logical reads that finished with every call
    /// answered within the window, and the rows their calls report
    /// scanned: read amplification without the rows held scans fetched
    /// ahead for reads the window's end cut off.
    #[serde(default)]
    pub whole_reads_rows: u64,
    #[serde(default)]
    pub whole_reads_rows_scanned: u64,
    /// Responses that continued a scan held on the server.
    #[serde(default)]
    pub continued: u64,
    pub rows_per_s: f64,
    pub mb_per_s: f64,
    pub partial_rate: f64,
    pub partial_by_reason: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Errors by ErrorInfo reason (e.g. `BUDGET_TOO_SMALL`, `STORAGE_LATE`).
    #[serde(default)]
    pub errors_by_reason: BTreeMap<String, u64>,
    /// The message of the first error of each reason.
    #[serde(default)]
    pub first_error_by_reason: BTreeMap<String, String>,
    pub client_cpu_s: f64,
    /// Latency of calls refused for load (RESOURCE_EXHAUSTED).
    #[serde(default)]
    pub refusals: Summary,
    /// The server's own elapsed time of each response, from its stats.
    #[serde(default)]
    pub server_elapsed: Summary,
    /// Per response, client-observed latency less the server's elapsed time.
    #[serde(default)]
    pub outside_server: Summary,
    /// Rows per second delivered in responses that came within the SLO (or
    /// the deadline): goodput.
    #[serde(default)]
    pub good_rows_per_s: f64,
    /// True when Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// Rows scanned ÷ rows delivered: read amplification (NaN when nothing was
/// delivered).
pub fn amplification(scanned: u64, delivered: u64) -> f64 {
    if delivered == 0 {
        f64::NAN
    } else {
        scanned as f64 / delivered as f64
    }
}

impl Report {
    /// Rows scanned ÷ rows delivered over the logical reads that finished
    /// within the window (NaN when none did).
    pub fn whole_reads_amplification(&self) -> f64 {
        amplification(self.whole_reads_rows_scanned, self.whole_reads_rows)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read report {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a load report: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// Fraction of calls that failed.
    pub fn error_rate(&self) -> f64 {
        let errors: u64 = self.errors_by_code.values().sum();
        errors as f64 / self.requests.max(1) as f64
    }

    /// The SLO drawn on charts: the request SLO, else the deadline.
    pub fn slo_ms(&self) -> Option<f64> {
        self.config
            .slo_ms
            .map(u64::from)
            .or(self.config.deadline_ms)
            .map(|v| v as f64)
    }

    /// The text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
        line(&mut out, "run", self.label.clone());
        line(&mut out, "duration", format!("{:.1} s", self.duration_s));
        line(&mut out, "calls", self.requests.to_string());
        line(
            &mut out,
            "reads completed",
            self.reads_completed.to_string(),
        );
        for (name, s) in [
            ("response latency", &self.responses),
            ("server elapsed", &self.server_elapsed),
            ("outside the server", &self.outside_server),
            ("logical read latency", &self.reads),
            ("refusal latency", &self.refusals),
        ] {
            if s.count > 0 {
                line(
                    &mut out,
                    name,
                    format!(
                        "p50 {:.2} | p90 {:.2} | p99 {:.2} | p99.9 {:.2} | max {:.2} ms (n={})",
                        s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.count
                    ),
                );
            }
        }
        line(
            &mut out,
            "rows",
            format!(
                "{} ({:.0} rows/s, {:.2} MB/s)",
                self.rows, self.rows_per_s, self.mb_per_s
            ),
        );
        line(&mut out, "rows scanned", self.rows_scanned.to_string());
        line(
            &mut out,
            "whole reads",
            format!(
                "{} rows scanned for {} delivered (amplification {:.3})",
                self.whole_reads_rows_scanned,
                self.whole_reads_rows,
                self.whole_reads_amplification()
            ),
        );
        line(
            &mut out,
            "hot continuations",
            format!("{} of {} responses", self.continued, self.requests),
        );
        line(
            &mut out,
            "partial rate",
            format!(
                "{:.1}% {:?}",
                self.partial_rate * 100.0,
                self.partial_by_reason
            ),
        );
        line(&mut out, "errors", format!("{:?}", self.errors_by_code));
        if !self.errors_by_reason.is_empty() {
            line(
                &mut out,
                "errors by reason",
                format!("{:?}", self.errors_by_reason),
            );
        }
        line(
            &mut out,
            "client CPU",
            format!("{:.2} s", self.client_cpu_s),
        );
        out
    }
}

/// Two reports side by side with the relative change of each figure.
pub fn compare(a: &Report, b: &Report) -> String {
    let rows: Vec<(&str, f64, f64)> = vec![
        ("response p50 ms", a.responses.p50_ms, b.responses.p50_ms),
        ("response p90 ms", a.responses.p90_ms, b.responses.p90_ms),
        ("response p99 ms", a.responses.p99_ms, b.responses.p99_ms),
        (
            "response p99.9 ms",
            a.responses.p999_ms,
            b.responses.p999_ms,
        ),
        ("response max ms", a.responses.max_ms, b.responses.max_ms),
        ("read p99 ms", a.reads.p99_ms, b.reads.p99_ms),
        ("rows/s", a.rows_per_s, b.rows_per_s),
        ("MB/s", a.mb_per_s, b.mb_per_s),
        (
            "partial rate %",
            a.partial_rate * 100.0,
            b.partial_rate * 100.0,
        ),
        (
            "errors",
            a.errors_by_code.values().sum::<u64>() as f64,
            b.errors_by_code.values().sum::<u64>() as f64,
        ),
        ("client CPU s", a.client_cpu_s, b.client_cpu_s),
    ];
    let mut out = format!(
        "{:<20} {:>14} {:>14} {:>9}\n",
        "",
        trim(&a.label),
        trim(&b.label),
        "change"
    );
    for (name, x, y) in rows {
        let change = if x == 0.0 {
            "-".to_string()
        } else {
            format!("{:+.1}%", (y - x) / x * 100.0)
        };
        out.push_str(&format!("{name:<20} {x:>14.2} {y:>14.2} {change:>9}\n"));
    }
    out
}

fn trim(s: &str) -> String {
    s.chars().take(14).collect()
}

/// Position of percentile `p` on the chart's x axis: log10(1 / (1 - p)).
fn x_of(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-5);
    -tail.log10()
}

/// Draws the response-latency percentile curves of `reports` with the SLO
/// as a horizontal line, as SVG.
pub fn chart(reports: &[Report], path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!reports.is_empty(), "no report to draw");
    let y_max = reports
        .iter()
        .flat_map(|r| {
            r.responses
                .percentiles
                .iter()
                .map(|(_, v)| *v)
                .chain(r.slo_ms())
        })
        .fold(1.0, f64::max)
        * 1.1;
    let x_max = x_of(99.99);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Response latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{p:.2}%")
        })
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, r) in reports.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = r
            .responses
            .percentiles
            .iter()
            .filter(|(p, _)| *p <= 99.99)
            .map(|(p, v)| (x_of(*p), *v))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        if let Some(slo) = r.slo_ms() {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, slo), (x_max, slo)],
                    color.mix(0.5),
                ))?
                .label(format!("SLO {slo} ms ({})", r.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
