//! Drawing a [`Tally`] as the two inline SVG charts: the bars, the legend with a fill pattern
//! per failure outcome, the axes and their labels in UTC, each client's name as escaped text.

use super::*;

impl Tally {
    /// The accessible title of the per-period chart.
    pub fn periods_title(&self) -> String {
        format!(
            "Logins per {} by outcome, {} to {} UTC",
            self.periods.name(),
            date_time(self.range.start_ms),
            date_time(self.range.end_ms)
        )
    }

    /// Logins per period by outcome: stacked bars, a legend, periods in UTC on the x axis.
    pub fn periods_svg(&self) -> String {
        const W: f64 = 900.0;
        const LEFT: f64 = 60.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 44.0;
        const PLOT_H: f64 = 200.0;
        const H: f64 = 356.0;
        let bottom = TOP + PLOT_H;
        let plot_w = W - LEFT - RIGHT;
        let totals: Vec<u64> = self.per_period.iter().map(|p| p.iter().sum()).collect();
        let (y_max, step) = scale(totals.iter().copied().max().unwrap_or(0));
        let y = |v: f64| bottom - v / y_max as f64 * PLOT_H;
        let title = self.periods_title();
        let mut svg = open(W, H, "tg-periods", &title, &self.periods_desc());
        patterns(&mut svg, "tg-periods");
        svg.text(&[("x", &LEFT), ("y", &24), ("font-size", &15)], &title);

        // Gridlines and the y axis.
        for v in (0..=y_max).step_by(step as usize) {
            let at = P(y(v as f64));
            svg.element(
                "line",
                &[
                    ("x1", &LEFT),
                    ("y1", &at),
                    ("x2", &(W - RIGHT)),
                    ("y2", &at),
                    ("stroke", &if v == 0 { "#555" } else { "#ddd" }),
                ],
            )
            .text(
                &[
                    ("x", &(LEFT - 6.0)),
                    ("y", &P(y(v as f64) + 4.0)),
                    ("text-anchor", &"end"),
                ],
                &v.to_string(),
            );
        }
        svg.text(
            &[
                ("x", &16),
                ("y", &(TOP + PLOT_H / 2.0)),
                ("text-anchor", &"middle"),
                (
                    "transform",
                    &format!("rotate(-90 16 {})", TOP + PLOT_H / 2.0),
                ),
            ],
            "Logins",
        );

        // The bars, one segment per outcome.
        let slot = plot_w / self.periods.count as f64;
        let bar = (slot * 0.8).max(1.0);
        for (i, counts) in self.per_period.iter().enumerate() {
            let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
            let when = date_time(self.periods.start(i as u64));
            let mut below = 0u64;
            for (style, &n) in STYLES.iter().zip(counts) {
                if n == 0 {
                    continue;
                }
                let (top, height) = (y((below + n) as f64), n as f64 / y_max as f64 * PLOT_H);
                below += n;
                svg.open(
                    "rect",
                    &[
                        ("x", &P(x)),
                        ("y", &P(top)),
                        ("width", &P(bar)),
                        ("height", &P(height)),
                        ("fill", &fill("tg-periods", style)),
                        ("stroke", &"#333"),
                        ("stroke-width", &0.5),
                    ],
                )
                .text_element(
                    "title",
                    &[],
                    &format!("{when} UTC: {n} {}", style.outcome.as_str()),
                )
                .close("rect");
            }
        }
        if self.counted == 0 {
            svg.text(
                &[
                    ("x", &(LEFT + plot_w / 2.0)),
                    ("y", &(TOP + PLOT_H / 2.0)),
                    ("text-anchor", &"middle"),
                    ("fill", &"#555"),
                ],
                "No logins in this range",
            );
        }

        // The x axis: period starts in UTC, at most MAX_LABELS of them.
        let mut previous_day = None;
        for i in self.label_indices() {
            let start = self.periods.start(i);
            let at = P(LEFT + slot * (i as f64 + 0.5));
            let (day, hour) = (day(start), hour(start));
            svg.element(
                "line",
                &[
                    ("x1", &at),
                    ("y1", &bottom),
                    ("x2", &at),
                    ("y2", &(bottom + 4.0)),
                    ("stroke", &"#555"),
                ],
            );
            let mid: [(&str, &dyn std::fmt::Display); 3] = [
                ("x", &at),
                ("y", &(bottom + 16.0)),
                ("text-anchor", &"middle"),
            ];
            if self.periods.hours() < 24 {
                svg.text(&mid, &hour);
                if previous_day.as_ref() != Some(&day) {
                    svg.text(
                        &[
                            ("x", &at),
                            ("y", &(bottom + 30.0)),
                            ("text-anchor", &"middle"),
                        ],
                        &day,
                    );
                }
                previous_day = Some(day);
            } else {
                svg.text(&mid, &day);
            }
        }
        let axis = match self.periods.hours() {
            1 => "Hour (UTC)".to_owned(),
            24 => "Day (UTC)".to_owned(),
            _ => format!(
                "Periods of {} from the time shown (UTC)",
                self.periods.name()
            ),
        };
        svg.text(
            &[
                ("x", &(LEFT + plot_w / 2.0)),
                ("y", &(bottom + 48.0)),
                ("text-anchor", &"middle"),
            ],
            &axis,
        );

        // The legend: every outcome, its fill and its name, four to a row.
        for (k, style) in STYLES.iter().enumerate() {
            let (col, row) = ((k % 4) as f64, (k / 4) as f64);
            let (x, y) = (LEFT + col * 200.0, bottom + 66.0 + row * 22.0);
            legend(
                &mut svg,
                x,
                y,
                &fill("tg-periods", style),
                style.outcome.as_str(),
            );
        }
        svg.finish()
    }

