//! Unit tests of the parent module.

use super::*;
use crate::ids::OrgId;

fn login_of(xml: &str) -> (String, String) {
    match parse(xml.as_bytes()).unwrap().op {
        Op::Login { username, password } => (username, password),
        other => panic!("not a login: {other:?}"),
    }
}

#[test]
fn parses_the_login_envelope_of_each_client() {
    // jsforce (docs/salesforce-protocol.md §1.3)
    let jsforce = r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header/><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>u@x.com</username><password>p&amp;w&lt;TOKEN</password></login></se:Body></se:Envelope>"#;
    assert_eq!(login_of(jsforce), ("u@x.com".into(), "p&w<TOKEN".into()));
    // simple-salesforce, with declaration, CallOptions and prefixed elements
    let ss = r#"<?xml version="1.0" encoding="utf-8" ?>
<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">
  <env:Header><urn:CallOptions><urn:client>simple-salesforce</urn:client><urn:defaultNamespace>sf</urn:defaultNamespace></urn:CallOptions></env:Header>
  <env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>U</n1:username><n1:password>a b&#33;TOK</n1:password></n1:login></env:Body>
</env:Envelope>"#;
    let env = parse(ss.as_bytes()).unwrap();
    assert_eq!(env.client.as_deref(), Some("simple-salesforce"));
    assert_eq!(login_of(ss), ("U".into(), "a b!TOK".into()));
    // WSC / Data Loader: header children in their own default namespace, m: prefix
    let wsc = r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><env:Header><CallOptions xmlns="urn:partner.soap.sforce.com"><client>DataLoader</client></CallOptions></env:Header><env:Body><m:login xmlns:m="urn:partner.soap.sforce.com"><m:username>dl</m:username><m:password>pw</m:password></m:login></env:Body></env:Envelope>"#;
    assert_eq!(login_of(wsc), ("dl".into(), "pw".into()));
    assert_eq!(
        parse(wsc.as_bytes()).unwrap().client.as_deref(),
        Some("DataLoader")
    );
    // enterprise namespace
    let ent = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><login xmlns="urn:enterprise.soap.sforce.com"><username>e</username><password><![CDATA[x<y]]></password></login></s:Body></s:Envelope>"#;
    assert_eq!(login_of(ent), ("e".into(), "x<y".into()));
}

#[test]
fn reads_the_session_header_and_its_span() {
    let xml = r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header><SessionHeader xmlns="urn:partner.soap.sforce.com"><sessionId>00D!abc</sessionId></SessionHeader></se:Header><se:Body><logout xmlns="urn:partner.soap.sforce.com"/></se:Body></se:Envelope>"#;
    let env = parse(xml.as_bytes()).unwrap();
    assert_eq!(env.op, Op::Logout);
    assert_eq!(env.session_id.as_deref(), Some("00D!abc"));
    let span = env.session_header.unwrap();
    assert!(xml[span.clone()].starts_with("<SessionHeader"));
    assert!(xml[span].ends_with("</SessionHeader>"));
}

#[test]
fn other_calls_are_recognised_as_such() {
    let xml = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><query xmlns="urn:partner.soap.sforce.com"><queryString>SELECT Id FROM Account</queryString></query></s:Body></s:Envelope>"#;
    assert_eq!(parse(xml.as_bytes()).unwrap().op, Op::Other);
}

#[test]
fn refuses_dtds_unknown_entities_and_garbage() {
    let dtd = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#;
    assert_eq!(parse(dtd.as_bytes()).unwrap_err(), SoapError::Dtd);
    let ent = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><login xmlns="urn:partner.soap.sforce.com"><username>&e;</username><password>x</password></login></s:Body></s:Envelope>"#;
    assert_eq!(parse(ent.as_bytes()).unwrap_err(), SoapError::Entity);
    assert!(parse(b"<not xml").is_err());
    assert_eq!(parse(b"<a/>").unwrap_err(), SoapError::NotSoap);
    assert_eq!(parse(b"").unwrap_err(), SoapError::NotSoap);
    let deep = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>{}</s:Body></s:Envelope>"#,
        "<a>".repeat(100)
    );
    assert_eq!(parse(deep.as_bytes()).unwrap_err(), SoapError::TooDeep);
    let missing = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><login xmlns="urn:partner.soap.sforce.com"><username>u</username></login></s:Body></s:Envelope>"#;
    assert_eq!(
        parse(missing.as_bytes()).unwrap_err(),
        SoapError::Missing("password")
    );
}

