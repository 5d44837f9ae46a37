//! The charts that open Setup → Login History: logins per hour by outcome over the page's range
//! (per several hours or days when the range is long, so there are at most [`MAX_BARS`] bars),
//! and successes and failures per integration client (the history row's `client`: User-Agent,
//! SOAP CallOptions client or OAuth client_id), so an admin sees which integration started
//! failing after a token reset. Here: counting history rows into periods and clients
//! ([`Tally`]) and drawing both charts as inline SVG through [`crate::svg`] (no script: they
//! show with JavaScript off). Client names come from callers, so every name is written as
//! escaped text. Colours are the Okabe–Ito palette, which colour-blind readers can tell apart,
//! and every failure outcome also has its own fill pattern, and its name in the legend and in
//! each bar's tooltip.

use std::collections::HashMap;

use crate::domain::Outcome;
use crate::store::HistoryRow;
use crate::svg::Svg;

const HOUR_MS: u64 = 3_600_000;
/// The most bars the per-period chart draws: a longer range gets longer periods.
pub const MAX_BARS: u64 = 72;
/// Period lengths in hours, tried shortest first; periods start at multiples of their length
/// since the Unix epoch, so they fall on whole UTC hours (and days from 24 h on).
const PERIOD_HOURS: [u64; 16] = [
    1, 2, 3, 4, 6, 8, 12, 24, 48, 72, 168, 336, 720, 1440, 4320, 8760,
];
/// At most this many x-axis labels.
const MAX_LABELS: u64 = 12;
/// Distinct clients counted one by one; rows of further clients are counted together (a
/// User-Agent is the caller's choice, so there can be as many as rows).
const MAX_CLIENTS_COUNTED: usize = 5_000;
/// Clients drawn one bar each; the rest share one bar.
pub const MAX_CLIENTS_SHOWN: usize = 12;
/// Characters of a client name drawn beside its bar; its tooltip holds up to
/// [`MAX_TITLE_CHARS`].
const MAX_LABEL_CHARS: usize = 36;
const MAX_TITLE_CHARS: usize = 200;

/// The time range a chart covers, `[start_ms, end_ms)` in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The periods a range is cut into: `count` periods of `width_ms` from `first_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub first_ms: u64,
    pub width_ms: u64,
    pub count: u64,
}

impl Periods {
    /// The shortest period length that cuts `range` into at most [`MAX_BARS`] periods. An
    /// empty range is one millisecond long, so it still has a period to draw.
    pub fn for_range(range: Range) -> Self {
        let (start, end) = (range.start_ms, range.end_ms.max(range.start_ms + 1));
        let cut = |width_ms: u64| {
            let first_ms = start / width_ms * width_ms;
            let count = (end - 1) / width_ms - start / width_ms + 1;
            Periods {
                first_ms,
                width_ms,
                count,
            }
        };
        PERIOD_HOURS
            .iter()
            .map(|h| cut(h * HOUR_MS))
            .find(|p| p.count <= MAX_BARS)
            // Longer than 72 years: whole years, as many as it takes.
            .unwrap_or_else(|| {
                let years = (end - start).div_ceil(8760 * HOUR_MS * MAX_BARS);
                cut(years * 8760 * HOUR_MS)
            })
    }

    /// The period holding `at_ms`, if it is inside the periods.
    pub fn index(&self, at_ms: u64) -> Option<usize> {
        let i = at_ms.checked_sub(self.first_ms)? / self.width_ms;
        (i < self.count).then_some(i as usize)
    }

    pub fn start(&self, i: u64) -> u64 {
        self.first_ms + i * self.width_ms
    }

    fn hours(&self) -> u64 {
        self.width_ms / HOUR_MS
    }

    /// "hour", "3 hours", "day", "2 days", "week".
    fn name(&self) -> String {
        match self.hours() {
            1 => "hour".into(),
            24 => "day".into(),
            168 => "week".into(),
            h if h % 24 == 0 => format!("{} days", h / 24),
            h => format!("{h} hours"),
        }
    }
}

/// How each outcome is drawn: bottom to top in a bar, left to right in the legend.
struct Style {
    outcome: Outcome,
    colour: &'static str,
    mark: Mark,
}

/// A fill pattern over the colour, so outcomes differ by more than hue.
#[derive(Clone, Copy)]
enum Mark {
    Solid,
    Dots,
    /// White stripes at this angle in degrees.
    Stripes(i32),
    CrossHatch,
}