    fn periods_desc(&self) -> String {
        let mut parts = Vec::new();
        for style in &STYLES {
            let n: u64 = self
                .per_period
                .iter()
                .map(|p| p[style_index(style.outcome.as_str()).unwrap_or(0)])
                .sum();
            if n > 0 {
                parts.push(format!("{n} {}", style.outcome.as_str()));
            }
        }
        let mut desc = if parts.is_empty() {
            "No logins in this range.".to_owned()
        } else {
            format!("{} logins: {}.", self.counted, parts.join(", "))
        };
        if self.partial {
            desc.push_str(" Only the newest logins of the range are counted.");
        }
        desc
    }

    /// The periods labelled on the x axis: shorter than a day, those starting on a multiple of
    /// a label interval (so labels fall on round hours and midnights); else every k-th.
    fn label_indices(&self) -> Vec<u64> {
        let (count, hours) = (self.periods.count, self.periods.hours());
        if hours < 24 {
            let span = count * hours;
            let every = PERIOD_HOURS
                .iter()
                .copied()
                .filter(|l| l % hours == 0)
                .find(|l| span.div_ceil(*l) <= MAX_LABELS)
                .unwrap_or(24)
                * HOUR_MS;
            (0..count)
                .filter(|&i| self.periods.start(i).is_multiple_of(every))
                .collect()
        } else {
            (0..count)
                .step_by(count.div_ceil(MAX_LABELS) as usize)
                .collect()
        }
    }