#[test]
fn a_byte_order_mark_does_not_move_the_session_header_span() {
    let body = format!(
        "\u{feff}{}",
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:partner.soap.sforce.com"><s:Header><p:SessionHeader><p:sessionId>00D!x</p:sessionId></p:SessionHeader></s:Header><s:Body><p:query/></s:Body></s:Envelope>"#
    );
    let env = parse(body.as_bytes()).unwrap();
    let span = env.session_header.unwrap();
    assert!(body[span].starts_with("<p:SessionHeader>"));
}

#[test]
fn the_head_is_read_from_a_prefix_up_to_the_body() {
    let whole = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:partner.soap.sforce.com"><s:Header><p:SessionHeader><p:sessionId>00D!x</p:sessionId></p:SessionHeader></s:Header><s:Body><p:create>"#;
    let head = parse_head(whole.as_bytes()).unwrap().unwrap();
    assert_eq!(head.session_id.as_deref(), Some("00D!x"));
    // Cut before the Body starts: no head yet.
    let cut = &whole[..whole.find("<s:Body").unwrap() + 3];
    assert!(parse_head(cut.as_bytes()).unwrap().is_none());
    // Ambiguity in the head is found in a prefix too.
    let twice = whole.replace("</s:Header>", "</s:Header><s:Header/>");
    assert!(matches!(
        parse_head(twice.as_bytes()),
        Err(SoapError::Ambiguous(_))
    ));
}

#[test]
fn declaration_floods_are_refused_before_any_name_is_resolved() {
    let many = (0..40)
        .map(|i| format!(r#" xmlns:a{i}="urn:x""#))
        .collect::<String>();
    let body = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x{many}/></s:Body></s:Envelope>"#
    );
    assert_eq!(parse(body.as_bytes()).unwrap_err(), SoapError::TooComplex);
    // Declarations piled up in scope: nine nested elements of fifteen each.
    let level = (0..15)
        .map(|i| format!(r#" xmlns:b{i}="urn:y""#))
        .collect::<String>();
    let nested = format!("{}{}", format!("<e{level}>").repeat(9), "</e>".repeat(9));
    let body = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x>{nested}</x></s:Body></s:Envelope>"#
    );
    assert_eq!(parse(body.as_bytes()).unwrap_err(), SoapError::TooComplex);
}

#[test]
fn declarations_count_while_in_scope_so_a_batch_may_redeclare_on_every_field() {
    // As .NET's XmlSerializer writes a partner batch: each field declares its namespace again.
    let field = |name: &str, value: &str| {
        format!(r#"<{name} xmlns="urn:sobject.partner.soap.sforce.com">{value}</{name}>"#)
    };
    let records = (0..500)
        .map(|i| {
            format!(
                "<sObjects>{}{}</sObjects><sObjects xmlns:q=\"urn:q\"/>",
                field("type", "Account"),
                field("Name", &format!("Acme {i}"))
            )
        })
        .collect::<String>();
    let body = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><create xmlns="urn:partner.soap.sforce.com">{records}</create></s:Body></s:Envelope>"#
    );
    assert_eq!(parse(body.as_bytes()).unwrap().op, Op::Other);
}

#[test]
fn ambiguous_envelopes_are_refused() {
    let env = |header: &str, body: &str| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:partner.soap.sforce.com">{header}<s:Body>{body}</s:Body></s:Envelope>"#
        )
    };
    let sh =
        |sid: &str| format!("<p:SessionHeader><p:sessionId>{sid}</p:sessionId></p:SessionHeader>");
    let login = "<p:login><p:username>u</p:username><p:password>x</p:password></p:login>";
    let cases = [
        env(&format!("<s:Header>{}{}</s:Header>", sh("a"), sh("b")), "<p:query/>"),
        env(
            "<s:Header><p:SessionHeader><p:sessionId>a</p:sessionId><p:sessionId>b</p:sessionId></p:SessionHeader></s:Header>",
            "<p:query/>",
        ),
        env("<s:Header/><s:Header/>", "<p:query/>"),
        env("", &format!("{login}<p:query/>")),
        env("", &format!("<p:query/>{login}")),
        env("", "<p:login><p:username>u</p:username><p:username>v</p:username><p:password>x</p:password></p:login>"),
        env("", ""),
        env("", "stray text<p:query/>"),
        format!("{}{}", env("", login), env("", login)),
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><a/></s:Body><s:Body><b/></s:Body></s:Envelope>"#.to_owned(),
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><a/></s:Body><s:Header/></s:Envelope>"#.to_owned(),
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><a/></s:Body><x/></s:Envelope>"#.to_owned(),
    ];
    for c in &cases {
        assert!(
            matches!(parse(c.as_bytes()), Err(SoapError::Ambiguous(_))),
            "{c}: {:?}",
            parse(c.as_bytes())
        );
    }
    // The unambiguous forms still parse.
    assert!(
        parse(env(&format!("<s:Header>{}</s:Header>", sh("a")), "<p:query/>").as_bytes()).is_ok()
    );
    assert!(matches!(
        parse(env("", login).as_bytes()).unwrap().op,
        Op::Login { .. }
    ));
}