const STYLES: [Style; 7] = [
    Style {
        outcome: Outcome::Success,
        colour: "#0072B2",
        mark: Mark::Solid,
    },
    Style {
        outcome: Outcome::SupersededToken,
        colour: "#56B4E9",
        mark: Mark::Dots,
    },
    Style {
        outcome: Outcome::BadCredentials,
        colour: "#D55E00",
        mark: Mark::Stripes(45),
    },
    Style {
        outcome: Outcome::Locked,
        colour: "#E69F00",
        mark: Mark::CrossHatch,
    },
    Style {
        outcome: Outcome::RateLimited,
        colour: "#CC79A7",
        mark: Mark::Stripes(0),
    },
    Style {
        outcome: Outcome::Disabled,
        colour: "#666666",
        mark: Mark::Stripes(90),
    },
    Style {
        outcome: Outcome::OutsideLoginRange,
        colour: "#009E73",
        mark: Mark::Stripes(-45),
    },
];

fn style_index(outcome: &str) -> Option<usize> {
    STYLES.iter().position(|s| s.outcome.as_str() == outcome)
}

/// A login succeeded: with the current token or, during its grace window, the previous one.
fn is_success(outcome: &str) -> bool {
    outcome == Outcome::Success.as_str() || outcome == Outcome::SupersededToken.as_str()
}

/// One integration client's logins in the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client as recorded; `None` when the caller named none.
    pub name: Option<String>,
    pub successes: u64,
    pub failures: u64,
    /// The first failure after the client's last success: when it started failing, if its
    /// latest login failed.
    pub failing_since_ms: Option<u64>,
}

/// The clients beyond those drawn one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    pub clients: usize,
    pub successes: u64,
    pub failures: u64,
}

/// History rows counted per period and outcome, and per client.
#[derive(Debug)]
pub struct Tally {
    pub range: Range,
    pub periods: Periods,
    /// Per period, the logins of each outcome in [`STYLES`] order.
    per_period: Vec<[u64; 7]>,
    /// The clients drawn one by one: failing ones first (most failures first), then by logins.
    pub clients: Vec<Client>,
    pub others: Option<Others>,
    /// Rows counted (those inside the range).
    pub counted: u64,
    /// The range holds rows older than those counted (the query's limit was reached).
    pub partial: bool,
}

impl Tally {
    /// Counts `rows` (newest first, as the store returns them) that fall inside `range`.
    /// `partial` says the range holds more rows than `rows`.
    pub fn count(rows: &[HistoryRow], range: Range, partial: bool) -> Self {
        let periods = Periods::for_range(range);
        let mut per_period = vec![[0u64; 7]; periods.count as usize];
        let mut by_client: HashMap<Option<&str>, Client> = HashMap::new();
        let mut others = Others::default();
        let mut overflow: std::collections::HashSet<&str> = Default::default();
        let mut counted = 0;
        // Oldest first, so "failing since" is the first failure after the last success.
        for r in rows.iter().rev() {
            if r.at_ms < range.start_ms || r.at_ms >= range.end_ms.max(range.start_ms + 1) {
                continue;
            }
            // An outcome this version does not know (a newer replica's) is left out of both
            // charts alike, so they agree.
            let (Some(period), Some(kind)) = (periods.index(r.at_ms), style_index(&r.outcome))
            else {
                continue;
            };
            counted += 1;
            per_period[period][kind] += 1;
            let success = is_success(&r.outcome);
            let key = r.client.as_deref();
            if by_client.len() < MAX_CLIENTS_COUNTED && !by_client.contains_key(&key) {
                by_client.insert(
                    key,
                    Client {
                        name: r.client.clone(),
                        successes: 0,
                        failures: 0,
                        failing_since_ms: None,
                    },
                );
            }
            let Some(c) = by_client.get_mut(&key) else {
                if overflow.len() < MAX_CLIENTS_COUNTED {
                    overflow.insert(key.unwrap_or_default());
                }
                if success {
                    others.successes += 1;
                } else {
                    others.failures += 1;
                }
                continue;
            };
            if success {
                c.successes += 1;
                c.failing_since_ms = None;
            } else {
                c.failures += 1;
                c.failing_since_ms.get_or_insert(r.at_ms);
            }
        }
        let mut clients: Vec<Client> = by_client.into_values().collect();
        clients.sort_by(|a, b| {
            b.failing_since_ms
                .is_some()
                .cmp(&a.failing_since_ms.is_some())
                .then(b.failures.cmp(&a.failures))
                .then((b.successes + b.failures).cmp(&(a.successes + a.failures)))
                .then(a.name.cmp(&b.name))
        });
        if clients.len() > MAX_CLIENTS_SHOWN {
            for c in clients.drain(MAX_CLIENTS_SHOWN..) {
                others.clients += 1;
                others.successes += c.successes;
                others.failures += c.failures;
            }
        }
        others.clients += overflow.len();
        Tally {
            range,
            periods,
            per_period,
            clients,
            others: (others.clients > 0).then_some(others),
            counted,
            partial,
        }
    }

