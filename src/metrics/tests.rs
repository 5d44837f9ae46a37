use super::*;

#[test]
fn histograms_are_cumulative_and_the_exposition_names_every_metric() {
    let m = Metrics::new();
    m.upstream(Some(204), false, Duration::from_micros(300));
    m.upstream(None, true, Duration::from_millis(3));
    m.login(Dialect::Reset, Outcome::BadCredentials, Duration::ZERO);
    m.token_rotated(TokenReason::Requested);
    m.token_login("named");
    m.certificate_expires(1_767_225_600);
    let text = m.render(&Gauges {
        argon2_queue_depth: 0,
        active_sessions: 3,
        limiter_keys_ip: 1,
        limiter_keys_user: 2,
        history_dropped: 0,
        compliance_queue: 0,
    });
    for line in [
        "tokengate_upstream_duration_seconds_bucket{le=\"0.0005\"} 1",
        "tokengate_upstream_duration_seconds_bucket{le=\"0.005\"} 2",
        "tokengate_upstream_duration_seconds_bucket{le=\"+Inf\"} 2",
        "tokengate_upstream_duration_seconds_count 2",
        "tokengate_upstream_requests_total{status=\"2xx\"} 1",
        "tokengate_upstream_requests_total{status=\"timeout\"} 1",
        "tokengate_logins_total{dialect=\"reset\",outcome=\"bad_credentials\"} 1",
        "tokengate_logins_total{dialect=\"soap\",outcome=\"success\"} 0",
        "tokengate_token_logins_total{kind=\"named\"} 1",
        "tokengate_token_logins_total{kind=\"default\"} 0",
        "tokengate_active_sessions 3",
        "tokengate_limiter_keys{limiter=\"user\"} 2",
        "tokengate_emails_sent_total{kind=\"compliance\"} 0",
        "tokengate_tls_handshake_failures_total 0",
        "tokengate_argon2_verifications_total 0",
        "tokengate_history_dropped_total 0",
        "tokengate_token_rotations_total{reason=\"scheduled\"} 0",
        "tokengate_token_rotations_total{reason=\"self_service\"} 1",
        "tokengate_tls_certificate_expiry_timestamp_seconds 1767225600",
        concat!(
            "tokengate_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn proc_files_are_read_field_by_field() {
    // A command name with spaces and a parenthesis must not shift the fields.
    let stat = "4711 (tokio ) x) S 1 4711 4711 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1";
    assert_eq!(process::cpu_ticks(stat), Some(325));
    assert_eq!(process::cpu_ticks("garbage"), None);
    assert_eq!(
        process::resident_pages("5000 1200 300 1 0 900 0\n"),
        Some(1200)
    );
    let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\nMax open files            1024                 524288               files\n";
    assert_eq!(process::max_open_files(limits), Some(1024));
}

#[cfg(target_os = "linux")]
#[test]
fn this_process_is_measured() {
    let p = process::read().expect("/proc/self is readable");
    assert!(p.resident_bytes.unwrap() > 1024 * 1024);
    assert!(p.open_fds.unwrap() >= 3, "stdin, stdout, stderr");
    assert!(p.max_fds.unwrap() >= p.open_fds.unwrap());
}

#[test]
fn two_servers_count_apart() {
    let (a, b) = (Metrics::new(), Metrics::new());
    a.lockout();
    let g = Gauges {
        argon2_queue_depth: 0,
        active_sessions: 0,
        limiter_keys_ip: 0,
        limiter_keys_user: 0,
        history_dropped: 0,
        compliance_queue: 0,
    };
    assert!(a.render(&g).contains("tokengate_lockouts_total 1\n"));
    assert!(b.render(&g).contains("tokengate_lockouts_total 0\n"));
}
