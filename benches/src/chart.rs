//! Charts of a `compare` run: latency (p50 and p99, log scale) against offered load in
//! open loop, one line per system, as SVG (always) and PNG (when a font is available).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{HarnessError, Result};
use crate::report::ScenarioReport;

fn color(system: &str) -> RGBColor {
    match system {
        "hub" => RGBColor(214, 39, 40),
        "haproxy" => RGBColor(31, 119, 180),
        "nginx" => RGBColor(44, 160, 44),
        _ => RGBColor(60, 60, 60),
    }
}

type Series = Vec<(String, Vec<(f64, f64, f64)>)>;

fn series(sc: &ScenarioReport) -> Series {
    let mut out: Series = Vec::new();
    for p in sc.points.iter().filter(|p| p.group == "main") {
        let Some(x) = p.offered_rps else { continue };
        let y = (
            p.merged.latency.p50_ms.max(0.001),
            p.merged.latency.p99_ms.max(0.001),
        );
        match out.iter_mut().find(|(s, _)| *s == p.system) {
            Some((_, v)) => v.push((x, y.0, y.1)),
            None => out.push((p.system.clone(), vec![(x, y.0, y.1)])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    data: &Series,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(e)?;
    let (xmin, xmax) = data
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = data
        .iter()
        .flat_map(|(_, v)| v.iter().flat_map(|p| [p.1, p.2]))
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let _ = xmin;
    let (x0, x1) = (0.0, xmax * 1.1 + 1.0);
    let (y0, y1) = (ymin * 0.7, ymax * 1.5);
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    for (area, which) in [(left, "p50"), (right, "p99")] {
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{which} latency"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("offered load (requests/s)")
            .y_desc("latency (ms, log)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(e)?;
        for (system, pts) in data {
            let c = color(system);
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, if which == "p50" { p.1 } else { p.2 }))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(e)?
                .label(system.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|p| Circle::new(*p, 4, c.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// Draws the scenario's chart into `dir`; returns the files written (none when the
/// scenario has no open-loop point) and a note when the PNG could not be drawn.
pub fn write(sc: &ScenarioReport, dir: &Path) -> Result<(Vec<PathBuf>, Option<String>)> {
    let data = series(sc);
    if data.is_empty() {
        return Ok((Vec::new(), None));
    }
    let title = format!("{}: latency against offered load (open loop)", sc.name);
    let svg = dir.join(format!("latency-{}.svg", sc.name));
    draw(
        SVGBackend::new(&svg, (1200, 500)).into_drawing_area(),
        &title,
        &data,
    )
    .map_err(|m| HarnessError::Report(format!("{}: {m}", svg.display())))?;
    let mut files = vec![svg];
    let png = dir.join(format!("latency-{}.png", sc.name));
    let note = match draw(
        BitMapBackend::new(&png, (1200, 500)).into_drawing_area(),
        &title,
        &data,
    ) {
        Ok(()) => {
            files.push(png);
            None
        }
        Err(m) => Some(format!("PNG chart not drawn ({m}); the SVG is complete")),
    };
    Ok((files, note))
}
