use super::draw::scale;
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
        tally
            .clients
            .iter()
            .all(|c| { c.name.as_deref() != Some("early") && c.name.as_deref() != Some("late") })
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
