//! A form's errors on its way back to the page: which field each error belongs to and what it
//! says, for `templates/console/form_errors.html` (the error summary at the top of the page,
//! focused on load, linking to each field; `aria-invalid` and `aria-describedby` on the field;
//! "Error: " in the title). A handler builds a [`FormErrors`] and renders the page with
//! `form_errors => errors.context()`.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Serialize;

/// The errors of one submitted form, in the order they are shown.
#[derive(Debug, Default, Clone)]
pub(super) struct FormErrors {
    list: Vec<FormError>,
}

/// One error: the `id` of the field it belongs to (`None`: the form as a whole) and the
/// sentence shown.
#[derive(Debug, Clone, Serialize)]
struct FormError {
    field: Option<String>,
    message: String,
}

/// What the templates read: the errors in order (the summary) and by field id (the fields).
#[derive(Serialize)]
struct View<'a> {
    list: &'a [FormError],
    fields: BTreeMap<&'a str, &'a str>,
}

impl FormErrors {
    /// No errors.
    pub(super) fn none() -> Self {
        Self::default()
    }

    /// `message` about the field whose element id is `field`, when there is a message.
    pub(super) fn on(field: &str, message: Option<String>) -> Self {
        let mut e = Self::none();
        if let Some(m) = message {
            e.add(Some(field), m);
        }
        e
    }

    /// `message` from a parser whose errors start with the parameter they are about
    /// (`since: ...`, `since must be ...`): tied to that parameter's field, given as
    /// `(parameter, element id)` pairs; about the whole form when it names none of them.
    pub(super) fn naming(message: Option<String>, fields: &[(&str, &str)]) -> Self {
        let mut e = Self::none();
        if let Some(m) = message {
            let first = m.split([':', ' ']).next().unwrap_or_default();
            let field = fields.iter().find(|(p, _)| *p == first).map(|(_, id)| *id);
            e.add(field, m);
        }
        e
    }

    /// Adds an error about `field` (an element id), or about the whole form with `None`.
    pub(super) fn add(&mut self, field: Option<&str>, message: impl Into<String>) {
        self.list.push(FormError {
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// 400 when the form was refused, else 200.
    pub(super) fn status(&self) -> StatusCode {
        if self.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    /// The template value: none at all when there are no errors (so `{% if form_errors %}`
    /// is false), else the list and the per-field map (the first error of a field wins).
    pub(super) fn context(&self) -> minijinja::Value {
        if self.is_empty() {
            return minijinja::Value::from(());
        }
        let mut fields = BTreeMap::new();
        for e in &self.list {
            if let Some(f) = &e.field {
                fields.entry(f.as_str()).or_insert(e.message.as_str());
            }
        }
        minijinja::Value::from_serialize(View {
            list: &self.list,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::{Environment, context};

    fn render(errors: &FormErrors) -> String {
        let mut env = Environment::new();
        env.add_template(
            "form_errors.html",
            include_str!("../../../templates/console/form_errors.html"),
        )
        .unwrap();
        env.add_template(
            "t.html",
            r#"{% import "form_errors.html" as fe %}{% if form_errors %}{{ fe.summary(form_errors) }}{% endif %}<input id="code"{{ fe.attrs(form_errors, "code", "code-hint") }}>{{ fe.message(form_errors, "code") }}<input id="other"{{ fe.attrs(form_errors, "other") }}>"#,
        )
        .unwrap();
        env.get_template("t.html")
            .unwrap()
            .render(context! { form_errors => errors.context() })
            .unwrap()
    }

    #[test]
    fn a_field_error_is_summarised_linked_and_tied_to_its_field() {
        let mut e = FormErrors::on("code", Some("The code is not right.".into()));
        e.add(None, "Try again <later>.");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let html = render(&e);
        assert!(
            html.contains(r#"role="alert" tabindex="-1" autofocus"#),
            "{html}"
        );
        assert!(
            html.contains(r##"<a href="#code">The code is not right.</a>"##),
            "{html}"
        );
        assert!(html.contains("<li>Try again &lt;later&gt;.</li>"), "{html}");
        assert!(
            html.contains(
                r#"<input id="code" aria-invalid="true" aria-describedby="code-error code-hint">"#
            ),
            "{html}"
        );
        assert!(
            html.contains(r#"<p id="code-error" class="field-error">"#),
            "{html}"
        );
        assert!(html.contains(r#"<input id="other">"#), "{html}");
    }

    #[test]
    fn a_parser_error_goes_to_the_field_it_names_or_to_the_whole_form() {
        let fields = [("since", "hs"), ("outcome", "ho")];
        let e = FormErrors::naming(Some("since: 'x' is not a time".into()), &fields);
        assert_eq!(e.list[0].field.as_deref(), Some("hs"));
        let e = FormErrors::naming(Some("since must be a time".into()), &fields);
        assert_eq!(e.list[0].field.as_deref(), Some("hs"));
        let e = FormErrors::naming(Some("sinceX: no".into()), &fields);
        assert_eq!(e.list[0].field, None);
        let e = FormErrors::naming(Some("The store failed".into()), &fields);
        assert_eq!(e.list[0].field, None);
        assert!(FormErrors::naming(None, &fields).is_empty());
    }

    #[test]
    fn without_errors_there_is_no_summary_and_fields_keep_their_hint() {
        let e = FormErrors::on("code", None);
        assert_eq!(e.status(), StatusCode::OK);
        let html = render(&e);
        assert!(!html.contains("alert"), "{html}");
        assert!(!html.contains("aria-invalid"), "{html}");
        assert!(
            html.contains(r#"<input id="code" aria-describedby="code-hint">"#),
            "{html}"
        );
    }
}
