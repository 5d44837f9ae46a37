//! The SVG writer every chart tokengate draws shares (the load tool's run chart, the console's
//! login-history charts): a document with a white background, and elements whose attribute
//! values and text are XML-escaped as they are written, so a name that came from a client (a
//! User-Agent, a username) is always text and never markup. It knows nothing of charts: axes,
//! bars and legends are drawn by their owners from these elements.

use std::fmt::{Display, Write as _};

/// An attribute list: names are the caller's constants, values anything printable (escaped).
pub type Attrs<'a> = &'a [(&'a str, &'a dyn Display)];

/// An SVG document being written; [`Svg::finish`] closes it.
pub struct Svg {
    out: String,
}

impl Svg {
    /// Opens `<svg>` `width`×`height` in sans-serif 12, with `extra` attributes after the
    /// standard ones (a `viewBox`, a `role`), and paints the background white.
    pub fn new(width: f64, height: f64, extra: Attrs<'_>) -> Self {
        let mut svg = Svg { out: String::new() };
        svg.open(
            "svg",
            &[
                ("xmlns", &"http://www.w3.org/2000/svg"),
                ("width", &width),
                ("height", &height),
                ("font-family", &"sans-serif"),
                ("font-size", &12),
            ],
        );
        svg.attrs_tail(extra);
        svg.element(
            "rect",
            &[("width", &"100%"), ("height", &"100%"), ("fill", &"white")],
        );
        svg
    }

    /// `<name attrs>`, left open for children.
    pub fn open(&mut self, name: &str, attrs: Attrs<'_>) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.write_attrs(attrs);
        self.out.push('>');
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "</{name}>");
        self
    }

    /// `<name attrs/>`.
    pub fn element(&mut self, name: &str, attrs: Attrs<'_>) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.write_attrs(attrs);
        self.out.push_str("/>");
        self
    }

    /// `<name attrs>text</name>` with the text escaped: `<text>`, `<title>`, `<desc>`.
    pub fn text_element(&mut self, name: &str, attrs: Attrs<'_>, text: &str) -> &mut Self {
        self.open(name, attrs);
        self.out.push_str(&quick_xml::escape::escape(text));
        self.close(name)
    }

    /// `<text attrs>text</text>`, escaped.
    pub fn text(&mut self, attrs: Attrs<'_>, text: &str) -> &mut Self {
        self.text_element("text", attrs, text)
    }

    /// Closes the document; the result ends with a newline.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }

    fn write_attrs(&mut self, attrs: Attrs<'_>) {
        for (name, value) in attrs {
            let _ = write!(
                self.out,
                " {name}=\"{}\"",
                quick_xml::escape::escape(value.to_string())
            );
        }
    }

    /// Adds attributes to the element just opened (`new`'s extras after the standard ones).
    fn attrs_tail(&mut self, attrs: Attrs<'_>) {
        if attrs.is_empty() {
            return;
        }
        // The last byte is the `>` of the element just opened.
        self.out.pop();
        self.write_attrs(attrs);
        self.out.push('>');
    }
}

/// Compares a drawn SVG with its golden file (`UPDATE_GOLDEN=1` writes it instead). The SVG
/// is one long line: a difference is shown around its first byte rather than in full.
#[cfg(test)]
pub(crate) fn assert_golden(path: &str, drawn: &str, regenerate: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        let dir = std::path::Path::new(path).parent().expect("a directory");
        std::fs::create_dir_all(dir).expect("create the testdata directory");
        std::fs::write(path, drawn).expect("write the golden file");
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); create it with {regenerate}"));
    if drawn != want {
        let at = drawn
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(drawn.len().min(want.len()));
        let around = |s: &str| {
            let b = s.as_bytes();
            String::from_utf8_lossy(&b[at.saturating_sub(40).min(b.len())..(at + 60).min(b.len())])
                .into_owned()
        };
        panic!(
            "the chart no longer draws {path}: they first differ at byte {at} (lengths {} and \
             {})\n  drawn:  …{}…\n  golden: …{}…\nIf the change is intended, regenerate the file \
             with {regenerate} and review its diff.",
            drawn.len(),
            want.len(),
            around(drawn),
            around(&want),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Svg;

    #[test]
    fn text_and_attribute_values_are_escaped() {
        let mut svg = Svg::new(10.0, 20.0, &[("role", &"img")]);
        svg.text(
            &[("x", &1.5), ("fill", &"\"><script>alert(1)</script>")],
            "<script>alert('x') & \"y\"</script>",
        );
        svg.text_element("title", &[], "a < b");
        let out = svg.finish();
        assert!(
            out.starts_with(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"20\" \
                 font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\
                 <rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
            ),
            "{out}"
        );
        assert!(!out.contains("<script"), "{out}");
        assert!(
            out.contains(
                "<text x=\"1.5\" fill=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\">\
                 &lt;script&gt;alert(&apos;x&apos;) &amp; &quot;y&quot;&lt;/script&gt;</text>"
            ),
            "{out}"
        );
        assert!(out.ends_with("<title>a &lt; b</title></svg>\n"), "{out}");
    }
}
