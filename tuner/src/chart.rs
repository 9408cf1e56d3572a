//! An SVG chart of simulated runs: backlog over time (top) and replicas over time (bottom), one
//! colour per HPA profile, so profiles can be compared at a glance. Plain SVG 1.1, no scripts.

use std::fmt::Write;

use crate::simulate::Outcome;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const LAG_TOP: f64 = 50.0;
const LAG_HEIGHT: f64 = 260.0;
const REPLICAS_TOP: f64 = 360.0;
const REPLICAS_HEIGHT: f64 = 140.0;
const HEIGHT: f64 = 560.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round step for axis ticks: 1, 2 or 5 x 10^n, about `target` ticks over `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn svg(title: &str, outcomes: &[Outcome]) -> String {
    let duration = outcomes.iter().filter_map(|o| o.samples.last().map(|s| s.t)).fold(1.0, f64::max);
    let max_lag = outcomes.iter().map(|o| o.peak_backlog).fold(1.0, f64::max) * 1.05;
    let max_replicas =
        outcomes.iter().flat_map(|o| o.samples.iter().map(|s| s.replicas)).max().unwrap_or(1).max(1) as f64 + 1.0;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / duration * plot;
    let y_lag = |v: f64| LAG_TOP + LAG_HEIGHT - v / max_lag * LAG_HEIGHT;
    let y_rep = |r: f64| REPLICAS_TOP + REPLICAS_HEIGHT - r / max_replicas * REPLICAS_HEIGHT;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="24" font-size="16">{}</text>"#, escape(title));
    // Axes, grid and labels.
    for (top, height, label) in [(LAG_TOP, LAG_HEIGHT, "backlog (events)"), (REPLICAS_TOP, REPLICAS_HEIGHT, "replicas")]
    {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot}" height="{height}" fill="none" stroke="#999"/><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{label}</text>"##,
            top + height / 2.0,
            top + height / 2.0
        );
    }
    let lag_step = nice_step(max_lag, 5.0);
    let mut v = 0.0;
    while v <= max_lag {
        let y = y_lag(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            human(v)
        );
        v += lag_step;
    }
    let replica_step = nice_step(max_replicas, 4.0).max(1.0);
    let mut r = 0.0;
    while r <= max_replicas {
        let y = y_rep(r);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{r:.0}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        r += replica_step;
    }
    let minutes = duration / 60.0;
    let time_step = nice_step(minutes, 8.0);
    let mut m = 0.0;
    while m <= minutes + 1e-9 {
        let xx = x(m * 60.0);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{LAG_TOP}" y2="{}" stroke="#f3f3f3"/><text x="{xx:.1}" y="{}" text-anchor="middle">{m:.0} min</text>"##,
            REPLICAS_TOP + REPLICAS_HEIGHT,
            REPLICAS_TOP + REPLICAS_HEIGHT + 18.0
        );
        m += time_step;
    }
    // One backlog line and one replica step line per profile.
    for (i, o) in outcomes.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let every = (o.samples.len() / 900).max(1);
        let mut points = String::new();
        for s in o.samples.iter().step_by(every) {
            let _ = write!(points, "{:.1},{:.1} ", x(s.t), y_lag(s.backlog));
        }
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>"#);
        let mut steps = String::new();
        let mut last: Option<i32> = None;
        for s in &o.samples {
            if let Some(prev) = last
                && prev != s.replicas
            {
                let _ = write!(steps, "{:.1},{:.1} ", x(s.t), y_rep(f64::from(prev)));
            }
            if last != Some(s.replicas) {
                let _ = write!(steps, "{:.1},{:.1} ", x(s.t), y_rep(f64::from(s.replicas)));
                last = Some(s.replicas);
            }
        }
        if let (Some(s), Some(r)) = (o.samples.last(), last) {
            let _ = write!(steps, "{:.1},{:.1}", x(s.t), y_rep(f64::from(r)));
        }
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{steps}"/>"#);
        let ly = LAG_TOP + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{ly}">{} ({} reconfigurations, peak {})</text>"#,
            WIDTH - RIGHT - 330.0,
            ly - 5.0,
            WIDTH - RIGHT - 312.0,
            escape(&o.profile),
            o.reconfigurations,
            human(o.peak_backlog)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Sample;

    fn outcome(name: &str, replicas: &[i32]) -> Outcome {
        Outcome {
            profile: name.into(),
            samples: replicas
                .iter()
                .enumerate()
                .map(|(i, &r)| Sample { t: i as f64, backlog: (i * 100) as f64, served: 0.0, replicas: r, running: r })
                .collect(),
            scalings: Vec::new(),
            reconfigurations: 2,
            paused_seconds: 0.0,
            peak_backlog: ((replicas.len() - 1) * 100) as f64,
            peak_at: 0.0,
            bursts: Vec::new(),
            over_slo_seconds: 0.0,
            replica_minutes: 0.0,
        }
    }

    #[test]
    fn one_line_pair_per_profile_escaped_and_well_formed() {
        let text =
            svg("a <test> & more", &[outcome("fast", &[2, 2, 3, 3, 2]), outcome("slow & steady", &[2, 2, 2, 3, 3])]);
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<polyline").count(), 4);
        assert!(text.contains("a &lt;test&gt; &amp; more") && text.contains("slow &amp; steady"));
        assert_eq!(text.matches('<').count(), text.matches('>').count(), "balanced tags");
        assert!(!text.contains("NaN") && !text.contains("inf"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(120_000.0, 5.0), 50_000.0);
        assert_eq!(human(12_500.0), "12k");
        assert_eq!(human(2_500_000.0), "2.5M");
    }
}
