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
