//! The admin endpoints that read what happened: the login history and the audit trail
//! (`/tokengate/v1/admin/history`, `/admin/audit`, `/admin/audit/verify`).

use super::*;

/// The query string's fields, in order.
fn query_pairs(req: &Request<ReqBody>) -> Result<Vec<(String, String)>, Refusal> {
    match req.uri().query() {
        Some(q) => {
            serde_urlencoded::from_str(q).map_err(|_| Refusal::invalid("unreadable query string"))
        }
        None => Ok(Vec::new()),
    }
}

/// `GET /tokengate/v1/admin/history?user=&since=&outcome=&limit=&format=json|csv`.
#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/history",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("user" = Option<String>, Query, description = "Only this user's logins"),
        ("since" = Option<String>, Query, description = "Only logins since this time"),
        ("outcome" = Option<String>, Query, description = "Only this outcome, such as success or bad_credentials"),
        ("limit" = Option<usize>, Query, description = "At most this many rows, 1 to 100000 (default 100)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "The login history: {\"rows\": [...]}, or CSV"),
        (status = 400, description = "A filter that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
pub(super) async fn history(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let pairs = query_pairs(&req)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        Some(_) => return Err(Refusal::invalid("limit must be 1 to 100000")),
    };
    let filter = crate::history::filter(get("user"), get("since"), get("outcome"), limit)
        .map_err(Refusal::invalid)?;
    let store = app.store.clone();
    let rows = blocking(move || Ok(store.history_query(&filter)?)).await?;
    match get("format") {
        Some("csv") => Ok(crate::wire::history_csv(&rows)),
        None | Some("json") => Ok(json(StatusCode::OK, &serde_json::json!({ "rows": rows }))),
        Some(_) => Err(Refusal::invalid("format must be json or csv")),
    }
}

/// `GET /tokengate/v1/admin/audit?since=&actor=&target=&limit=&format=json|csv`.
#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/audit",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("since" = Option<String>, Query, description = "Only records since this time (RFC 3339) or this long ago (24h)"),
        ("actor" = Option<String>, Query, description = "Only changes by this actor (an admin's username, cli:root, system)"),
        ("target" = Option<String>, Query, description = "Only changes to this target (a username, compliance_bcc)"),
        ("limit" = Option<usize>, Query, description = "At most this many records, 1 to 100000 (default 100)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "The audit trail, newest first: {\"records\": [...]}, or CSV"),
        (status = 400, description = "A filter that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
pub(super) async fn audit_trail(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let pairs = query_pairs(&req)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let filter = crate::audit::Filter::from_query(get, 100).map_err(Refusal::invalid)?;
    let format = get("format");
    if !matches!(format, None | Some("json" | "csv")) {
        return Err(Refusal::invalid("format must be json or csv"));
    }
    let audit = app.admin.audit.clone();
    let records = blocking(move || Ok(audit.query(&filter)?)).await?;
    Ok(match format {
        Some("csv") => crate::wire::csv_download(crate::audit::to_csv(&records), "audit-trail.csv"),
        _ => json(StatusCode::OK, &serde_json::json!({ "records": records })),
    })
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/audit/verify",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "The chain is intact: {\"status\": \"intact\", \"verified\": {\"records\", \"first_seq\", \"last_seq\", \"anchored\"}}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 409, description = "The chain is broken: {\"error\": \"audit_trail_broken\", \"message\", \"seq\"} names the first record where it breaks", body = inline(Problem)),
    )
)]
pub(super) async fn audit_verify(call: Call) -> Answer {
    match perform(&call.split().1, AdminRequest::AuditVerify).await? {
        AdminAnswer::Verified { verified } => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "status": "intact", "verified": verified }),
        )),
        AdminAnswer::AuditBroken { seq, reason } => Ok(json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "audit_trail_broken",
                "message": format!("the audit trail is broken at record {seq}: {reason}"),
                "seq": seq,
            }),
        )),
        _ => Err(Refusal::Internal),
    }
}
