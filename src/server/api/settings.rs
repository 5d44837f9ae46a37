//! The admin endpoints on installation settings: the Compliance BCC
//! (`/tokengate/v1/admin/settings/compliance-bcc`).

use super::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ComplianceBody {
    enabled: bool,
    #[serde(default)]
    address: Option<String>,
    #[serde(default = "yes")]
    redact_secrets: bool,
}

pub(super) fn yes() -> bool {
    true
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/settings/compliance-bcc",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "The Compliance copy setting: {\"enabled\", \"address\", \"redact_secrets\"}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
pub(super) async fn compliance_bcc(call: Call) -> Answer {
    let s = ComplianceBcc::load(call.app.store.as_ref()).map_err(|e| Refusal::internal(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(s).expect("serialisable"),
    ))
}

#[utoipa::path(
    put,
    path = "/tokengate/v1/admin/settings/compliance-bcc",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    request_body(content = inline(ComplianceBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The setting as saved", content_type = "application/json"),
        (status = 400, description = "No address, or not a valid one, for an enabled copy", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
pub(super) async fn set_compliance_bcc(call: Call) -> Answer {
    let (req, call) = call.split();
    let b: ComplianceBody = read::json(&call.app, req).await?;
    let address = b
        .address
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    if b.enabled && address.is_none() {
        return Err(Refusal::invalid(
            "an address is required to enable the copy",
        ));
    }
    let op = AdminRequest::ComplianceSet {
        address,
        disable: !b.enabled,
        redact: Some(b.redact_secrets),
    };
    match perform(&call, op).await? {
        AdminAnswer::Compliance { setting } => Ok(json(
            StatusCode::OK,
            &serde_json::to_value(setting).expect("serialisable"),
        )),
        _ => Err(Refusal::Internal),
    }
}
