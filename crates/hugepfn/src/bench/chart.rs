//! The growth chart of `hugepfn bench --growth --plot FILE`: time and memory against BAR size,
//! both axes logarithmic, drawn with plotters' SVG backend.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::growth::{GrowthPoint, TARGET_RSS, TARGET_TIME};

type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A named line: points (BAR GiB, value).
struct Line {
    name: &'static str,
    color: RGBColor,
    pts: Vec<(f64, f64)>,
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn panel(
    area: &Panel<'_>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    target: (f64, &str),
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let all = || lines.iter().flat_map(|l| l.pts.iter().copied());
    let x0 = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = all().map(|p| p.0).fold(0.0, f64::max).max(x0 * 2.0);
    let ymin = all()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(target.0)
        / 2.0;
    let ymax = all().map(|p| p.1).fold(target.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (ymin..ymax).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("BAR size (GiB)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(e)?;
    for l in lines {
        let style = l.color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(l.pts.iter().copied(), style))
            .map_err(e)?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        chart
            .draw_series(l.pts.iter().map(|&p| Circle::new(p, 3, l.color.filled())))
            .map_err(e)?;
    }
    let dashed = RGBColor(120, 120, 120).stroke_width(1);
    chart
        .draw_series(LineSeries::new([(x0, target.0), (x1, target.0)], dashed))
        .map_err(e)?
        .label(target.1)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], dashed));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Draws the sweep to `out`.
pub fn draw(out: &Path, pts: &[GrowthPoint], title: &str) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = SVGBackend::new(out, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(e)?;
    let areas = root.split_evenly((1, 2));
    let time = Line {
        name: "time to fault every 4 KiB page",
        color: RGBColor(200, 40, 40),
        pts: pts
            .iter()
            .map(|p| (gib(p.bar), p.elapsed_ns as f64 / 1e9))
            .collect(),
    };
    panel(
        &areas[0],
        "time (one thread)",
        "seconds",
        &[time],
        (TARGET_TIME.as_secs_f64(), "issue 16: 512 GiB in < 10 s"),
    )?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let tables = Line {
        name: "page tables (4 KiB pages, as the kernel counts them)",
        color: RGBColor(30, 100, 200),
        pts: pts
            .iter()
            .map(|p| (gib(p.bar), mib(p.table_bytes)))
            .collect(),
    };
    let rss = Line {
        name: "peak RSS of the model",
        color: RGBColor(30, 150, 60),
        pts: pts
            .iter()
            .filter_map(|p| Some((gib(p.bar), mib(p.peak_rss?))))
            .collect(),
    };
    panel(
        &areas[1],
        "memory",
        "MiB",
        &[tables, rss],
        (mib(TARGET_RSS), "issue 16: peak RSS <= 1.5 GiB at 512 GiB"),
    )?;
    root.present().map_err(e)?;
    Ok(())
}