#[test]
fn paths_select_the_wsdl_and_version() {
    let p = parse_path("/services/Soap/u/59.0/").unwrap();
    assert_eq!((p.flavor, p.version.as_str()), (Flavor::Partner, "59.0"));
    assert!(p.version_is_valid());
    assert_eq!(
        parse_path("/services/Soap/c/42.0/00D000000000001")
            .unwrap()
            .flavor,
        Flavor::Enterprise
    );
    assert!(
        !parse_path("/services/Soap/u/latest")
            .unwrap()
            .version_is_valid()
    );
    assert!(parse_path("/services/Soap/x/1.0").is_none());
    assert!(parse_path("/services/data/v59.0").is_none());
}

#[test]
fn login_fault_is_byte_compatible() {
    assert_eq!(
        login_fault(Flavor::Partner),
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
    );
}

#[test]
fn login_response_keeps_wsdl_order_and_unprefixed_elements() {
    let org = OrgId::parse("00D000000000001").unwrap();
    let info = UserInfo {
        org: &org,
        org_name: "Acme & Co",
        user_id: "005000000000001AAA",
        username: "u@x.com",
        full_name: "",
        email: "u@x.com",
        session_seconds_valid: 7200,
    };
    let xml = login_response(
        Flavor::Partner,
        "https://127.0.0.1:8443",
        "59.0",
        "00D000000000001!abc",
        &info,
    );
    let order = [
        "<metadataServerUrl>",
        "<passwordExpired>",
        "<sandbox>",
        "<serverUrl>",
        "<sessionId>",
        "<userId>",
        "<userInfo>",
    ];
    let positions: Vec<usize> = order.iter().map(|t| xml.find(t).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
    assert!(xml.contains(
        "<serverUrl>https://127.0.0.1:8443/services/Soap/u/59.0/00D000000000001</serverUrl>"
    ));
    assert!(xml.contains("<organizationName>Acme &amp; Co</organizationName>"));
    assert!(xml.contains("<sessionSecondsValid>7200</sessionSecondsValid>"));
    assert!(!xml.contains('\n'));
}
