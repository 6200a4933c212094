//! PNG plots of a run: drawn as SVG with plotters, rasterised with resvg (DejaVu fonts from
//! Debian's fonts-dejavu-core).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::shoppers::Answer;
use crate::stats::Spread;

/// Where Debian keeps the DejaVu fonts.
const FONTS: &str = "/usr/share/fonts/truetype/dejavu";

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// One series of a bar chart: a name and a value (median, min, max) per category.
pub struct Bars {
    /// Legend entry.
    pub name: String,
    /// One per category; `None` draws nothing.
    pub values: Vec<Option<Spread>>,
}

/// A bar chart panel.
pub struct Panel {
    /// Caption.
    pub title: String,
    /// Y axis description.
    pub y_desc: String,
    /// Category names along the x axis.
    pub categories: Vec<String>,
    /// Series, drawn side by side within each category.
    pub series: Vec<Bars>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A bar chart's margin and the width of its value axis, in pixels.
const MARGIN: usize = 12;
const Y_LABELS: usize = 80;
/// Size of the category names under the bars, in pixels; a DejaVu Sans character is about 0.6
/// of it wide.
const CATEGORY_FONT: usize = 13;

/// `label` in lines of at most `max_chars` characters, broken between words (a longer word
/// keeps a line of its own).
fn wrap_label(label: &str, max_chars: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in label.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= max_chars => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// Decimals that tell a value axis's ticks apart: plotters steps by 1, 2 or 5 times a power of
/// ten, about a tenth of the axis.
fn axis_decimals(top: f64) -> usize {
    (1.0 - top.log10().floor()).clamp(0.0, 4.0) as usize
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Draws panels stacked vertically into a PNG.
pub fn bar_panels(path: &Path, panels: &[Panel]) -> anyhow::Result<()> {
    let (w, h) = (1200u32, 380 * panels.len() as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (panel, area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
            draw_bars(&area, panel)?;
        }
        root.present().map_err(err)?;
    }
    write_png(&svg, path)
}

fn draw_bars(area: &Area<'_>, p: &Panel) -> anyhow::Result<()> {
    let n = p.categories.len();
    let top = p
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten().map(|v| v.max))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        // Headroom for the legend.
        * if p.series.len() > 1 { 1.4 } else { 1.15 };
    // Category names are wrapped to the width of their slot, so that long ones do not run
    // into their neighbours.
    let slot_px = (area.dim_in_pixel().0 as usize).saturating_sub(MARGIN * 2 + Y_LABELS) / n.max(1);
    let labels: Vec<Vec<String>> = p
        .categories
        .iter()
        .map(|c| wrap_label(c, slot_px * 10 / (CATEGORY_FONT * 6)))
        .collect();
    let lines = labels.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 20))
        .margin(MARGIN as u32)
        .x_label_area_size(12 + lines * (CATEGORY_FONT as u32 + 3))
        .y_label_area_size(Y_LABELS as u32)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    let decimals = axis_decimals(top);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&|_| String::new())
        .y_desc(&p.y_desc)
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let base = area.get_base_pixel();
    let style = TextStyle::from(("sans-serif", CATEGORY_FONT as u32).into_font())
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (c, name) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(c as f64, 0.0));
        for (i, line) in name.iter().enumerate() {
            let at = (
                x - base.0,
                y - base.1 + 6 + i as i32 * (CATEGORY_FONT as i32 + 3),
            );
            area.draw(&Text::new(line.clone(), at, style.clone()))
                .map_err(err)?;
        }
    }
    let k = p.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (si, s) in p.series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let x0 = |c: usize| c as f64 - 0.4 + si as f64 * width;
        let values: Vec<(usize, Spread)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(c, v)| v.filter(|v| v.median.is_finite()).map(|v| (c, v)))
            .collect();
        chart
            .draw_series(values.iter().map(|&(c, v)| {
                Rectangle::new(
                    [(x0(c) + 0.01, 0.0), (x0(c) + width - 0.01, v.median)],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        // Whiskers: min to max of the runs.
        chart
            .draw_series(values.iter().map(|&(c, v)| {
                let xc = x0(c) + width / 2.0;
                PathElement::new(vec![(xc, v.min), (xc, v.max)], BLACK.stroke_width(2))
            }))
            .map_err(err)?;
    }
    if p.series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Latency of every shopper request around the kill, one panel per proxy; failed requests red.
pub fn failover_timeline(path: &Path, runs: &[(&str, &[Answer], u64)]) -> anyhow::Result<()> {
    let (w, h) = (1200u32, 340 * runs.len() as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max_ms = runs
            .iter()
            .flat_map(|(_, a, _)| a.iter().map(|a| a.latency_us as f64 / 1000.0))
            .fold(1.0f64, f64::max)
            * 1.5;
        for (&(name, answers, kill_ms), area) in runs.iter().zip(root.split_evenly((runs.len(), 1)))
        {
            let t = |a: &Answer| (a.sent_ms as f64 - kill_ms as f64) / 1000.0;
            let (t0, t1) = answers
                .iter()
                .map(t)
                .fold((0.0f64, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
            let mut chart = ChartBuilder::on(&area)
                .caption(
                    format!("{name}: latency of each request; unit killed at 0 s; failures in red"),
                    ("sans-serif", 18),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(t0..t1.max(t0 + 1.0), (0.05f64..max_ms).log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("seconds since the kill")
                .y_desc("latency, ms (log)")
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(err)?;
            let ok = |a: &&Answer| (200..300).contains(&a.status);
            chart
                .draw_series(answers.iter().filter(ok).map(|a| {
                    Circle::new(
                        (t(a), (a.latency_us as f64 / 1000.0).max(0.05)),
                        2,
                        PALETTE[0].filled(),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(answers.iter().filter(|a| !ok(a)).map(|a| {
                    Circle::new(
                        (t(a), (a.latency_us as f64 / 1000.0).max(0.05)),
                        4,
                        RED.filled(),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, 0.05), (0.0, max_ms)],
                    BLACK.stroke_width(1),
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    write_png(&svg, path)
}

/// One line of a line chart: a legend entry and its (x, y) points.
pub struct Line<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with a dashed horizontal line at `goal` (the target a scenario judges by).
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Line<'_>],
    goal: f64,
) -> anyhow::Result<()> {
    let (w, h) = (1200u32, 420u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let points = || series.iter().flat_map(|s| s.points.iter());
        let x_max = points().map(|p| p.0).fold(1.0f64, f64::max);
        let y_max = points()
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold(goal, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied().filter(|p| p.1.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, goal), (x_max, goal)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("goal: {goal}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    write_png(&svg, path)
}

fn write_png(svg: &str, path: &Path) -> anyhow::Result<()> {
    let mut opt = resvg::usvg::Options::default();
    {
        let db = opt.fontdb_mut();
        db.load_fonts_dir(FONTS);
        db.set_sans_serif_family("DejaVu Sans");
    }
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("reading the drawn SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .context("allocating the image")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .save_png(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether the fonts the plots need are there.
pub fn fonts_present() -> bool {
    Path::new(FONTS).join("DejaVuSans.ttf").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_names_wrap_between_words() {
        assert_eq!(
            wrap_label("HAProxy over TLS, 2 workers on both CPUs", 16),
            ["HAProxy over", "TLS, 2 workers", "on both CPUs"]
        );
        assert_eq!(
            wrap_label("direct to a backend", 40),
            ["direct to a backend"]
        );
        // A word longer than the line keeps a line of its own, whole.
        assert_eq!(
            wrap_label("a nbthread-2-everywhere b", 5),
            ["a", "nbthread-2-everywhere", "b"]
        );
    }

    #[test]
    fn axis_ticks_get_the_decimals_that_tell_them_apart() {
        // CPU seconds per 10k requests, ticks every 0.05.
        assert_eq!(axis_decimals(0.5), 2);
        assert_eq!(axis_decimals(5.0), 1);
        assert_eq!(axis_decimals(20.0), 0);
        assert_eq!(axis_decimals(50_000.0), 0);
    }
}
