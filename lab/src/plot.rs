//! The latency-vs-corpus-size plot of docs/performance.md, drawn from a scale run.
//!
//! SVG, so it needs no fonts on the machine that draws it (the viewer renders
//! the text) and diffs as text.

use std::path::Path;

use plotters::prelude::*;

use crate::scale::{percentile, SizeResult, MODES};

/// Errors drawing the plot.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Draws search latency (p50 and p99, both pipelines) against corpus size,
/// log-log, to `path`. `subtitle` names the machine and the command.
pub fn latency_vs_size(
    results: &[SizeResult],
    subtitle: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if results.is_empty() {
        return Err(fail(&"no results"));
    }
    let ms = |xs: &[f64], p| percentile(xs, p) * 1e3;
    let mut y_min = f64::INFINITY;
    let mut y_max: f64 = 0.0;
    for r in results {
        for l in &r.search {
            for xs in [&l.plaintext, &l.encrypted] {
                y_min = y_min.min(ms(xs, 0.5));
                y_max = y_max.max(ms(xs, 0.99));
            }
        }
    }
    let x_min = results.iter().map(|r| r.chunks).min().unwrap_or(1) as f64;
    let x_max = results.iter().map(|r| r.chunks).max().unwrap_or(1) as f64;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (title_area, chart_area) = root.split_vertically(60);
    title_area
        .draw(&Text::new(
            format!(
                "eerag search latency vs corpus size (k = {}, over HTTP)",
                crate::scale::K
            ),
            (20, 12),
            ("sans-serif", 22).into_font(),
        ))
        .map_err(|e| fail(&e))?;
    title_area
        .draw(&Text::new(
            subtitle.to_string(),
            (20, 40),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(|e| fail(&e))?;

    let mut chart = ChartBuilder::on(&chart_area)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_min / 1.5..x_max * 1.5).log_scale(),
            // Headroom above the data for the legend.
            (y_min / 1.5..y_max * 8.0).log_scale(),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("chunks in the collection")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format_count(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;

    for (m, mode) in MODES.iter().enumerate() {
        let colour = COLOURS[m % COLOURS.len()];
        let name = format!("{mode:?}").to_lowercase();
        let series = |pick: fn(&crate::scale::Latencies) -> &Vec<f64>, p: f64| {
            results
                .iter()
                .map(|r| (r.chunks as f64, ms(pick(&r.search[m]), p)))
                .collect::<Vec<_>>()
        };
        let encrypted_p50 = series(|l| &l.encrypted, 0.5);
        let encrypted_p99 = series(|l| &l.encrypted, 0.99);
        let plaintext_p50 = series(|l| &l.plaintext, 0.5);
        chart
            .draw_series(LineSeries::new(
                encrypted_p50.clone(),
                colour.stroke_width(3),
            ))
            .map_err(|e| fail(&e))?
            .label(format!("{name} p50, encrypted"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(3)));
        chart
            .draw_series(
                encrypted_p50
                    .iter()
                    .map(|&p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(
                plaintext_p50
                    .iter()
                    .map(|&p| Cross::new(p, 6, colour.stroke_width(2))),
            )
            .map_err(|e| fail(&e))?
            .label(format!("{name} p50, plaintext"))
            .legend(move |(x, y)| Cross::new((x + 12, y), 6, colour.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                encrypted_p99,
                colour.mix(0.45).stroke_width(1),
            ))
            .map_err(|e| fail(&e))?
            .label(format!("{name} p99, encrypted"))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], colour.mix(0.45).stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn format_count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.0}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
