//! The sweep's curve, drawn with plotters to an SVG: server outbound KB/s and P99
//! input->broadcast latency against clients, ours beside the source's rows.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Summary;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Draws `points` (client count, summary) and `source` rows (clients, KB/s, P99 ms, deviation)
/// to `path` as an SVG with two panels.
///
/// # Errors
/// When the file cannot be written.
pub fn sweep(
    path: &Path,
    points: &[(u64, Summary)],
    source: &[(u64, f64, f64, u32)],
) -> Result<(), Error> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let ours_kbps: Vec<(f64, f64)> = points
        .iter()
        .map(|(clients, summary)| {
            let playing = (summary.clients - summary.unmatched) as f64;
            (*clients as f64, summary.kbps_in * playing)
        })
        .collect();
    let ours_p99: Vec<(f64, f64)> = points
        .iter()
        .map(|(clients, summary)| (*clients as f64, summary.p99_ms))
        .collect();
    let source_kbps: Vec<(f64, f64)> = source.iter().map(|row| (row.0 as f64, row.1)).collect();
    let source_p99: Vec<(f64, f64)> = source.iter().map(|row| (row.0 as f64, row.2)).collect();
    panel(&left, "Server outbound KB/s", &ours_kbps, &source_kbps)?;
    panel(
        &right,
        "P99 input->broadcast ms (beyond input delay)",
        &ours_p99,
        &source_p99,
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    ours: &[(f64, f64)],
    source: &[(f64, f64)],
) -> Result<(), Error> {
    let all = ours.iter().chain(source);
    let max_x = all.clone().map(|point| point.0).fold(1.0, f64::max) * 1.05;
    let max_y = all.map(|point| point.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .light_line_style(WHITE)
        .draw()?;
    for (points, color, label) in [(ours, BLUE, "Garrison"), (source, RED, "source")] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .map(|point| Circle::new(*point, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}
