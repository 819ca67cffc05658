//! The `hugepfn report` chart: four panels against BAR size (log scale), one line per leaf
//! size, native (solid, thick) and in a VM (light, thin), drawn with plotters' SVG backend.

use std::path::Path;

use hugepfn_hw::sweep::SweepPoint;
use plotters::coord::Shift;
use plotters::prelude::*;

type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn leaf_color(leaf: u64) -> RGBColor {
    match leaf {
        4096 => RGBColor(200, 40, 40),
        0x20_0000 => RGBColor(30, 100, 200),
        _ => RGBColor(30, 150, 60),
    }
}

fn leaf_name(leaf: u64) -> &'static str {
    match leaf {
        4096 => "4 KiB",
        0x20_0000 => "2 MiB",
        _ => "1 GiB",
    }
}

fn panel(
    area: &Panel<'_>,
    pts: &[SweepPoint],
    title: &str,
    log_y: bool,
    y: impl Fn(&SweepPoint) -> f64,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let xs: Vec<f64> = pts
        .iter()
        .map(|p| p.bar as f64 / (1u64 << 20) as f64)
        .collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    let ys: Vec<f64> = pts.iter().map(&y).collect();
    let ymax = ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.3;
    let ymin_pos = ys
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(ymax / 10.0)
        / 2.0;
    // A log axis has no zero: zeros sit on its floor. A linear axis draws them where they are.
    let floor = if log_y { ymin_pos } else { 0.0 };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70);
    let series = |leaf: u64, vm: bool| -> Vec<(f64, f64)> {
        pts.iter()
            .filter(|p| p.leaf == leaf && p.vm == vm)
            .map(|p| (p.bar as f64 / (1u64 << 20) as f64, y(p).max(floor)))
            .collect()
    };
    let leaves = [4096u64, 0x20_0000, 0x4000_0000];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("BAR size (MiB)")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(e)?;
            for leaf in leaves {
                for vm in [false, true] {
                    let c = leaf_color(leaf);
                    let style = if vm {
                        c.mix(0.45).stroke_width(1)
                    } else {
                        c.stroke_width(3)
                    };
                    let label = format!(
                        "{} {}",
                        leaf_name(leaf),
                        if vm { "VM (EPT same size)" } else { "native" }
                    );
                    chart
                        .draw_series(LineSeries::new(series(leaf, vm), style))
                        .map_err(e)?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(e)?;
        }};
    }
    if log_y {
        draw!(
            b.build_cartesian_2d((x0..x1).log_scale(), (ymin_pos..ymax).log_scale())
                .map_err(e)?
        );
    } else {
        draw!(
            b.build_cartesian_2d((x0..x1).log_scale(), 0.0..ymax)
                .map_err(e)?
        );
    }
    Ok(())
}

/// Draws the report to `out`.
pub fn draw(out: &Path, pts: &[SweepPoint], cpu: &str, costs_from: &str) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = SVGBackend::new(out, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!("What a BAR costs by leaf size — model, cpu {cpu}, costs from {costs_from}"),
            ("sans-serif", 20),
        )
        .map_err(e)?;
    let areas = root.split_evenly((2, 2));
    panel(
        &areas[0],
        pts,
        "faults to map the whole BAR (+ EPT violations in a VM)",
        true,
        |p| p.faults as f64,
    )?;
    panel(
        &areas[1],
        pts,
        "page-table bytes (+ EPT in a VM)",
        true,
        |p| p.table_bytes as f64,
    )?;
    panel(
        &areas[2],
        pts,
        "STLB misses per 1000 random loads",
        false,
        |p| p.walks_per_k,
    )?;
    panel(&areas[3], pts, "estimated ns per random load", false, |p| {
        p.ns_per_load
    })?;
    root.present().map_err(e)?;
    Ok(())
}
