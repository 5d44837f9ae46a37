use super::*;

#[test]
fn names_sort_in_natural_order() {
    let mut names = vec!["user.10", "User.2", "user.1", "alice", "user.2", "bob.03"];
    names.sort_by(|a, b| natural(a, b));
    assert_eq!(
        names,
        ["alice", "bob.03", "user.1", "User.2", "user.2", "user.10"]
    );
}

#[test]
fn list_state_reads_back_what_it_writes_and_nothing_else() {
    let s = ListState {
        view: "locked",
        q: "a&b=c d%".into(),
        sort: "email",
        desc: true,
        page: 3,
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&s.query()).unwrap();
    let back =
        ListState::from_query(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    assert_eq!(back, s);
    let odd = ListState::from_query(|k| match k {
        "view" => Some("everyone".into()),
        "sort" => Some("password_hash".into()),
        "page" => Some("-1".into()),
        _ => None,
    });
    assert_eq!(odd, ListState::default());
}

#[test]
fn times_read_as_people_write_them_in_the_consoles_zone() {
    let utc = jiff::tz::TimeZone::UTC;
    let w = when_ms(1_795_971_900_000, &utc);
    assert_eq!(w.text, "29 Nov 2026, 17:05 UTC");
    assert_eq!(w.iso, "2026-11-29T17:05:00.000Z");
    // The zone's own time and abbreviation (summer time included); the hover value stays
    // UTC.
    let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let w = when_ms(1_795_971_900_000, &ny);
    assert_eq!(w.text, "29 Nov 2026, 12:05 EST");
    assert_eq!(w.iso, "2026-11-29T17:05:00.000Z");
    let w = when_ms(1_783_000_000_000, &ny);
    assert_eq!(w.text, "2 Jul 2026, 09:46 EDT");
    let london = jiff::tz::TimeZone::get("Europe/London").unwrap();
    assert_eq!(
        when_ms(1_783_000_000_000, &london).text,
        "2 Jul 2026, 14:46 BST"
    );
}
