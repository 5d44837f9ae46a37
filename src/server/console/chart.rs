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
//!
//! Counting is here; drawing is in `draw`.

use std::collections::HashMap;

use crate::domain::Outcome;
use crate::store::HistoryRow;
use crate::svg::Svg;

mod draw;
#[cfg(test)]
mod tests;

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
}
