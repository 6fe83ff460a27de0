//! Small SVG charts, written by hand (a line chart and a grouped bar chart), so that the report
//! needs no plotting library.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 470.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 130.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
    /// Labelled x positions; empty: evenly spaced numeric ticks.
    pub x_ticks: Vec<(f64, String)>,
    /// A dashed horizontal line, e.g. a goal.
    pub reference: Option<(f64, String)>,
}

pub struct BarChart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: Vec<String>,
    /// (name, one value per category)
    pub series: Vec<(String, Vec<f64>)>,
    pub reference: Option<(f64, String)>,
}

struct Frame {
    x_min: f64,
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, value: f64) -> f64 {
        let span = (self.x_max - self.x_min).max(f64::EPSILON);
        LEFT + (value - self.x_min) / span * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64) -> f64 {
        HEIGHT - BOTTOM - value / self.y_max * (HEIGHT - TOP - BOTTOM)
    }
}

pub fn line_chart(chart: &LineChart) -> String {
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(chart.x_ticks.iter().map(|t| t.0));
    let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_min, x_max) = if x_min.is_finite() {
        (x_min, x_max)
    } else {
        (0.0, 1.0)
    };
    let y_top = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(chart.reference.iter().map(|r| r.0))
        .fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(y_top);
    let frame = Frame {
        x_min,
        x_max,
        y_max,
    };
    let mut svg = open(chart.title, chart.y_label);
    y_grid(&mut svg, &frame, y_step);
    x_axis(&mut svg, &frame, chart);
    reference(&mut svg, &frame, chart.reference.as_ref());
    for (i, series) in chart.series.iter().enumerate() {
        line(&mut svg, &frame, series, COLOURS[i % COLOURS.len()]);
    }
    legend(
        &mut svg,
        chart.series.iter().map(|s| s.name.as_str()).collect(),
    );
    svg.push_str("</svg>\n");
    svg
}

/// The chart's own ticks, or evenly spaced round numbers over the frame's x range.
fn x_ticks(frame: &Frame, chart: &LineChart) -> Vec<(f64, String)> {
    if !chart.x_ticks.is_empty() {
        return chart.x_ticks.clone();
    }
    let (_, step) = nice_axis(frame.x_max - frame.x_min);
    let mut ticks = Vec::new();
    let mut x = (frame.x_min / step).ceil() * step;
    while x <= frame.x_max + step * 1e-9 {
        ticks.push((x, number(x)));
        x += step;
    }
    ticks
}

fn x_axis(svg: &mut String, frame: &Frame, chart: &LineChart) {
    for (x, label) in &x_ticks(frame, chart) {
        let px = frame.x(*x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            HEIGHT - BOTTOM + 20.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 42.0,
        escape(chart.x_label)
    );
}

/// One series: a polyline, with a dot on each point where there are few enough to tell apart.
fn line(svg: &mut String, frame: &Frame, series: &Series, colour: &str) {
    let path: Vec<String> = series
        .points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", frame.x(*x), frame.y(*y)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        path.join(" ")
    );
    if series.points.len() <= 40 {
        for (x, y) in &series.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                frame.x(*x),
                frame.y(*y)
            );
        }
    }
}

