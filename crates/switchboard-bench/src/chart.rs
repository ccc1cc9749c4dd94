//! PNG charts of results (plotters' bitmap backend): one row per scenario, with the rate of
//! each run on the left and its p50/p99 latency (or, for `connect` with `--server-pid`, the
//! server's memory per connection) on the right, as horizontal bars labelled with the runs'
//! names. The font (DejaVu Sans) is embedded, so drawing needs no system font library.

use std::{path::Path, sync::Once};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};

use crate::{engine::human, result::BenchResult};

static FONT: Once = Once::new();

fn register() {
    FONT.call_once(|| {
        // Registering an embedded TTF cannot fail for a valid font; if it did, text would be
        // missing, not the chart.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `results` to a PNG at `path`.
pub(crate) fn draw(results: &[BenchResult], path: &Path) -> Result<(), String> {
    register();
    draw_inner(results, path).map_err(|e| format!("{}: drawing the chart: {e}", path.display()))
}

fn draw_inner(
    results: &[BenchResult],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Names in first-seen order give each run its colour in every panel.
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let color = |name: &str| COLORS[names.iter().position(|n| *n == name).unwrap_or(0) % 8];
    let mut scenarios: Vec<&str> = Vec::new();
    for r in results {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let groups: Vec<Vec<&BenchResult>> = scenarios
        .iter()
        .map(|s| results.iter().filter(|r| r.scenario == *s).collect())
        .collect();
    // One row per scenario, as tall as its runs need: the rate on the left, latency (or
    // memory per connection) on the right, one horizontal bar per run, names on the left.
    let heights: Vec<u32> = groups.iter().map(|g| ROW_CHROME + BAR * slots(g)).collect();
    let total = heights.iter().sum::<u32>().max(ROW_CHROME);
    let root = BitMapBackend::new(path, (WIDTH, total)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut rest = root;
    for (runs, height) in groups.iter().zip(&heights) {
        let (row, below) = rest.split_vertically(*height);
        rest = below;
        let (left, right) = row.split_horizontally(LEFT);
        let scenario = runs[0].scenario.as_str();
        let unit = match runs[0].results.throughput_unit.as_str() {
            "" => "per second",
            u => u,
        };
        bars(
            &left,
            runs,
            &format!("{scenario}: {unit}"),
            NAMES,
            &|r| Some(r.results.throughput),
            &|v| human(v),
            &color,
        )?;
        let memory = |r: &BenchResult| {
            r.results
                .server
                .as_ref()
                .and_then(|s| s.memory_per_connection_bytes)
                .map(|b| b / 1024.0)
        };
        if runs.iter().all(|r| memory(r).is_some()) {
            bars(
                &right,
                runs,
                &format!("{scenario}: server memory per idle connection (KiB)"),
                8,
                &memory,
                &|v| format!("{v:.1}"),
                &color,
            )?;
        } else {
            latency_bars(&right, runs, scenario, &color)?;
        }
    }
    rest.present()?;
    Ok(())
}

const WIDTH: u32 = 1200;
/// Width of the left column (names and rates).
const LEFT: u32 = 640;
/// Room for the names of the runs.
const NAMES: u32 = 230;
/// Height of one bar's slot.
const BAR: u32 = 30;
/// Caption, axis labels and margins of one row.
const ROW_CHROME: u32 = 90;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bar slots of a panel: one per run, at least two (a one-segment axis is degenerate in
/// plotters).
fn slots(runs: &[&BenchResult]) -> u32 {
    runs.len().max(2) as u32
}

/// The bar slot of run `i`: the first run on top.
fn slot(runs: &[&BenchResult], i: usize) -> u32 {
    slots(runs) - 1 - i as u32
}

/// The name of the run in a bar slot.
fn name_of(runs: &[&BenchResult], y: &SegmentValue<u32>) -> String {
    match y {
        SegmentValue::CenterOf(s) => (slots(runs) as usize)
            .checked_sub(1 + *s as usize)
            .and_then(|i| runs.get(i))
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// One horizontal bar per run with its value written after it (linear scale from 0).
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[&BenchResult],
    caption: &str,
    label_area: u32,
    value: &dyn Fn(&BenchResult) -> Option<f64>,
    show: &dyn Fn(f64) -> String,
    color: &dyn Fn(&str) -> RGBColor,
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let max = runs
        .iter()
        .filter_map(|r| value(r))
        .fold(0.0, f64::max)
        .max(1e-9);
    let n = slots(runs);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(24)
        .y_label_area_size(label_area)
        .build_cartesian_2d(0.0..max * 1.25, (0..n.saturating_sub(1)).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|y| {
            if label_area > 10 {
                name_of(runs, y)
            } else {
                String::new()
            }
        })
        .x_labels(6)
        .x_label_formatter(&|v| show(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    let text =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, r) in runs.iter().enumerate() {
        let Some(v) = value(r) else { continue };
        chart.draw_series(
            Histogram::horizontal(&chart)
                .style(color(&r.name).filled())
                .margin(6)
                .data([(slot(runs, i), v)]),
        )?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", show(v)),
            (v, SegmentValue::CenterOf(slot(runs, i))),
            text.clone(),
        )))?;
    }
    Ok(())
}

/// p50 (dark) and p99 (light) latency bars per run, log scale.
fn latency_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[&BenchResult],
    scenario: &str,
    color: &dyn Fn(&str) -> RGBColor,
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let kind = runs[0].results.latency_kind.replace('_', " ");
    let (lo, hi) = runs
        .iter()
        .filter_map(|r| r.results.latency_us)
        .fold((f64::MAX, 0.0f64), |(lo, hi), l| {
            (lo.min(l.p50.max(1.0)), hi.max(l.p99.max(1.0)))
        });
    let (lo, hi) = if hi == 0.0 {
        (1.0, 10.0)
    } else {
        ((lo / 2.0).max(0.5), hi * 6.0)
    };
    let n = slots(runs);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{scenario}: {kind} latency, p50 and p99 (µs, log)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(24)
        .y_label_area_size(8)
        .build_cartesian_2d(
            (lo..hi).log_scale(),
            (0..n.saturating_sub(1)).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|_| String::new())
        .x_labels(6)
        .x_label_formatter(&|v| human(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    let text =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, r) in runs.iter().enumerate() {
        let Some(l) = r.results.latency_us else {
            continue;
        };
        let c = color(&r.name);
        for (v, style) in [(l.p99, c.mix(0.35).filled()), (l.p50, c.filled())] {
            chart.draw_series(
                Histogram::horizontal(&chart)
                    .style(style)
                    .margin(6)
                    .baseline(lo)
                    .data([(slot(runs, i), v.max(lo))]),
            )?;
        }
        chart.draw_series(std::iter::once(Text::new(
            format!(" {} / {}", human(l.p50), human(l.p99)),
            (l.p99.max(lo), SegmentValue::CenterOf(slot(runs, i))),
            text.clone(),
        )))?;
    }
    Ok(())
}
