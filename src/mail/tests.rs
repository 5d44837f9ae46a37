//! Unit tests of the parent module.

use super::*;

#[test]
fn masks_keep_the_first_letter_and_the_domain() {
    assert_eq!(mask_email("alice@example.com"), "a***@example.com");
    assert_eq!(mask_email("nope"), "***");
}

#[test]
fn redaction_keeps_the_last_four_characters() {
    assert_eq!(
        redact("AbCdEfGhIjKlMnOpQrStUvWx"),
        "********************UvWx"
    );
}

#[test]
fn the_message_names_user_reason_token_and_what_to_do() {
    let mut user = User::new(
        "005".into(),
        "alice@example.com".into(),
        "alice@example.com".into(),
        String::new(),
        [0; 32],
        24,
        0,
    );
    user.full_name = "Alice <Admin>".into();
    let m = TokenMail {
        user: &user,
        token: "AbCdEfGhIjKlMnOpQrStUvWx",
        reason: TokenReason::AdminRotation,
        at: 0,
        previous_valid_until: None,
        named: None,
    };
    let (subject, text, html) = render("PatronManager", &m, false);
    assert_eq!(subject, "Your new PatronManager security token");
    let named = TokenMail {
        user: m.user,
        token: m.token,
        reason: m.reason,
        at: m.at,
        previous_valid_until: None,
        named: Some("dataloader"),
    };
    let (named_subject, named_text, _) = render("PatronManager", &named, false);
    assert_eq!(named_subject, "Your new security token for dataloader");
    assert!(named_text.contains("\"dataloader\": use it there only"));
    for part in [&text, &html] {
        assert!(part.contains("AbCdEfGhIjKlMnOpQrStUvWx"));
        assert!(part.contains("alice@example.com"));
        assert!(part.contains("administrator reset"));
        assert!(part.contains("did not ask"));
        assert!(part.contains("1970-01-01T00:00:00Z"));
    }
    assert!(text.contains("Hello Alice <Admin>,"));
    assert!(html.contains("Hello Alice &lt;Admin&gt;,"));
    let (_, redacted, _) = render("PatronManager", &m, true);
    assert!(!redacted.contains("AbCdEfGhIjKlMnOpQrStUvWx"));
    assert!(redacted.contains("UvWx"));
}
