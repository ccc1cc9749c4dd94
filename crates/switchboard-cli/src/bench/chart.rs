//! PNG charts of results (plotters' bitmap backend): throughput bars, one panel per scenario,
//! above latency percentile lines, one line per result. The font (DejaVu Sans) is embedded,
//! so drawing needs no system font library.

use std::{path::Path, sync::Once};

use plotters::{
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};

use super::report::BenchResult;

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
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    // Names in first-seen order give each run its colour in both charts.
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
    let panels = top.split_evenly((1, scenarios.len().max(1)));
    for (panel, scenario) in panels.iter().zip(&scenarios) {
        let runs: Vec<&BenchResult> = results.iter().filter(|r| r.scenario == *scenario).collect();
        let unit = runs
            .first()
            .map_or("per second", |r| r.results.throughput_unit.as_str());
        let max = runs
            .iter()
            .map(|r| r.results.throughput)
            .fold(0.0, f64::max)
            .max(1.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{scenario}: {unit}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            // Integer ranges are inclusive in plotters: 0..n-1 gives n segments.
            .build_cartesian_2d(
                (0..runs.len().saturating_sub(1) as u32).into_segmented(),
                0.0..max * 1.15,
            )?;
        let labels: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(runs.len().max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| super::engine::human(*v))
            .label_style(("sans-serif", 13))
            .draw()?;
        let value_style = TextStyle::from(("sans-serif", 14).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, r) in runs.iter().enumerate() {
            let c = color(&r.name);
            let v = r.results.throughput;
            chart.draw_series(
                Histogram::vertical(&chart)
                    .style(c.filled())
                    .margin(16)
                    .data([(i as u32, v)]),
            )?;
            chart.draw_series(std::iter::once(Text::new(
                super::engine::human(v),
                (SegmentValue::CenterOf(i as u32), v),
                value_style.clone(),
            )))?;
        }
    }

    // Latency percentiles, log scale, one line per result that has latencies.
    let with_latency: Vec<&BenchResult> = results
        .iter()
        .filter(|r| r.results.latency_us.is_some())
        .collect();
    let points = ["p50", "p90", "p99", "p99.9", "max"];
    let (lo, hi) = with_latency
        .iter()
        .filter_map(|r| r.results.latency_us)
        .fold((f64::MAX, 0.0f64), |(lo, hi), l| {
            (lo.min(l.p50.max(1.0)), hi.max(l.max.max(1.0)))
        });
    let (lo, hi) = if with_latency.is_empty() {
        (1.0, 10.0)
    } else {
        ((lo / 1.5).max(0.5), hi * 1.5)
    };
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency percentiles (µs, log scale)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..(points.len() as u32 - 1), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(points.len())
        .x_label_formatter(&|x| points.get(*x as usize).copied().unwrap_or("").to_string())
        .y_label_formatter(&|v| super::engine::human(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    for r in &with_latency {
        let Some(l) = r.results.latency_us else {
            continue;
        };
        let c = color(&r.name);
        let values = [l.p50, l.p90, l.p99, l.p99_9, l.max];
        let label = if scenarios.len() > 1 {
            format!("{} ({})", r.name, r.scenario)
        } else {
            r.name.clone()
        };
        chart
            .draw_series(LineSeries::new(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as u32, v.max(lo))),
                c.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if !with_latency.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