    /// Successes and failures per client: one stacked horizontal bar each, failing clients
    /// first, with the counts and since when a failing client fails written beside it.
    pub fn clients_svg(&self) -> String {
        const W: f64 = 900.0;
        const TOP: f64 = 44.0;
        const ROW: f64 = 24.0;
        const BAR_X: f64 = 270.0;
        const BAR_W: f64 = 290.0;
        let mut rows: Vec<(String, String, u64, u64, Option<u64>)> = self
            .clients
            .iter()
            .map(|c| {
                let name = c.name.as_deref().unwrap_or("(no client named)");
                (
                    truncate(name, MAX_LABEL_CHARS),
                    truncate(name, MAX_TITLE_CHARS),
                    c.successes,
                    c.failures,
                    c.failing_since_ms,
                )
            })
            .collect();
        if let Some(o) = &self.others {
            let label = format!(
                "{} other client{}",
                o.clients,
                if o.clients == 1 { "" } else { "s" }
            );
            rows.push((label.clone(), label, o.successes, o.failures, None));
        }
        let height = TOP + ROW * rows.len().max(1) as f64 + 50.0;
        let title = "Logins per client by result";
        let desc = if rows.is_empty() {
            "No logins in this range.".to_owned()
        } else {
            let failing = self
                .clients
                .iter()
                .filter(|c| c.failing_since_ms.is_some())
                .count();
            let all = self.clients.len() + self.others.as_ref().map_or(0, |o| o.clients);
            format!(
                "{all} client{}; {failing} failing at their latest login.",
                if all == 1 { "" } else { "s" }
            )
        };
        let mut svg = open(W, height, "tg-clients", title, &desc);
        patterns(&mut svg, "tg-clients");
        svg.text(&[("x", &10), ("y", &24), ("font-size", &15)], title);
        let max = rows.iter().map(|r| r.2 + r.3).max().unwrap_or(0).max(1) as f64;
        let ok = &STYLES[0];
        let failed = &STYLES[2];
        for (i, (label, full, successes, failures, since)) in rows.iter().enumerate() {
            let top = TOP + ROW * i as f64;
            svg.open("g", &[])
                .text_element("title", &[], full)
                .text(&[("x", &10), ("y", &P(top + 15.0))], label)
                .close("g");
            let mut x = BAR_X;
            for (n, style, one, many) in [
                (*successes, ok, "success", "successes"),
                (*failures, failed, "failure", "failures"),
            ] {
                if n == 0 {
                    continue;
                }
                let w = n as f64 / max * BAR_W;
                svg.open(
                    "rect",
                    &[
                        ("x", &P(x)),
                        ("y", &P(top + 3.0)),
                        ("width", &P(w)),
                        ("height", &16),
                        ("fill", &fill("tg-clients", style)),
                        ("stroke", &"#333"),
                        ("stroke-width", &0.5),
                    ],
                )
                .text_element(
                    "title",
                    &[],
                    &format!("{full}: {n} {}", if n == 1 { one } else { many }),
                )
                .close("rect");
                x += w;
            }
            let mut note = format!("{successes} ok, {failures} failed");
            if let Some(at) = since {
                note.push_str(&format!("; failing since {} UTC", day_minute(*at)));
            }
            svg.text(
                &[("x", &(BAR_X + BAR_W + 10.0)), ("y", &P(top + 15.0))],
                &note,
            );
        }
        if rows.is_empty() {
            svg.text(
                &[("x", &BAR_X), ("y", &(TOP + 15.0)), ("fill", &"#555")],
                "No logins in this range",
            );
        }
        let legend_y = height - 24.0;
        legend(
            &mut svg,
            10.0,
            legend_y,
            &fill("tg-clients", ok),
            "success (incl. superseded_token)",
        );
        legend(
            &mut svg,
            290.0,
            legend_y,
            &fill("tg-clients", failed),
            "failure (every other outcome)",
        );
        svg.finish()
    }
}

/// A number drawn with one decimal: enough on a 900-pixel chart, and short.
struct P(f64);

impl std::fmt::Display for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}", self.0)
    }
}

/// The document: scalable (viewBox), an image to assistive technology, named by its first
/// `<title>` and described by its `<desc>` (SVG-AAM; not `aria-labelledby`, which would make
/// the chart answer to the form's labels, "Outcome" among them).
fn open(w: f64, h: f64, id: &str, title: &str, desc: &str) -> Svg {
    let view = format!("0 0 {w} {h}");
    let (title_id, desc_id) = (format!("{id}-title"), format!("{id}-desc"));
    let mut svg = Svg::new(
        w,
        h,
        &[("viewBox", &view), ("class", &"chart"), ("role", &"img")],
    );
    svg.text_element("title", &[("id", &title_id)], title)
        .text_element("desc", &[("id", &desc_id)], desc);
    svg
}

