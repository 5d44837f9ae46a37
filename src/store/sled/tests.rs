//! Unit tests of the parent module.

use super::*;

fn user(id: &str, name: &str) -> User {
    let mut u = User::new(
        id.into(),
        name.into(),
        "a@example.com".into(),
        "$argon2id$".into(),
        [1; 32],
        24,
        0,
    );
    u.epoch = 0;
    u
}

#[test]
fn the_rotation_index_follows_schedules_deletes_and_old_stores() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), 1 << 20).unwrap();
        for (id, name, at) in [
            ("1", "a", Some(100)),
            ("2", "b", Some(200)),
            ("3", "c", None),
        ] {
            let mut u = user(id, name);
            u.next_rotation_at = at;
            s.create_user(&u).unwrap();
        }
        assert_eq!(s.due_rotations(99).unwrap(), Vec::<String>::new());
        assert_eq!(s.due_rotations(100).unwrap(), ["1"]);
        assert_eq!(s.due_rotations(500).unwrap(), ["1", "2"]);
        // Rotating moves the entry; scheduling a user adds one; unscheduling removes it.
        s.update_user("1", &mut |u| u.next_rotation_at = Some(1000))
            .unwrap();
        s.update_user("3", &mut |u| u.next_rotation_at = Some(300))
            .unwrap();
        s.update_user("2", &mut |u| u.next_rotation_at = None)
            .unwrap();
        // An update that leaves the schedule alone keeps the entry.
        s.update_user("3", &mut |u| u.epoch += 1).unwrap();
        assert_eq!(s.due_rotations(500).unwrap(), ["3"]);
        assert!(s.delete_user("3").unwrap());
        assert_eq!(s.due_rotations(5000).unwrap(), ["1"]);
        // A store written before the index existed: no index, no marker.
        s.rotations.clear().unwrap();
        s.meta.remove("rotation_index_v1").unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.due_rotations(5000).unwrap(), ["1"]);
    assert!(
        s.user_by_name("b").unwrap().is_some(),
        "names come from the id index"
    );
}

#[test]
fn usernames_are_unique_and_updates_persist() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 1 << 20).unwrap();
    s.create_user(&user("005A", "alice")).unwrap();
    assert!(matches!(
        s.create_user(&user("005B", "alice")),
        Err(StoreError::UserExists(_))
    ));
    let u = s.update_user("005A", &mut |u| u.epoch += 1).unwrap();
    assert_eq!(u.epoch, 1);
    assert_eq!(s.user_by_name("alice").unwrap().unwrap().epoch, 1);
    assert!(s.user_by_name("bob").unwrap().is_none());
}

#[test]
fn a_second_open_of_the_same_directory_reports_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path(), 1 << 20).unwrap();
    // flock(2) locks belong to the open file description, so a second open in the same
    // process is refused just as another process's would be.
    assert!(matches!(
        SledStore::open(dir.path(), 1 << 20),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn server_key_is_generated_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 1 << 20).unwrap();
    let a = s.server_key(&mut || [9; 32]).unwrap();
    let b = s.server_key(&mut || [3; 32]).unwrap();
    assert_eq!(a, [9; 32]);
    assert_eq!(a, b);
}

#[test]
fn sessions_are_deleted_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 1 << 20).unwrap();
    let rec = |u: &str| SessionRecord {
        user_id: u.into(),
        username: u.into(),
        epoch: 0,
        created_at: 0,
        last_seen: 0,
        policy: Default::default(),
        token_serial: 0,
        token: None,
    };
    s.put_session(&[1; 32], &rec("a")).unwrap();
    s.put_session(&[2; 32], &rec("a")).unwrap();
    s.put_session(&[3; 32], &rec("b")).unwrap();
    assert_eq!(s.delete_user_sessions("a").unwrap(), 2);
    let mut left = 0;
    s.for_each_session(&mut |_, _| left += 1).unwrap();
    assert_eq!(left, 1);
}
