//! Dependencies between tokengate's top-level modules point one way: no chain of `crate::`
//! paths leads from a module back to itself. Every `.rs` file of the library under `src/` is
//! parsed (with `syn`, test code included, comments and doc text not), each `crate::X` path
//! naming another top-level module `X` is an edge from the file's module to `X` — in `use`
//! trees, in expressions and types, and inside macro calls — and the test fails on every
//! strongly connected set of more than one module, naming the files behind each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// module → module it imports → the files (relative to `src/`) that make the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's top-level modules: the `mod` items of `lib.rs`.
fn top_level_modules(lib_rs: &str) -> BTreeSet<String> {
    syn::parse_file(lib_rs)
        .expect("lib.rs parses")
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, contents).
fn rust_files(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The top-level module a file belongs to (`store/sled/audit_trail.rs` → `store`).
fn module_of(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The top-level modules one file's code names through `crate::`.
struct CratePaths<'a> {
    modules: &'a BTreeSet<String>,
    found: BTreeSet<String>,
}

impl CratePaths<'_> {
    fn note(&mut self, name: &str) {
        if self.modules.contains(name) {
            self.found.insert(name.to_owned());
        }
    }

    /// `crate::a`, `crate::{a, b::c}`, `crate::a as b` in a `use` tree below `crate`.
    fn use_tree(&mut self, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => self.note(&p.ident.to_string()),
            syn::UseTree::Name(n) => self.note(&n.ident.to_string()),
            syn::UseTree::Rename(r) => self.note(&r.ident.to_string()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(t)),
            syn::UseTree::Glob(_) => {}
        }
    }

    /// `crate :: a` inside a macro call's tokens, at any depth.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" => {
                    if let [
                        TokenTree::Punct(a),
                        TokenTree::Punct(b),
                        TokenTree::Ident(m),
                        ..,
                    ] = &tokens[i + 1..]
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        self.note(&m.to_string());
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for CratePaths<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.note(&second.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) if p.ident == "crate" => self.use_tree(&p.tree),
            _ => syn::visit::visit_use_tree(self, tree),
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// The import graph of `files` (paths relative to `src/`) between `modules`. Files outside
/// every module (`lib.rs`, the binary's `main.rs` and `cli/`) are not part of it.
fn graph(modules: &BTreeSet<String>, files: &[(String, String)]) -> Graph {
    let mut g = Graph::new();
    for (rel, text) in files {
        let from = module_of(rel);
        if !modules.contains(from) {
            continue;
        }
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("src/{rel} parses: {e}"));
        let mut paths = CratePaths {
            modules,
            found: BTreeSet::new(),
        };
        paths.visit_file(&file);
        for to in paths.found.into_iter().filter(|to| to != from) {
            g.entry(from.to_owned())
                .or_default()
                .entry(to)
                .or_default()
                .insert(rel.clone());
        }
    }
    g
}

/// The strongly connected sets of more than one module (Tarjan's algorithm), each sorted.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            let g = self.g;
            for w in g.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    self.low.insert(v, self.low[v].min(self.low[w]));
                } else if self.on_stack.contains(w) {
                    self.low.insert(v, self.low[v].min(self.index[w]));
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    set.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.out.push(set);
                }
            }
        }
    }
    let mut t = Tarjan {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// One paragraph per cycle: its modules, then each edge inside it and the files behind it.
fn describe(g: &Graph, cycles: &[Vec<String>]) -> String {
    let mut out = String::new();
    for set in cycles {
        out += &format!("cycle between {} (files under src/):\n", set.join(", "));
        for from in set {
            for (to, files) in g.get(from).into_iter().flatten() {
                if set.contains(to) {
                    let files: Vec<_> = files.iter().map(String::as_str).collect();
                    out += &format!("  {from} -> {to}: {}\n", files.join(", "));
                }
            }
        }
    }
    out
}

#[test]
fn top_level_modules_import_each_other_one_way_only() {
    let src = src();
    let modules = top_level_modules(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let g = graph(&modules, &files);
    assert!(
        g.get("server").is_some_and(|e| e.contains_key("store"))
            && g.get("store").is_some_and(|e| e.contains_key("config")),
        "the graph misses edges every build has: {g:?}"
    );
    let found = cycles(&g);
    assert!(found.is_empty(), "{}", describe(&g, &found));
}

#[test]
fn the_graph_sees_every_kind_of_crate_path_and_names_each_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let file = |p: &str, t: &str| (p.to_owned(), t.to_owned());
    let files = [
        // a -> b through a grouped, nested use; the comment and doc text name nothing.
        file(
            "a.rs",
            "//! crate::e\n// crate::e\nuse crate::{x, b::{Thing, other}};",
        ),
        // b -> c only inside a macro call; b -> a through a path in an expression.
        file(
            "b/mod.rs",
            "fn f() { let _ = format!(\"{}\", crate::c::NAME); crate::a::g(); }",
        ),
        // c -> b through a renamed use in a nested file.
        file("c/inner/deep.rs", "use crate::b as bee;"),
        // d -> a: one way, no cycle.
        file("d.rs", "pub type T = crate::a::Thing;"),
        // Outside every module: not part of the graph.
        file("lib.rs", "use crate::d::T;"),
    ];
    let g = graph(&modules, &files);
    let edges: Vec<String> = g
        .iter()
        .flat_map(|(f, e)| e.keys().map(move |t| format!("{f}->{t}")))
        .collect();
    assert_eq!(edges, ["a->b", "b->a", "b->c", "c->b", "d->a"]);
    let found = cycles(&g);
    assert_eq!(found, [vec!["a", "b", "c"]]);
    let text = describe(&g, &found);
    assert!(text.contains("cycle between a, b, c "), "{text}");
    assert!(text.contains("b -> c: b/mod.rs\n"), "{text}");
    assert!(text.contains("c -> b: c/inner/deep.rs\n"), "{text}");
    assert!(!text.contains("d -> a"), "{text}");
}
