//! Unit tests of the session table: a first use waiting for a read slot, and a revocation that
//! races the sweep's write-back (a store that pauses on demand).

use super::*;

use std::sync::mpsc;

use crate::store::sled::SledStore;
use crate::store::{
    AcmeObserver, ExportSink, HistoryFilter, HistoryRow, RefreshFamily, SessionObserver,
    UserObserver,
};

#[test]
fn a_first_use_past_the_concurrent_reads_waits_its_turn_and_gives_up_at_the_timeout() {
    let slots = Arc::new(FetchSlots::new());
    let held: Vec<_> = (0..MAX_FETCHES)
        .map(|_| slots.acquire(Duration::ZERO).expect("a free slot"))
        .collect();
    let started = std::time::Instant::now();
    assert!(slots.acquire(Duration::from_millis(100)).is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));
    // A slot given back while another waits goes to the waiter.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| slots.acquire(Duration::from_secs(5)).is_some());
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
    });
}

/// A sled store whose next `put_session`, once armed, tells the test it began and waits
/// for the test's go before writing: a sweep's write-back can then be caught in flight.
struct PausingStore {
    inner: SledStore,
    armed: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Store for PausingStore {
    fn put_session(&self, key: &Tag, session: &SessionRecord) -> Result<(), StoreError> {
        let armed = self.armed.lock().unwrap().take();
        if let Some((began, go)) = armed {
            began.send(()).unwrap();
            go.recv_timeout(Duration::from_secs(10))
                .expect("the test lets the write finish");
        }
        self.inner.put_session(key, session)
    }

    // Everything else as sled does it.
    fn observe_users(&self, observer: UserObserver) {
        self.inner.observe_users(observer)
    }
    fn user_by_name(&self, canonical_username: &str) -> Result<Option<Arc<User>>, StoreError> {
        self.inner.user_by_name(canonical_username)
    }
    fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        self.inner.user_by_id(id)
    }
    fn next_user_number(&self) -> Result<u64, StoreError> {
        self.inner.next_user_number()
    }
    fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.inner.create_user(user)
    }
    fn update_user(&self, id: &str, change: &mut dyn FnMut(&mut User)) -> Result<User, StoreError> {
        self.inner.update_user(id, change)
    }
    fn for_each_user(&self, visit: &mut dyn FnMut(User)) -> Result<(), StoreError> {
        self.inner.for_each_user(visit)
    }
    fn due_rotations(&self, now: u64) -> Result<Vec<String>, StoreError> {
        self.inner.due_rotations(now)
    }
    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.list_users()
    }
    fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_user(id)
    }
    fn observe_sessions(&self, observer: SessionObserver) {
        self.inner.observe_sessions(observer)
    }
    fn acme_entry(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.acme_entry(key)
    }
    fn put_acme_entry(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        self.inner.put_acme_entry(key, value)
    }
    fn observe_acme(&self, observer: AcmeObserver) {
        self.inner.observe_acme(observer)
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn fresh(&self) -> bool {
        self.inner.fresh()
    }
    fn leader(&self) -> bool {
        self.inner.leader()
    }
    fn count_login(&self, user_id: &str, window: u64) -> Result<Option<u64>, StoreError> {
        self.inner.count_login(user_id, window)
    }
    fn prune_sessions(&self, idle_before: u64, created_before: u64) -> Result<usize, StoreError> {
        self.inner.prune_sessions(idle_before, created_before)
    }
    fn touch_sessions(&self, touched: &[(Tag, SessionRecord)]) -> Result<(), StoreError> {
        self.inner.touch_sessions(touched)
    }
    fn session(&self, key: &Tag) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.session(key)
    }
    fn delete_session(&self, key: &Tag) -> Result<(), StoreError> {
        self.inner.delete_session(key)
    }
    fn delete_user_sessions(&self, user_id: &str) -> Result<usize, StoreError> {
        self.inner.delete_user_sessions(user_id)
    }
    fn for_each_session(
        &self,
        visit: &mut dyn FnMut(Tag, SessionRecord),
    ) -> Result<(), StoreError> {
        self.inner.for_each_session(visit)
    }
    fn refresh_insert(
        &self,
        key: &Tag,
        family: &RefreshFamily,
        max_per_user: usize,
    ) -> Result<(), StoreError> {
        self.inner.refresh_insert(key, family, max_per_user)
    }
    fn refresh_family(&self, key: &Tag) -> Result<Option<RefreshFamily>, StoreError> {
        self.inner.refresh_family(key)
    }
    fn refresh_rotate(
        &self,
        key: &Tag,
        expected: &Tag,
        next: &RefreshFamily,
    ) -> Result<bool, StoreError> {
        self.inner.refresh_rotate(key, expected, next)
    }
    fn refresh_delete(&self, key: &Tag) -> Result<bool, StoreError> {
        self.inner.refresh_delete(key)
    }
    fn refresh_prune(&self, now: u64) -> Result<usize, StoreError> {
        self.inner.refresh_prune(now)
    }
    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.setting(key)
    }
    fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_setting(key, value)
    }
    fn outbox_put(&self, id: u64, message: &[u8]) -> Result<(), StoreError> {
        self.inner.outbox_put(id, message)
    }
    fn outbox_delete(&self, id: u64) -> Result<(), StoreError> {
        self.inner.outbox_delete(id)
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.outbox()
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn history_append(&self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        self.inner.history_append(rows)
    }
    fn history_query(&self, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, StoreError> {
        self.inner.history_query(filter)
    }
    fn history_prune(&self, older_than_ms: u64, max_rows: usize) -> Result<usize, StoreError> {
        self.inner.history_prune(older_than_ms, max_rows)
    }
    fn audit_append(
        &self,
        entry: &crate::audit::Entry,
    ) -> Result<crate::audit::Record, StoreError> {
        self.inner.audit_append(entry)
    }
    fn audit_query(
        &self,
        filter: &crate::audit::Filter,
    ) -> Result<Vec<crate::audit::Record>, StoreError> {
        self.inner.audit_query(filter)
    }
    fn audit_scan(
        &self,
        visit: &mut dyn FnMut(crate::audit::Record) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.audit_scan(visit)
    }
    fn audit_prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.inner.audit_prune(older_than_ms)
    }
    fn export(&self, out: &mut ExportSink<'_>) -> Result<u64, StoreError> {
        self.inner.export(out)
    }
    fn import(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.import(tree, key, value)
    }
    fn is_empty(&self) -> Result<bool, StoreError> {
        self.inner.is_empty()
    }
    fn server_key(&self, generate: &mut dyn FnMut() -> [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.inner.server_key(generate)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[test]
fn a_revocation_during_the_sweeps_write_back_is_not_undone_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PausingStore {
        inner: SledStore::open(dir.path(), 1 << 20).unwrap(),
        armed: Default::default(),
    });
    let secrets = Arc::new(Secrets::new(
        &[7u8; 32],
        argon2::Params::new(1024, 1, 1, None).unwrap(),
    ));
    let limits = Limits {
        idle: Duration::from_secs(3600),
        lifetime: Duration::from_secs(86_400),
        max: 100,
        max_per_user: 10,
        fetch_wait: Duration::from_secs(1),
    };
    let org = "00D000000000001";
    let sessions = Sessions::new(store.clone(), secrets.clone(), limits, org);
    let user = User::new(
        "1".into(),
        "ann@example.com".into(),
        "ann@example.com".into(),
        "$argon2id$".into(),
        [1; 32],
        24,
        crate::now_secs(),
    );
    store.create_user(&user).unwrap();
    let sid = sessions.create(&user).unwrap();
    let key = sessions.key(&sid);
    // Used since it was persisted: the sweep has an idle timer to write back.
    sessions
        .map
        .get(&key)
        .unwrap()
        .last_seen
        .fetch_add(60, Ordering::Relaxed);

    let (began_tx, began) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    *store.armed.lock().unwrap() = Some((began_tx, go_rx));
    std::thread::scope(|s| {
        let sweep = s.spawn(|| sessions.sweep_all());
        began
            .recv_timeout(Duration::from_secs(10))
            .expect("the sweep writes the session's timer back");
        // The write is in flight. The revocation gets every chance to run to its end
        // meanwhile; it must instead wait for the write, then delete what it wrote.
        let revoke = s.spawn(|| sessions.revoke(&sid));
        let until = std::time::Instant::now() + Duration::from_millis(300);
        while !revoke.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        go.send(()).unwrap();
        assert!(revoke.join().unwrap(), "the session existed");
        sweep.join().unwrap();
    });

    assert!(
        store.session(&key).unwrap().is_none(),
        "the sweep wrote the revoked session back"
    );
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(sessions.lookup(&sid, ip).unwrap().is_none());
    // A restart reads the sessions from the store: the revoked one stays ended.
    let restarted = Sessions::new(store.clone(), secrets, limits, org);
    restarted.load().unwrap();
    assert!(restarted.lookup(&sid, ip).unwrap().is_none());
}
