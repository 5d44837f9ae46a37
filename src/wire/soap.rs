//! SOAP 1.1 as the Salesforce partner and enterprise APIs speak it (docs/salesforce-protocol.md §1).
//!
//! Requests are parsed namespace-aware with quick-xml, ignoring prefixes; document type
//! declarations are refused and only the predefined and character entity references are
//! resolved, so no entity can expand. Answers are rendered as compact one-line envelopes
//! with unprefixed elements in WSDL sequence order, because jsforce reads them with regular
//! expressions and WSC binds them strictly in order (docs/salesforce-protocol.md §1.4, §1.5).
//! The parser is this file; the answers are `render`.

use std::ops::Range;

use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

mod render;
pub use render::{
    LOGIN_FAILED_MESSAGE, PROFILE_ID, UserInfo, client_fault, fault, get_user_info_response,
    invalid_session_fault, login_fault, login_response, logout_response,
};

const NS_ENVELOPE: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
const NS_PARTNER: &[u8] = b"urn:partner.soap.sforce.com";
const NS_ENTERPRISE: &[u8] = b"urn:enterprise.soap.sforce.com";
const NS_METADATA: &[u8] = b"http://soap.sforce.com/2006/04/metadata";
const MAX_DEPTH: usize = 32;
const MAX_FIELD_BYTES: usize = 32 * 1024;
/// Attributes one element may carry, namespace declarations one element may make, and
/// declarations in scope at once (those of an element and its ancestors). Each element's name
/// is resolved against the declarations in scope, so without these bounds a few kilobytes of
/// duplicate `xmlns:a` declarations make parsing quadratic (seconds of CPU for a small gzipped
/// body); with them, resolving a name costs at most `MAX_NS_IN_SCOPE` comparisons. A
/// declaration leaves scope with its element, so a batch whose every field re-declares its
/// namespace (.NET's XmlSerializer, Apex-generated clients: `<Name xmlns="urn:sobject…">`)
/// is not limited by its length.
const MAX_ATTRIBUTES: usize = 32;
const MAX_NS_PER_ELEMENT: usize = 16;
const MAX_NS_IN_SCOPE: usize = 128;

/// Which WSDL the path selects: `/Soap/u/` partner, `/Soap/c/` enterprise, `/Soap/m/`
/// metadata (docs/salesforce-protocol.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Partner,
    Enterprise,
    Metadata,
}

impl Flavor {
    fn namespace(self) -> &'static str {
        match self {
            Flavor::Partner => "urn:partner.soap.sforce.com",
            Flavor::Enterprise => "urn:enterprise.soap.sforce.com",
            Flavor::Metadata => "http://soap.sforce.com/2006/04/metadata",
        }
    }

    fn fault_namespace(self) -> &'static str {
        match self {
            Flavor::Enterprise => "urn:fault.enterprise.soap.sforce.com",
            _ => "urn:fault.partner.soap.sforce.com",
        }
    }

    fn path_letter(self) -> &'static str {
        match self {
            Flavor::Partner => "u",
            Flavor::Enterprise => "c",
            Flavor::Metadata => "m",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapPath {
    pub flavor: Flavor,
    pub version: String,
}

impl SoapPath {
    /// Versions look like `59.0` (docs/salesforce-protocol.md §1.1: accept any `\d+\.\d+`).
    pub fn version_is_valid(&self) -> bool {
        match self.version.split_once('.') {
            Some((a, b)) => {
                !a.is_empty()
                    && !b.is_empty()
                    && a.len() <= 4
                    && b.len() <= 4
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            }
            None => false,
        }
    }
}

/// `/services/Soap/{u|c|m}/{version}[/anything]`, with or without a trailing slash.
pub fn parse_path(path: &str) -> Option<SoapPath> {
    let rest = path.strip_prefix("/services/Soap/")?;
    let mut parts = rest.splitn(3, '/');
    let flavor = match parts.next()? {
        "u" => Flavor::Partner,
        "c" => Flavor::Enterprise,
        "m" => Flavor::Metadata,
        _ => return None,
    };
    let version = parts.next().unwrap_or_default().to_owned();
    Some(SoapPath { flavor, version })
}

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Login {
        username: String,
        password: String,
    },
    Logout,
    GetUserInfo,
    /// Any other call: forwarded upstream once its SessionHeader is valid.
    Other,
}

