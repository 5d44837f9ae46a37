//! The SVG chart of a load run (`loadtest run --chart`): throughput and the p50/p99 latency
//! over time, one panel each, one colour per traffic kind.

use std::fmt::Write as _;

use super::report::Summary;

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
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{PAD}\" y=\"24\" font-size=\"16\">{}</text>",
        2.0 * H + 60.0,
        quick_xml::escape::escape(title)
    );
    for (panel, (label, max)) in [
        ("requests/s", max_rps),
        ("latency ms (p50 solid, p99 dashed)", max_lat),
    ]
    .into_iter()
    .enumerate()
    {
        let top = 40.0 + panel as f64 * (H + 10.0);
        let y = |v: f64| top + H - 30.0 - v / max * (H - 50.0);
        let _ = write!(
            svg,
            "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{}\" y2=\"{b}\" stroke=\"#888\"/><line x1=\"{PAD}\" y1=\"{}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#888\"/>\
<text x=\"{PAD}\" y=\"{}\">{label}</text><text x=\"4\" y=\"{}\">{max:.1}</text><text x=\"4\" y=\"{b}\">0</text>\
<text x=\"{}\" y=\"{}\">{:.0} s</text>",
            W - PAD,
            top + 10.0,
            top + 8.0,
            y(max) + 4.0,
            W - PAD - 20.0,
            top + H - 12.0,
            secs - 1.0,
            b = top + H - 30.0,
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
                let dash = if k == 1 {
                    " stroke-dasharray=\"5,4\""
                } else {
                    ""
                };
                let _ = write!(
                    svg,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                    pts.join(" ")
                );
            }
            if panel == 0 {
                let _ = write!(
                    svg,
                    "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
                    W - PAD - 160.0,
                    top + 20.0 + 16.0 * i as f64,
                    quick_xml::escape::escape(name)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
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

        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            let dir = std::path::Path::new(GOLDEN).parent().expect("a directory");
            std::fs::create_dir_all(dir).expect("create the testdata directory");
            std::fs::write(GOLDEN, &svg).expect("write the golden file");
            return;
        }
        let want = std::fs::read_to_string(GOLDEN)
            .unwrap_or_else(|e| panic!("cannot read {GOLDEN} ({e}); create it with {REGENERATE}"));
        if svg != want {
            // The SVG is one long line: point at the first difference rather than print both.
            let at = svg
                .bytes()
                .zip(want.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(svg.len().min(want.len()));
            let around = |s: &str| {
                let b = s.as_bytes();
                String::from_utf8_lossy(
                    &b[at.saturating_sub(40).min(b.len())..(at + 60).min(b.len())],
                )
                .into_owned()
            };
            panic!(
                "svg_chart no longer draws {GOLDEN}: they first differ at byte {at} \
                 (lengths {} and {})\n  drawn:  …{}…\n  golden: …{}…\n\
                 If the change is intended, regenerate the file with {REGENERATE} and review \
                 its diff.",
                svg.len(),
                want.len(),
                around(&svg),
                around(&want),
            );
        }
    }
}
