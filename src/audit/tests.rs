use super::*;
use crate::store::sled::SledStore;

fn entry(target: &str) -> Entry {
    Entry {
        actor: Actor::cli("root"),
        action: "user.disable",
        target: target.into(),
        changes: vec![Change {
            field: "disabled".into(),
            before: Some("false".into()),
            after: Some("true".into()),
        }],
    }
}

fn store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 1 << 20).unwrap();
    (dir, s)
}

#[test]
fn records_chain_from_genesis_and_verify() {
    let (_d, s) = store();
    assert_eq!(verify(&s).unwrap().records, 0);
    let a = s.audit_append(&entry("a")).unwrap();
    let b = s.audit_append(&entry("b")).unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.prev_hash, GENESIS);
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(a.hash, a.computed_hash());
    let v = verify(&s).unwrap();
    assert_eq!((v.records, v.first_seq, v.last_seq), (2, Some(1), Some(2)));
}

#[test]
fn the_hash_covers_every_field() {
    let r = Record::seal(&entry("a"), 7, 1000, GENESIS);
    let mut edits: Vec<Record> = Vec::new();
    for f in 0..9 {
        let mut x = r.clone();
        match f {
            0 => x.seq += 1,
            1 => x.at_ms += 1,
            2 => x.actor.push('x'),
            3 => x.address.push('x'),
            4 => x.channel = Channel::Api,
            5 => x.action.push('x'),
            6 => x.target.push('x'),
            7 => x.changes[0].after = Some("false".into()),
            _ => x.prev_hash = r.hash.clone(),
        }
        edits.push(x);
    }
    for x in edits {
        assert_ne!(x.computed_hash(), r.hash, "{x:?}");
    }
}

#[test]
fn an_edited_removed_or_inserted_record_breaks_the_chain_where_it_is() {
    let (_d, s) = store();
    for t in ["a", "b", "c", "d"] {
        s.audit_append(&entry(t)).unwrap();
    }
    let mut all = Vec::new();
    s.audit_scan(&mut |r| {
        all.push(r);
        true
    })
    .unwrap();
    // Edited in place.
    let mut forged = all[1].clone();
    forged.target = "someone-else".into();
    s.import("audit", &2u64.to_be_bytes(), &forged.encode())
        .unwrap();
    assert!(matches!(verify(&s), Err(AuditError::Broken { seq: 2, .. })));
    // Edited and re-hashed: the next link breaks.
    forged.hash = forged.computed_hash();
    s.import("audit", &2u64.to_be_bytes(), &forged.encode())
        .unwrap();
    assert!(matches!(verify(&s), Err(AuditError::Broken { seq: 3, .. })));
    s.import("audit", &2u64.to_be_bytes(), &all[1].encode())
        .unwrap();
    assert!(verify(&s).is_ok());
    // Removed from the middle, or from the start with no retention anchor.
    let (_d2, t) = store();
    for r in [&all[0], &all[2], &all[3]] {
        t.import("audit", &r.seq.to_be_bytes(), &r.encode())
            .unwrap();
    }
    let e = verify(&t).unwrap_err().to_string();
    assert!(e.contains("record 3") && e.contains("missing"), "{e}");
    let (_d3, u) = store();
    for r in &all[1..] {
        u.import("audit", &r.seq.to_be_bytes(), &r.encode())
            .unwrap();
    }
    assert!(matches!(verify(&u), Err(AuditError::Broken { seq: 2, .. })));
}

#[test]
fn retention_keeps_an_anchor_so_the_rest_still_verifies_and_appends_continue() {
    let (_d, s) = store();
    for t in ["a", "b", "c"] {
        s.audit_append(&entry(t)).unwrap();
    }
    let cutoff = crate::clock::now_ms() + 1;
    assert_eq!(s.audit_prune(cutoff).unwrap(), 3);
    assert_eq!(verify(&s).unwrap().records, 0);
    let d = s.audit_append(&entry("d")).unwrap();
    assert_eq!(d.seq, 4, "numbering continues after the anchor");
    let v = verify(&s).unwrap();
    assert_eq!((v.records, v.first_seq, v.anchored), (1, Some(4), true));
    // A forged anchor does not explain the gap.
    s.put_setting(
        ANCHOR_KEY,
        &Anchor {
            seq: 3,
            hash: GENESIS.into(),
        }
        .encode(),
    )
    .unwrap();
    assert!(matches!(verify(&s), Err(AuditError::Broken { seq: 4, .. })));
}

#[test]
fn queries_filter_by_actor_target_and_time_newest_first() {
    let (_d, s) = store();
    for t in ["a", "b", "a"] {
        s.audit_append(&entry(t)).unwrap();
    }
    let q = |f: Filter| {
        s.audit_query(&f)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q(Filter {
            limit: 10,
            ..Default::default()
        }),
        [3, 2, 1]
    );
    assert_eq!(
        q(Filter {
            limit: 1,
            ..Default::default()
        }),
        [3]
    );
    let target = Some("a".to_owned());
    assert_eq!(
        q(Filter {
            target,
            limit: 10,
            ..Default::default()
        }),
        [3, 1]
    );
    let actor = Some("cli:nobody".to_owned());
    assert!(
        q(Filter {
            actor,
            limit: 10,
            ..Default::default()
        })
        .is_empty()
    );
    let since_ms = Some(crate::clock::now_ms() + 60_000);
    assert!(
        q(Filter {
            since_ms,
            limit: 10,
            ..Default::default()
        })
        .is_empty()
    );
}

#[test]
fn diff_lists_changed_added_and_removed_fields() {
    let before = serde_json::json!({ "a": 1, "b": "x", "gone": true });
    let after = serde_json::json!({ "a": 2, "b": "x", "new": null });
    let d = diff(Some(&before), Some(&after));
    let show: Vec<(String, Option<String>, Option<String>)> = d
        .into_iter()
        .map(|c| (c.field, c.before, c.after))
        .collect();
    assert_eq!(
        show,
        [
            ("a".into(), Some("1".into()), Some("2".into())),
            ("new".into(), None, Some("none".into())),
            ("gone".into(), Some("true".into()), None),
        ]
    );
    assert!(diff(Some(&before), Some(&before)).is_empty());
}

#[test]
fn csv_defuses_formulas_in_cells() {
    let mut e = entry("=HYPERLINK(\"x\")");
    e.actor = Actor::cli("root");
    let r = Record::seal(&e, 1, 0, GENESIS);
    let csv = to_csv(&[r]);
    assert!(csv.contains("'=HYPERLINK"), "{csv}");
}