/// One `<pattern>` per outcome with a mark, ids prefixed by the chart's own (two charts share a
/// page, and ids are the page's).
fn patterns(svg: &mut Svg, prefix: &str) {
    svg.open("defs", &[]);
    for style in &STYLES {
        let id = format!("{prefix}-{}", style.outcome.as_str());
        let angle = match style.mark {
            Mark::Solid => continue,
            Mark::Stripes(a) => a,
            Mark::Dots => 0,
            Mark::CrossHatch => 45,
        };
        let rotate = format!("rotate({angle})");
        svg.open(
            "pattern",
            &[
                ("id", &id),
                ("width", &8),
                ("height", &8),
                ("patternUnits", &"userSpaceOnUse"),
                ("patternTransform", &rotate),
            ],
        )
        .element(
            "rect",
            &[("width", &8), ("height", &8), ("fill", &style.colour)],
        );
        let white: [(&str, &dyn std::fmt::Display); 2] =
            [("stroke", &"white"), ("stroke-width", &2.5)];
        match style.mark {
            Mark::Dots => {
                svg.element(
                    "circle",
                    &[("cx", &4), ("cy", &4), ("r", &1.8), ("fill", &"white")],
                );
            }
            Mark::CrossHatch => {
                svg.element(
                    "line",
                    &[
                        ("x1", &0),
                        ("y1", &0),
                        ("x2", &0),
                        ("y2", &8),
                        white[0],
                        white[1],
                    ],
                )
                .element(
                    "line",
                    &[
                        ("x1", &0),
                        ("y1", &0),
                        ("x2", &8),
                        ("y2", &0),
                        white[0],
                        white[1],
                    ],
                );
            }
            _ => {
                svg.element(
                    "line",
                    &[
                        ("x1", &0),
                        ("y1", &0),
                        ("x2", &0),
                        ("y2", &8),
                        white[0],
                        white[1],
                    ],
                );
            }
        }
        svg.close("pattern");
    }
    svg.close("defs");
}

fn fill(prefix: &str, style: &Style) -> String {
    match style.mark {
        Mark::Solid => style.colour.to_owned(),
        _ => format!("url(#{prefix}-{})", style.outcome.as_str()),
    }
}

fn legend(svg: &mut Svg, x: f64, y: f64, fill: &str, label: &str) {
    svg.element(
        "rect",
        &[
            ("x", &x),
            ("y", &(y - 11.0)),
            ("width", &14),
            ("height", &14),
            ("fill", &fill),
            ("stroke", &"#333"),
        ],
    )
    .text(&[("x", &(x + 20.0)), ("y", &y)], label);
}

/// The y axis: a round top at or above `max` with at most five steps of 1, 2 or 5 × 10ⁿ.
pub(super) fn scale(max: u64) -> (u64, u64) {
    let mut step = 1;
    'search: for magnitude in 0..19 {
        for m in [1, 2, 5] {
            step = m * 10u64.pow(magnitude);
            if max.div_ceil(step) <= 5 {
                break 'search;
            }
        }
    }
    (max.div_ceil(step).max(1) * step, step)
}

/// `s` cut to `max` characters, with an ellipsis when it was longer.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn utc(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// "Nov 29".
fn day(ms: u64) -> String {
    let t = utc(ms);
    format!("{} {}", MONTHS[u8::from(t.month()) as usize - 1], t.day())
}

/// "14:00".
fn hour(ms: u64) -> String {
    format!("{:02}:00", utc(ms).hour())
}

/// "Nov 29 14:05".
fn day_minute(ms: u64) -> String {
    let t = utc(ms);
    format!("{} {:02}:{:02}", day(ms), t.hour(), t.minute())
}

/// "2026-11-29 14:05".
fn date_time(ms: u64) -> String {
    let t = utc(ms);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}
