//! The SVG chart of a load run (`loadtest run --chart`): throughput and the p50/p99 latency
//! over time, one panel each, one colour per traffic kind.

use super::report::Summary;
use crate::svg::Svg;

/// Throughput and latency percentiles over time, one panel each, as a self-contained SVG.
pub fn svg_chart(title: &str, runs: &[(String, Summary)]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    const PAD: f64 = 60.0;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let secs = runs
        .iter()
        .map(|(_, s)| s.per_second.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let max_rps = runs
        .iter()
        .flat_map(|(_, s)| s.per_second.iter().map(|p| p.requests))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_lat = runs
        .iter()
        .flat_map(|(_, s)| s.per_second.iter().map(|p| p.p99_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1000.0;
    let x = |t: f64| PAD + t / (secs - 1.0) * (W - 2.0 * PAD);
    let mut svg = Svg::new(W, 2.0 * H + 60.0, &[]);
    svg.text(&[("x", &PAD), ("y", &24), ("font-size", &16)], title);
    for (panel, (label, max)) in [
        ("requests/s", max_rps),
        ("latency ms (p50 solid, p99 dashed)", max_lat),
    ]
    .into_iter()
    .enumerate()
    {
        let top = 40.0 + panel as f64 * (H + 10.0);
        let y = |v: f64| top + H - 30.0 - v / max * (H - 50.0);
        let b = top + H - 30.0;
        let axis = "#888";
        svg.element(
            "line",
            &[
                ("x1", &PAD),
                ("y1", &b),
                ("x2", &(W - PAD)),
                ("y2", &b),
                ("stroke", &axis),
            ],
        )
        .element(
            "line",
            &[
                ("x1", &PAD),
                ("y1", &(top + 10.0)),
                ("x2", &PAD),
                ("y2", &b),
                ("stroke", &axis),
            ],
        )
        .text(&[("x", &PAD), ("y", &(top + 8.0))], label)
        .text(&[("x", &4), ("y", &(y(max) + 4.0))], &format!("{max:.1}"))
        .text(&[("x", &4), ("y", &b)], "0")
        .text(
            &[("x", &(W - PAD - 20.0)), ("y", &(top + H - 12.0))],
            &format!("{:.0} s", secs - 1.0),
        );
        for (i, (name, s)) in runs.iter().enumerate() {
            let color = colors[i % colors.len()];
            let series: Vec<Vec<(f64, f64)>> = if panel == 0 {
                vec![
                    s.per_second
                        .iter()
                        .map(|p| (p.t as f64, p.requests as f64))
                        .collect(),
                ]
            } else {
                vec![
                    s.per_second
                        .iter()
                        .map(|p| (p.t as f64, p.p50_us as f64 / 1000.0))
                        .collect(),
                    s.per_second
                        .iter()
                        .map(|p| (p.t as f64, p.p99_us as f64 / 1000.0))
                        .collect(),
                ]
            };
            for (k, points) in series.iter().enumerate() {
                let pts: Vec<String> = points
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                    .collect();
                let pts = pts.join(" ");
                let line: [(&str, &dyn std::fmt::Display); 3] =
                    [("fill", &"none"), ("stroke", &color), ("stroke-width", &2)];
                if k == 1 {
                    svg.element(
                        "polyline",
                        &[
                            line[0],
                            line[1],
                            line[2],
                            ("stroke-dasharray", &"5,4"),
                            ("points", &pts),
                        ],
                    );
                } else {
                    svg.element("polyline", &[line[0], line[1], line[2], ("points", &pts)]);
                }
            }
            if panel == 0 {
                svg.text(
                    &[
                        ("x", &(W - PAD - 160.0)),
                        ("y", &(top + 20.0 + 16.0 * i as f64)),
                        ("fill", &color),
                    ],
                    name,
                );
            }
        }
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::svg_chart;
    use crate::loadtest::report::{Latency, Second, Summary};

    /// The rendering `svg_chart` must reproduce byte for byte.
    const GOLDEN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/loadtest/testdata/chart.svg"
    );
    const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test --lib loadtest::chart";

    /// A summary built by hand from (requests, p50 µs, p99 µs) per second: no clock, no
    /// randomness, so the chart is the same on every run.
    fn summary(seconds: &[(u64, u64, u64)]) -> Summary {
        let requests = seconds.iter().map(|s| s.0).sum();
        Summary {
            requests,
            duration_s: seconds.len() as f64,
            rps: requests as f64 / seconds.len() as f64,
            statuses: BTreeMap::from([("200".to_owned(), requests)]),
            errors: BTreeMap::new(),
            latency_us: Latency {
                p50: 1_200,
                p90: 3_000,
                p99: 6_500,
                p999: 9_000,
                max: 12_000,
            },
            per_second: seconds
                .iter()
                .enumerate()
                .map(|(t, &(requests, p50_us, p99_us))| Second {
                    t: t as u64,
                    requests,
                    p50_us,
                    p99_us,
                })
                .collect(),
        }
    }

    #[test]
    fn chart_matches_the_golden_file() {
        // Two traffic kinds of different lengths (the longer sets the time axis), and names
        // that need escaping in SVG.
        let runs = vec![
            (
                "session".to_owned(),
                summary(&[
                    (950, 1_100, 4_200),
                    (1_010, 1_150, 5_300),
                    (990, 1_240, 6_100),
                    (1_030, 1_180, 4_900),
                    (870, 1_420, 7_750),
                    (400, 1_300, 5_000),
                ]),
            ),
            (
                "flood <unknown & wrong>".to_owned(),
                summary(&[
                    (5_200, 310, 1_900),
                    (5_450, 295, 2_050),
                    (5_100, 330, 2_400),
                    (4_980, 350, 2_600),
                    (2_300, 340, 2_200),
                ]),
            ),
        ];
        let svg = svg_chart("tokengate loadtest: Mixed, 8 connections & \"more\"", &runs);

        crate::svg::assert_golden(GOLDEN, &svg, REGENERATE);
    }
}