pub fn bar_chart(chart: &BarChart) -> String {
    let y_top = chart
        .series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .chain(chart.reference.iter().map(|r| r.0))
        .fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(y_top);
    let n = chart.categories.len().max(1) as f64;
    let frame = Frame {
        x_min: 0.0,
        x_max: n,
        y_max,
    };
    let mut svg = open(chart.title, chart.y_label);
    y_grid(&mut svg, &frame, y_step);
    let slot = (WIDTH - LEFT - RIGHT) / n;
    let groups = chart.series.len().max(1) as f64;
    let bar = slot * 0.8 / groups;
    for (c, category) in chart.categories.iter().enumerate() {
        let x0 = LEFT + slot * c as f64 + slot * 0.1;
        for (s, (_, values)) in chart.series.iter().enumerate() {
            let value = values.get(c).copied().unwrap_or(0.0);
            let (x, y) = (x0 + bar * s as f64, frame.y(value));
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                (bar - 2.0).max(1.0),
                (HEIGHT - BOTTOM - y).max(0.0),
                COLOURS[s % COLOURS.len()],
                escape(category),
                number(value)
            );
            if bar >= 22.0 {
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    x + bar / 2.0 - 1.0,
                    y - 3.0,
                    number(value)
                );
            }
        }
        let cx = LEFT + slot * (c as f64 + 0.5);
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-30 {cx:.1} {:.1})">{}</text>"#,
            HEIGHT - BOTTOM + 16.0,
            HEIGHT - BOTTOM + 16.0,
            escape(category)
        );
    }
    reference(&mut svg, &frame, chart.reference.as_ref());
    legend(
        &mut svg,
        chart.series.iter().map(|s| s.0.as_str()).collect(),
    );
    svg.push_str("</svg>\n");
    svg
}

fn open(title: &str, y_label: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{:.1}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let mid = TOP + (HEIGHT - TOP - BOTTOM) / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 16 {mid:.1})">{}</text>"#,
        escape(y_label)
    );
    svg
}

fn y_grid(svg: &mut String, frame: &Frame, step: f64) {
    let mut value = 0.0;
    while value <= frame.y_max + step * 1e-9 {
        let y = frame.y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            number(value)
        );
        value += step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
}

fn reference(svg: &mut String, frame: &Frame, line: Option<&(f64, String)>) {
    if let Some((value, label)) = line {
        let y = frame.y(*value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            WIDTH - RIGHT,
            LEFT + 4.0,
            y - 4.0,
            escape(label)
        );
    }
}

fn legend(svg: &mut String, names: Vec<&str>) {
    let mut x = LEFT;
    let mut y = HEIGHT - 32.0;
    for (i, name) in names.iter().enumerate() {
        let width = 28.0 + 7.0 * name.chars().count() as f64;
        if x > LEFT && x + width > WIDTH - RIGHT {
            x = LEFT;
            y += 16.0;
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            escape(name)
        );
        x += width;
    }
}

/// An axis maximum at or above `top` and a step of 1, 2 or 5 × 10^k giving about 5 gridlines.
pub fn nice_axis(top: f64) -> (f64, f64) {
    if !(top.is_finite() && top > 0.0) {
        return (1.0, 0.2);
    }
    let rough = top / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    ((top / step).ceil() * step, step)
}

pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_a_round_number_above_the_data() {
        assert_eq!(nice_axis(93.0), (100.0, 20.0));
        assert_eq!(nice_axis(0.7), (0.8, 0.2));
        assert_eq!(nice_axis(1234.0), (1500.0, 500.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn a_line_chart_draws_each_series_and_escapes_labels() {
        let svg = line_chart(&LineChart {
            title: "p99 <ms> & more",
            x_label: "concurrency",
            y_label: "ms",
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(0.0, 1.0), (1.0, 3.0)],
                },
                Series {
                    name: "b".into(),
                    points: vec![(0.0, 2.0), (1.0, 2.5)],
                },
            ],
            x_ticks: vec![(0.0, "1".into()), (1.0, "8".into())],
            reference: Some((2.8, "goal".into())),
        });
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("p99 &lt;ms&gt; &amp; more"));
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn a_bar_chart_has_one_bar_per_value() {
        let svg = bar_chart(&BarChart {
            title: "memory",
            y_label: "MiB",
            categories: vec!["auth".into(), "orders".into(), "tickets".into()],
            series: vec![
                ("idle".into(), vec![10.0, 12.0, 11.0]),
                ("peak".into(), vec![200.0, 30.0, 25.0]),
            ],
            reference: None,
        });
        assert_eq!(svg.matches("<rect x=").count(), 6 + 2);
    }
}