    /// The logins of `outcome` in period `i`.
    #[cfg(test)]
    pub fn in_period(&self, i: usize, outcome: Outcome) -> u64 {
        style_index(outcome.as_str()).map_or(0, |k| self.per_period[i][k])
    }

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
fn scale(max: u64) -> (u64, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/server/console/testdata");
    const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test --lib server::console::chart";

    fn at(rfc3339: &str) -> u64 {
        crate::history::parse_since(rfc3339).expect("a time")
    }

    fn row(at_ms: u64, client: Option<&str>, outcome: Outcome) -> HistoryRow {
        HistoryRow {
            at_ms,
            username: "sync@example.com".into(),
            user_id: None,
            source_ip: "192.0.2.7".into(),
            dialect: "soap".into(),
            api_version: Some("59.0".into()),
            client: client.map(str::to_owned),
            tls: None,
            outcome: outcome.as_str().into(),
            reason: None,
            token: None,
        }
    }

    /// Newest first, as the store returns them.
    fn newest_first(mut rows: Vec<HistoryRow>) -> Vec<HistoryRow> {
        rows.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        rows
    }

    fn day_range() -> Range {
        Range {
            start_ms: at("2026-11-28T15:30:00Z"),
            end_ms: at("2026-11-29T15:30:00Z"),
        }
    }

    /// A day of two integrations and some noise: the token is reset at 09:00; DataLoader
    /// moves to the new token, the nightly job keeps the old one and fails from then on.
    fn fixed_rows() -> Vec<HistoryRow> {
        let nightly = Some("Nightly <script>alert(1)</script> & \"co\"");
        let mut rows = Vec::new();
        for h in 0..24u64 {
            let t = day_range().start_ms + h * HOUR_MS + 600_000;
            rows.push(row(t, Some("DataLoader/64"), Outcome::Success));
            if h % 3 == 0 {
                rows.push(row(t + 60_000, Some("DataLoader/64"), Outcome::Success));
            }
            let after_reset = t >= at("2026-11-29T09:00:00Z");
            rows.push(row(
                t + 120_000,
                nightly,
                if after_reset {
                    Outcome::BadCredentials
                } else {
                    Outcome::Success
                },
            ));
        }
        // A failure the nightly job recovered from: it is not "failing since" then.
        rows.push(row(
            at("2026-11-28T18:30:00Z"),
            nightly,
            Outcome::BadCredentials,
        ));
        rows.push(row(
            at("2026-11-29T09:20:00Z"),
            Some("simple-salesforce"),
            Outcome::SupersededToken,
        ));
        rows.push(row(at("2026-11-29T12:05:00Z"), nightly, Outcome::Locked));
        rows.push(row(at("2026-11-29T12:06:00Z"), None, Outcome::RateLimited));
        rows.push(row(at("2026-11-28T20:00:00Z"), None, Outcome::Disabled));
        rows.push(row(
            at("2026-11-28T20:00:00Z"),
            Some("curl/8.5.0"),
            Outcome::OutsideLoginRange,
        ));
        // A client that failed more often than some failing ones, then recovered.
        for m in 0..3 {
            rows.push(row(
                at("2026-11-28T22:00:00Z") + m * 60_000,
                Some("Recovered/1.0"),
                Outcome::BadCredentials,
            ));
        }
        rows.push(row(
            at("2026-11-28T22:05:00Z"),
            Some("Recovered/1.0"),
            Outcome::Success,
        ));
        // Outside the range: not counted.
        rows.push(row(
            at("2026-11-28T15:29:59Z"),
            Some("early"),
            Outcome::Success,
        ));
        rows.push(row(
            at("2026-11-29T15:30:00Z"),
            Some("late"),
            Outcome::Success,
        ));
        newest_first(rows)
    }

    fn golden(name: &str, drawn: &str) {
        crate::svg::assert_golden(&format!("{DIR}/{name}"), drawn, REGENERATE);
    }

    #[test]
    fn charts_of_a_fixed_day_match_the_golden_files() {
        let tally = Tally::count(&fixed_rows(), day_range(), false);
        golden("history_periods.svg", &tally.periods_svg());
        golden("history_clients.svg", &tally.clients_svg());
    }

    #[test]
    fn a_fixed_day_is_counted_per_hour_and_per_client() {
        let tally = Tally::count(&fixed_rows(), day_range(), false);
        // 15:30 to 15:30 on whole hours: 15:00 … 15:00 the next day.
        assert_eq!(
            tally.periods,
            Periods {
                first_ms: at("2026-11-28T15:00:00Z"),
                width_ms: HOUR_MS,
                count: 25
            }
        );
        assert_eq!(tally.counted, 24 + 8 + 24 + 6 + 4);
        // 15:40 is in the 15:00 period; the 15:29:59 row is before the range.
        assert_eq!(tally.in_period(0, Outcome::Success), 3);
        assert_eq!(tally.in_period(24, Outcome::Success), 0);
        let nine = Periods::for_range(day_range())
            .index(at("2026-11-29T09:00:00Z"))
            .unwrap();
        assert_eq!(tally.in_period(nine, Outcome::BadCredentials), 1);
        assert_eq!(tally.in_period(nine, Outcome::SupersededToken), 1);
        // The failing client first, failing since the first failure after the reset.
        let first = &tally.clients[0];
        assert_eq!(
            first.name.as_deref(),
            Some("Nightly <script>alert(1)</script> & \"co\"")
        );
        // 18 successes and a wrong token before the reset; 6 wrong tokens and a lock after it.
        assert_eq!((first.successes, first.failures), (18, 8));
        assert_eq!(first.failing_since_ms, Some(at("2026-11-29T09:42:00Z")));
        let loader = tally
            .clients
            .iter()
            .find(|c| c.name.as_deref() == Some("DataLoader/64"))
            .unwrap();
        assert_eq!((loader.successes, loader.failures), (32, 0));
        assert_eq!(loader.failing_since_ms, None);
        assert!(
            tally.clients.iter().all(|c| {
                c.name.as_deref() != Some("early") && c.name.as_deref() != Some("late")
            })
        );
        assert_eq!(tally.others, None);
        // Every client failing at its latest login comes before every other one, whatever
        // its count: "Recovered/1.0" failed three times but is fine now, curl failed once.
        let failing: Vec<bool> = tally
            .clients
            .iter()
            .map(|c| c.failing_since_ms.is_some())
            .collect();
        assert_eq!(
            failing,
            [true, true, true, false, false, false],
            "{:?}",
            tally.clients
        );
    }

    #[test]
    fn ranges_are_cut_into_at_most_72_periods_on_whole_hours() {
        let t0 = at("2026-11-01T00:00:00Z");
        let cases = [
            // (range length, offset of its start past the hour, period hours, periods)
            (0, 0, 1, 1),
            (1, 0, 1, 1),
            (HOUR_MS, 0, 1, 1),
            (HOUR_MS, 1, 1, 2),
            (24 * HOUR_MS, 0, 1, 24),
            (24 * HOUR_MS, 1_800_000, 1, 25),
            (7 * 24 * HOUR_MS, 0, 3, 56),
            (7 * 24 * HOUR_MS, 1_800_000, 3, 57),
            (30 * 24 * HOUR_MS, 0, 12, 60),
            (30 * 24 * HOUR_MS, 1_800_000, 12, 61),
            (90 * 24 * HOUR_MS, 0, 48, 45),
        ];
        for (len, offset, hours, count) in cases {
            let start_ms = t0 + offset;
            let p = Periods::for_range(Range {
                start_ms,
                end_ms: start_ms + len,
            });
            assert_eq!(
                (p.width_ms / HOUR_MS, p.count),
                (hours, count),
                "{len} ms from {offset}"
            );
            assert_eq!(p.first_ms % (hours * HOUR_MS), 0, "on whole periods");
            assert!(p.first_ms <= start_ms);
            assert!(p.start(p.count) >= start_ms + len.max(1));
        }
        // Everything since the epoch still fits.
        let p = Periods::for_range(Range {
            start_ms: 0,
            end_ms: t0,
        });
        assert!(p.count <= MAX_BARS, "{p:?}");
        // A range that ends before it starts (a `since` in the future) is one period.
        let p = Periods::for_range(Range {
            start_ms: t0,
            end_ms: t0 - HOUR_MS,
        });
        assert_eq!(p.count, 1);
    }

    #[test]
    fn a_row_on_a_period_edge_is_in_the_later_period() {
        let range = Range {
            start_ms: at("2026-11-29T10:00:00Z"),
            end_ms: at("2026-11-29T13:00:00Z"),
        };
        let p = Periods::for_range(range);
        assert_eq!(p.count, 3);
        assert_eq!(p.index(at("2026-11-29T10:00:00Z")), Some(0));
        assert_eq!(p.index(at("2026-11-29T10:59:59Z") + 999), Some(0));
        assert_eq!(p.index(at("2026-11-29T11:00:00Z")), Some(1));
        assert_eq!(p.index(at("2026-11-29T12:59:59Z") + 999), Some(2));
        assert_eq!(p.index(at("2026-11-29T13:00:00Z")), None);
        assert_eq!(p.index(at("2026-11-29T09:59:59Z")), None);
        let rows = newest_first(vec![
            row(range.start_ms, Some("a"), Outcome::Success),
            row(range.end_ms - 1, Some("a"), Outcome::Locked),
            row(range.end_ms, Some("a"), Outcome::Success),
        ]);
        let tally = Tally::count(&rows, range, false);
        assert_eq!(tally.counted, 2);
        assert_eq!(tally.in_period(0, Outcome::Success), 1);
        assert_eq!(tally.in_period(2, Outcome::Locked), 1);
    }

    #[test]
    fn client_names_are_drawn_as_text() {
        let range = day_range();
        let rows = vec![row(
            range.start_ms + 1,
            Some("<script>alert(1)</script><img src=x onerror=alert(2)>"),
            Outcome::BadCredentials,
        )];
        let tally = Tally::count(&rows, range, false);
        for svg in [tally.clients_svg(), tally.periods_svg()] {
            assert!(!svg.contains("<script"), "{svg}");
            assert!(!svg.contains("<img"), "{svg}");
        }
        let svg = tally.clients_svg();
        assert!(
            svg.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;: 1 failure</title>"),
            "{svg}"
        );
        // The label beside the bar is cut short, escaped.
        assert!(
            svg.contains(">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x …</text>"),
            "{svg}"
        );
    }

    #[test]
    fn clients_beyond_those_shown_share_one_bar() {
        let range = day_range();
        let mut rows = Vec::new();
        for i in 0..20u64 {
            for k in 0..=i {
                rows.push(row(
                    range.start_ms + i * 1000 + k,
                    Some(&format!("client-{i:02}")),
                    Outcome::Success,
                ));
            }
        }
        let tally = Tally::count(&newest_first(rows), range, false);
        assert_eq!(tally.clients.len(), MAX_CLIENTS_SHOWN);
        // The busiest are drawn one by one.
        assert_eq!(tally.clients[0].name.as_deref(), Some("client-19"));
        let others = tally.others.clone().unwrap();
        // client-00 … client-07: 1 + 2 + … + 8 logins.
        assert_eq!(
            (others.clients, others.successes, others.failures),
            (8, 36, 0)
        );
        assert!(tally.clients_svg().contains(">8 other clients</text>"));
    }

    #[test]
    fn an_empty_range_still_draws_axes_legend_and_says_so() {
        let range = Range {
            start_ms: at("2026-11-29T10:00:00Z"),
            end_ms: at("2026-11-29T10:00:00Z"),
        };
        let tally = Tally::count(&[], range, false);
        let periods = tally.periods_svg();
        assert!(periods.contains(">No logins in this range</text>"));
        assert!(periods.contains(">bad_credentials</text>"), "the legend");
        assert!(periods.contains(">Hour (UTC)</text>"));
        assert!(periods.contains(">10:00</text>"));
        assert!(!periods.contains("</rect>"), "no bars");
        let clients = tally.clients_svg();
        assert!(clients.contains(">No logins in this range</text>"));
        assert!(clients.contains("<desc id=\"tg-clients-desc\">No logins in this range.</desc>"));
    }

    #[test]
    fn a_partial_count_says_so() {
        let tally = Tally::count(&fixed_rows(), day_range(), true);
        assert!(
            tally
                .periods_svg()
                .contains("Only the newest logins of the range are counted.")
        );
    }

    #[test]
    fn the_y_axis_ends_on_a_round_number() {
        assert_eq!(scale(0), (1, 1));
        assert_eq!(scale(1), (1, 1));
        assert_eq!(scale(5), (5, 1));
        assert_eq!(scale(6), (6, 2));
        assert_eq!(scale(11), (15, 5));
        assert_eq!(scale(99_999), (100_000, 20_000));
    }
}