#[derive(Debug)]
pub struct Envelope {
    pub op: Op,
    pub session_id: Option<String>,
    /// `CallOptions/client`, for the login history.
    pub client: Option<String>,
    /// Byte range of the `SessionHeader` element, so it can be cut out before forwarding.
    pub session_header: Option<Range<usize>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SoapError {
    #[error("the request is not well-formed XML: {0}")]
    Malformed(String),
    #[error("the request is not a SOAP 1.1 envelope")]
    NotSoap,
    #[error("document type declarations are not accepted")]
    Dtd,
    #[error("the XML is nested too deeply")]
    TooDeep,
    /// Not echoed: the reference may sit inside a password.
    #[error("the XML uses an unknown entity reference")]
    Entity,
    #[error("login() needs a {0} element")]
    Missing(&'static str),
    #[error("an element is too long")]
    FieldTooLong,
    /// Two `Header`s, two `SessionHeader`s, a `Body` with other than one call, ...: a parser
    /// and the upstream could read such an envelope differently, so it is refused.
    #[error("the envelope is ambiguous: {0}")]
    Ambiguous(&'static str),
    #[error("the XML has too many attributes or namespace declarations")]
    TooComplex,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Envelope,
    Header,
    Body,
    SessionHeader,
    SessionId,
    CallOptions,
    Client,
    Login,
    Username,
    Password,
    Ignored,
}

fn is_sf_ns(ns: &ResolveResult) -> bool {
    matches!(ns, ResolveResult::Bound(Namespace(n)) if *n == NS_PARTNER || *n == NS_ENTERPRISE || *n == NS_METADATA)
}

/// Parses a SOAP request body (already decompressed and size-capped by the caller).
pub fn parse(body: &[u8]) -> Result<Envelope, SoapError> {
    parse_bom(body, false).map(|e| e.expect("a whole parse ends with an envelope"))
}

/// Reads an envelope's head from a prefix of it: the session and client, up to the start of
/// the `Body` (so a large call's session is checked before the rest is read). `None` when
/// the prefix ends before the `Body` starts. The head is checked for ambiguity like a whole
/// envelope's; what follows it is not looked at.
pub fn parse_head(prefix: &[u8]) -> Result<Option<Envelope>, SoapError> {
    parse_bom(prefix, true)
}

fn parse_bom(body: &[u8], head_only: bool) -> Result<Option<Envelope>, SoapError> {
    // quick-xml skips a UTF-8 byte order mark without counting it in its positions: parse what
    // follows it, and move the spans by its length, or a span would cut the wrong bytes.
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if let Some(rest) = body.strip_prefix(BOM) {
        let env = parse_from(rest, head_only)?.map(|mut env| {
            env.session_header = env
                .session_header
                .map(|r| r.start + BOM.len()..r.end + BOM.len());
            env
        });
        return Ok(env);
    }
    parse_from(body, head_only)
}

/// Checks a start tag's attributes against the bounds; returns its namespace declarations.
fn count_attributes(e: &quick_xml::events::BytesStart<'_>) -> Result<usize, SoapError> {
    let (mut attributes, mut declarations) = (0, 0);
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| SoapError::Malformed(e.to_string()))?;
        attributes += 1;
        let key = a.key.as_ref();
        if key == b"xmlns" || key.starts_with(b"xmlns:") {
            declarations += 1;
        }
        if attributes > MAX_ATTRIBUTES || declarations > MAX_NS_PER_ELEMENT {
            return Err(SoapError::TooComplex);
        }
    }
    Ok(declarations)
}

fn parse_from(body: &[u8], head_only: bool) -> Result<Option<Envelope>, SoapError> {
    let mut reader = NsReader::from_reader(body);
    let mut stack: Vec<Tag> = Vec::with_capacity(8);
    let mut env = Envelope {
        op: Op::Other,
        session_id: None,
        client: None,
        session_header: None,
    };
    let mut seen_envelope = false;
    let mut seen_header = false;
    let mut seen_body = false;
    let mut session_headers = 0usize;
    let mut call_options = 0usize;
    let mut body_children = 0usize;
    let mut session_ids = 0usize;
    let mut clients = 0usize;
    let (mut usernames, mut passwords) = (0usize, 0usize);
    let (mut username, mut password): (Option<String>, Option<String>) = (None, None);
    let mut capture: Option<String> = None;
    let mut header_start = 0usize;
    // Declarations in scope: their number, and how many each open element made (beside
    // `stack`, popped with it).
    let mut in_scope = 0usize;
    let mut declared: Vec<usize> = Vec::with_capacity(8);

    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(e) => e,
            // A prefix may end anywhere; its head is simply not all there.
            Err(_) if head_only => return Ok(None),
            Err(e) => return Err(SoapError::Malformed(e.to_string())),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                // The bounds first: resolving the name costs as much as the declarations in
                // scope.
                let declarations = count_attributes(e)?;
                if in_scope + declarations > MAX_NS_IN_SCOPE {
                    return Err(SoapError::TooComplex);
                }
                let (ns, local) = reader.resolve_element(e.name());
                let local = local.as_ref();
                let parent = stack.last().copied();
                let env_ns = matches!(ns, ResolveResult::Bound(Namespace(n)) if n == NS_ENVELOPE);
                let ambiguous = |what| Err(SoapError::Ambiguous(what));
                let tag = match parent {
                    None if seen_envelope => return ambiguous("a second root element"),
                    None if env_ns && local == b"Envelope" => {
                        seen_envelope = true;
                        Tag::Envelope
                    }
                    None => return Err(SoapError::NotSoap),
                    Some(Tag::Envelope) if env_ns && local == b"Header" => {
                        if seen_header || seen_body {
                            return ambiguous("a second Header, or a Header after the Body");
                        }
                        seen_header = true;
                        Tag::Header
                    }
                    Some(Tag::Envelope) if env_ns && local == b"Body" => {
                        if seen_body {
                            return ambiguous("a second Body");
                        }
                        if head_only {
                            return Ok(Some(env));
                        }
                        seen_body = true;
                        Tag::Body
                    }
                    Some(Tag::Envelope) => {
                        return ambiguous("an Envelope child other than Header and Body");
                    }
                    Some(Tag::Header) if is_sf_ns(&ns) && local == b"SessionHeader" => {
                        session_headers += 1;
                        if session_headers > 1 {
                            return ambiguous("a second SessionHeader");
                        }
                        header_start = before;
                        Tag::SessionHeader
                    }
                    Some(Tag::Header) if is_sf_ns(&ns) && local == b"CallOptions" => {
                        call_options += 1;
                        if call_options > 1 {
                            return ambiguous("a second CallOptions");
                        }
                        Tag::CallOptions
                    }
                    Some(Tag::SessionHeader) if local == b"sessionId" => {
                        session_ids += 1;
                        if session_ids > 1 {
                            return ambiguous("a second sessionId");
                        }
                        Tag::SessionId
                    }
                    Some(Tag::CallOptions) if local == b"client" => {
                        clients += 1;
                        if clients > 1 {
                            return ambiguous("a second client");
                        }
                        Tag::Client
                    }
                    Some(Tag::Body) => {
                        body_children += 1;
                        if body_children > 1 {
                            // A second call would be ignored by one reader and read by another
                            // (a login that carries a second call would be forwarded).
                            return ambiguous("a Body with more than one call");
                        }
                        if is_sf_ns(&ns) {
                            match local {
                                b"login" => {
                                    env.op = Op::Login {
                                        username: String::new(),
                                        password: String::new(),
                                    };
                                    Tag::Login
                                }
                                b"logout" => {
                                    env.op = Op::Logout;
                                    Tag::Ignored
                                }
                                b"getUserInfo" => {
                                    env.op = Op::GetUserInfo;
                                    Tag::Ignored
                                }
                                _ => Tag::Ignored,
                            }
                        } else {
                            env.op = Op::Other;
                            Tag::Ignored
                        }
                    }
                    Some(Tag::Login) if local == b"username" => {
                        usernames += 1;
                        if usernames > 1 {
                            return ambiguous("a second username");
                        }
                        Tag::Username
                    }
                    Some(Tag::Login) if local == b"password" => {
                        passwords += 1;
                        if passwords > 1 {
                            return ambiguous("a second password");
                        }
                        Tag::Password
                    }
                    _ => Tag::Ignored,
                };
                if empty {
                    if tag == Tag::SessionHeader {
                        env.session_header = Some(before..reader.buffer_position() as usize);
                    }
                    if matches!(tag, Tag::Username) {
                        username = Some(String::new());
                    }
                    if matches!(tag, Tag::Password) {
                        password = Some(String::new());
                    }
                    continue;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(SoapError::TooDeep);
                }
                if matches!(
                    tag,
                    Tag::SessionId | Tag::Client | Tag::Username | Tag::Password
                ) {
                    capture = Some(String::new());
                }
                stack.push(tag);
                // An empty element's declarations end with it; a start tag's with its end.
                declared.push(declarations);
                in_scope += declarations;
            }
            Event::End(_) => {
                in_scope -= declared.pop().unwrap_or(0);
                let tag = stack.pop();
                match tag {
                    Some(Tag::SessionHeader) => {
                        env.session_header = Some(header_start..reader.buffer_position() as usize);
                    }
                    Some(Tag::SessionId) => {
                        env.session_id = capture.take().map(|s| s.trim().to_owned())
                    }
                    Some(Tag::Client) => env.client = capture.take().map(|s| s.trim().to_owned()),
                    Some(Tag::Username) => username = capture.take(),
                    Some(Tag::Password) => password = capture.take(),
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some(c) = capture.as_mut() {
                    c.push_str(
                        &t.decode()
                            .map_err(|e| SoapError::Malformed(e.to_string()))?,
                    );
                } else if matches!(
                    stack.last(),
                    None | Some(Tag::Envelope | Tag::Header | Tag::Body)
                ) && !t.iter().all(u8::is_ascii_whitespace)
                {
                    return Err(SoapError::Ambiguous("text outside the elements"));
                }
            }
            Event::CData(t) => {
                if let Some(c) = capture.as_mut() {
                    c.push_str(
                        &t.decode()
                            .map_err(|e| SoapError::Malformed(e.to_string()))?,
                    );
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    Ok(None) => {
                        let name = r
                            .decode()
                            .map_err(|e| SoapError::Malformed(e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or(SoapError::Entity)?
                            .to_owned()
                    }
                    Err(e) => return Err(SoapError::Malformed(e.to_string())),
                };
                if let Some(c) = capture.as_mut() {
                    c.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(SoapError::Dtd),
            Event::Eof if head_only => return Ok(None),
            Event::Eof => break,
            _ => {}
        }
        if capture.as_ref().is_some_and(|c| c.len() > MAX_FIELD_BYTES) {
            return Err(SoapError::FieldTooLong);
        }
    }
    if !seen_envelope {
        return Err(SoapError::NotSoap);
    }
    if !seen_body || body_children != 1 {
        return Err(SoapError::Ambiguous("a Body must hold exactly one call"));
    }
    if !stack.is_empty() {
        return Err(SoapError::Malformed(
            "the document ends inside an element".into(),
        ));
    }
    if let Op::Login { .. } = env.op {
        let username = username.ok_or(SoapError::Missing("username"))?;
        let password = password.ok_or(SoapError::Missing("password"))?;
        env.op = Op::Login {
            username: username.trim().to_owned(),
            password,
        };
    }
    Ok(Some(env))
}

#[cfg(test)]
mod tests;
