//! SOAP answers: the login, getUserInfo and logout responses and the faults, rendered by hand
//! as compact one-line envelopes with unprefixed elements in WSDL sequence order (the module
//! doc of `soap` says why: jsforce reads them with regular expressions and WSC binds them
//! strictly in order).

use super::Flavor;
use crate::ids::OrgId;

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// What a login or getUserInfo answer says about the user and the org.
pub struct UserInfo<'a> {
    pub org: &'a OrgId,
    pub org_name: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub full_name: &'a str,
    pub email: &'a str,
    pub session_seconds_valid: u64,
}

/// `profileId` of every tokengate user: one profile, "Standard User"-like.
pub const PROFILE_ID: &str = "00e000000000001AAA";

fn push_user_info(out: &mut String, u: &UserInfo<'_>) {
    use std::fmt::Write as _;
    let full_name = if u.full_name.is_empty() {
        u.username
    } else {
        u.full_name
    };
    // GetUserInfoResult in WSDL sequence order (docs/salesforce-protocol.md §1.4).
    let _ = write!(
        out,
        "<accessibilityMode>false</accessibilityMode><chatterExternal>false</chatterExternal>\
<currencySymbol>$</currencySymbol><orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>\
<orgDefaultCurrencyIsoCode>USD</orgDefaultCurrencyIsoCode><orgDefaultCurrencyLocale>en_US</orgDefaultCurrencyLocale>\
<orgDisallowHtmlAttachments>false</orgDisallowHtmlAttachments><orgHasPersonAccounts>false</orgHasPersonAccounts>\
<organizationId>{org}</organizationId><organizationMultiCurrency>false</organizationMultiCurrency>\
<organizationName>{org_name}</organizationName><profileId>{PROFILE_ID}</profileId><roleId xsi:nil=\"true\"/>\
<sessionSecondsValid>{secs}</sessionSecondsValid><userDefaultCurrencyIsoCode xsi:nil=\"true\"/>\
<userEmail>{email}</userEmail><userFullName>{full_name}</userFullName><userId>{uid}</userId>\
<userLanguage>en_US</userLanguage><userLocale>en_US</userLocale><userName>{username}</userName>\
<userTimeZone>GMT</userTimeZone><userType>Standard</userType><userUiSkin>Theme3</userUiSkin>",
        org = u.org.id18,
        org_name = esc(u.org_name),
        secs = u.session_seconds_valid,
        email = esc(u.email),
        full_name = esc(full_name),
        uid = u.user_id,
        username = esc(u.username),
    );
}

fn open_envelope(flavor: Flavor) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"{}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>",
        flavor.namespace()
    )
}

const CLOSE_ENVELOPE: &str = "</soapenv:Body></soapenv:Envelope>";

/// The `loginResponse` envelope. `origin` is `https://host[:port]`.
pub fn login_response(
    flavor: Flavor,
    origin: &str,
    version: &str,
    session_id: &str,
    info: &UserInfo<'_>,
) -> String {
    let mut out = open_envelope(flavor);
    let org15 = &info.org.id15;
    out.push_str("<loginResponse><result>");
    out.push_str(&format!(
        "<metadataServerUrl>{origin}/services/Soap/m/{version}/{org15}</metadataServerUrl>\
<passwordExpired>false</passwordExpired><sandbox>false</sandbox>\
<serverUrl>{origin}/services/Soap/{letter}/{version}/{org15}</serverUrl>\
<sessionId>{session_id}</sessionId><userId>{uid}</userId><userInfo>",
        letter = flavor.path_letter(),
        uid = info.user_id,
    ));
    push_user_info(&mut out, info);
    out.push_str("</userInfo></result></loginResponse>");
    out.push_str(CLOSE_ENVELOPE);
    out
}

pub fn get_user_info_response(flavor: Flavor, info: &UserInfo<'_>) -> String {
    let mut out = open_envelope(flavor);
    out.push_str("<getUserInfoResponse><result>");
    push_user_info(&mut out, info);
    out.push_str("</result></getUserInfoResponse>");
    out.push_str(CLOSE_ENVELOPE);
    out
}

pub fn logout_response(flavor: Flavor) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"{}\"><soapenv:Body><logoutResponse/></soapenv:Body></soapenv:Envelope>",
        flavor.namespace()
    )
}

/// A Salesforce API fault: `faultcode` `sf:{code}`, `faultstring` `{code}: {message}` and a
/// typed detail element (`LoginFault`, `UnexpectedErrorFault`, ...) that WSC maps to an
/// exception class (docs/salesforce-protocol.md §1.5). `code` must be a value of the WSDL `ExceptionCode` enum.
pub fn fault(flavor: Flavor, detail_type: &str, code: &str, message: &str) -> String {
    let message = esc(message);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:sf=\"{ns}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {message}</faultstring><detail><sf:{detail_type} xsi:type=\"sf:{detail_type}\"><sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{message}</sf:exceptionMessage></sf:{detail_type}></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>",
        ns = flavor.fault_namespace(),
    )
}

pub const LOGIN_FAILED_MESSAGE: &str =
    "Invalid username, password, security token; or user locked out.";

/// The one answer to every failed login, whatever the reason.
pub fn login_fault(flavor: Flavor) -> String {
    fault(flavor, "LoginFault", "INVALID_LOGIN", LOGIN_FAILED_MESSAGE)
}

/// jsforce re-logs in only on a 500 whose faultcode is prefixed `…:INVALID_SESSION_ID`, and WSC
/// only when the faultstring says `Illegal Session` (docs/salesforce-protocol.md §3.2).
pub fn invalid_session_fault(flavor: Flavor) -> String {
    fault(
        flavor,
        "UnexpectedErrorFault",
        "INVALID_SESSION_ID",
        "Invalid Session ID found in SessionHeader: Illegal Session",
    )
}

/// A request tokengate could not read: SOAP 1.1 §4.4.1 `Client` fault, no API detail.
pub fn client_fault(message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring>{}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>",
        esc(message)
    )
}
