use super::*;
use http_body_util::BodyExt as _;

async fn text(r: Response<Body>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn a_failed_login_is_one_answer_per_dialect_and_a_lock_is_told_only_with_proof() {
    let locked = Refusal::from(AuthError::Locked {
        until: u64::MAX,
        proven: false,
    });
    assert_eq!(locked, Refusal::BadCredentials);
    for d in [
        Dialect::Soap(Flavor::Partner),
        Dialect::Soap(Flavor::Enterprise),
        Dialect::OAuth,
    ] {
        let a = Refusal::BadCredentials.render(d);
        let b = Refusal::Locked { until: 1 }.render(d);
        assert_eq!(a.status(), b.status(), "{d:?}");
        assert_eq!(text(a).await, text(b).await, "{d:?}");
    }
    let r = Refusal::Locked { until: u64::MAX }.render(Dialect::Rest);
    assert_eq!(r.status(), StatusCode::LOCKED);
    assert!(text(r).await.contains("PASSWORD_LOCKOUT"));
}

#[tokio::test]
async fn a_slow_body_is_408_in_every_dialect() {
    for d in [
        Dialect::Soap(Flavor::Partner),
        Dialect::OAuth,
        Dialect::Rest,
        Dialect::Api,
    ] {
        let r = Refusal::from(BodyError::Timeout).render(d);
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT, "{d:?}");
    }
}

#[test]
fn only_waiting_refusals_say_when_to_retry() {
    let wait = Refusal::RateLimited {
        retry_after: Duration::from_millis(2500),
    };
    for d in [
        Dialect::Soap(Flavor::Partner),
        Dialect::OAuth,
        Dialect::Rest,
        Dialect::Api,
    ] {
        assert_eq!(wait.render(d).headers()[header::RETRY_AFTER], "3", "{d:?}");
        assert_eq!(Refusal::Busy.render(d).headers()[header::RETRY_AFTER], "1");
        assert!(
            Refusal::BadCredentials
                .render(d)
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }
}

#[tokio::test]
async fn an_upstream_failure_is_tokengates_json_in_every_dialect() {
    for (failure, status, code) in [
        (UpstreamFailure::Malformed, 502, "bad_gateway"),
        (UpstreamFailure::Unreachable, 502, "bad_gateway"),
        (UpstreamFailure::Saturated, 503, "upstream_busy"),
        (UpstreamFailure::Timeout, 504, "gateway_timeout"),
    ] {
        for d in [
            Dialect::Soap(Flavor::Partner),
            Dialect::OAuth,
            Dialect::Rest,
            Dialect::Bulk,
            Dialect::Api,
        ] {
            let r = Refusal::Upstream(failure).render(d);
            assert_eq!(r.status().as_u16(), status, "{failure:?} {d:?}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], crate::wire::JSON);
            let retry = r.headers().get(header::RETRY_AFTER).cloned();
            assert_eq!(retry.is_some(), failure == UpstreamFailure::Saturated);
            let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
            assert_eq!(body["error"], code, "{failure:?} {d:?}");
        }
    }
}

#[test]
fn an_unreachable_store_is_503_whichever_error_carries_it() {
    let down = || crate::store::StoreError::Unavailable("connection refused".into());
    let from_admin = Refusal::from(AdminError::Store(down()));
    let from_token = Refusal::from(TokenError::Store(down()));
    assert_eq!(from_admin, from_token);
    assert_eq!(from_admin.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!from_admin.sentence().contains("connection refused"));
}
