//! The direction of dependencies is a checked property, not a hope.
//!
//! `src/lib.rs` is the map: a table of rooms (the top-level modules), each with the rooms it
//! may use. This test reads that table and every file of `src/`, collects each module's uses
//! of the crate (`use crate::…`, `crate::…::` in code, `super::…`, `self::…`, and paths
//! through the child modules a file declares), and fails on:
//! - a room that the table leaves out, or a table row without a room;
//! - a use between rooms that the table does not list;
//! - a cycle in the table itself (it must only ever allow arrows one way);
//! - a cycle between any modules of `src/`, inside a room or across rooms.
//!
//! Test code is left out: files named `tests.rs` or `*_tests.rs`, and a `#[cfg(test)] mod`
//! block with everything after it (the crate keeps its unit tests at the end of each file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`; `None` for the crate root and test files.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let last = parts.last()?.clone();
    if parts.len() == 1 && (last == "lib" || last == "main") {
        return None;
    }
    if last == "tests" || last.ends_with("_tests") {
        return None;
    }
    if last == "mod" {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The code of a file with comments removed and the contents of string and character
/// literals blanked (so neither can fake or hide a path, and braces can be counted).
fn lex(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] == b'\n' {
                            out.push('\n');
                        }
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: r"…", r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    if b[j] == b'\n' {
                        out.push('\n');
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if b.get(i) == Some(&b'\n') {
                        out.push('\n');
                    }
                    i += 1;
                }
                out.push_str("\"\"");
                i += 1;
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p)
                } else {
                    let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 1 + ch)
                };
                match end {
                    Some(end) => {
                        out.push_str("' '");
                        i = end + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Whether an attribute limits the next item to test builds: `#[cfg(test)]`,
/// `#[cfg(any(test, …))]`, `#[cfg(all(test, …))]` (not `not(test)`).
fn is_test_cfg(attr: &str) -> bool {
    let a: String = attr.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(inner) = a.strip_prefix("#[cfg(").and_then(|r| r.strip_suffix(")]")) else {
        return false;
    };
    inner == "test"
        || ["any(", "all("].iter().any(|p| {
            inner
                .strip_prefix(p)
                .is_some_and(|args| args.trim_end_matches(')').split(',').any(|x| x == "test"))
        })
}

/// The file without comments, literals and test code: every item under a test-only `cfg`
/// (a test module, wherever it stands, a test-only `use` or function) is cut out whole.
fn production_code(text: &str) -> String {
    let code = lex(text);
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'#' && b.get(i + 1) == Some(&b'[') {
            let close = code[i..].find(']').map(|p| i + p + 1).unwrap_or(b.len());
            // Nested brackets in an attribute: take up to the bracket that balances.
            let mut depth = 0;
            let mut end = close;
            for (k, c) in code[i..].char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if is_test_cfg(&code[i..end]) {
                // Skip the item the attribute applies to: to its `;` or its balanced `}`.
                let mut k = end;
                let mut depth = 0;
                while k < b.len() {
                    match b[k] {
                        b';' if depth == 0 => {
                            k += 1;
                            break;
                        }
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                k += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                i = k;
                continue;
            }
            out.push_str(&code[i..end]);
            i = end;
            continue;
        }
        let ch = code[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The child modules a file declares (`mod x;` / `pub mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            // `mod x;`, `pub mod x;`, `pub(crate) mod x;`, `pub(in a::b) mod x;`, …
            let l = match l.strip_prefix("pub") {
                Some(rest) if rest.starts_with('(') => rest[rest.find(')')? + 1..].trim_start(),
                Some(rest) => rest.trim_start(),
                None => l,
            };
            let rest = l.strip_prefix("mod ")?;
            rest.strip_suffix(';').map(|n| n.trim().to_string())
        })
        .collect()
}

/// Expands one `use` tree (`a::{b, c::{d as e, f}}`) into its paths (renames dropped).
fn expand(tree: &str) -> Vec<String> {
    let mut words: Vec<&str> = Vec::new();
    let mut parts = tree.split_whitespace().peekable();
    while let Some(w) = parts.next() {
        if w == "as" {
            // `x as y`: keep `x` and any punctuation glued to `y` (`y,` `y}`).
            if let Some(alias) = parts.next() {
                let glued = alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
                words.push(glued);
            }
        } else {
            words.push(w);
        }
    }
    let tree: String = words.concat();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand(&format!("{prefix}{i}")))
        .collect()
}

/// Every path the code names that may point into the crate: expanded `use` trees, and
/// `crate::`, `super::`, `self::` or `child::` paths elsewhere.
fn paths_in(code: &str, children: &[String]) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` statements, possibly over several lines.
    while let Some(at) = find_use(rest) {
        let after = &rest[at..];
        let end = after.find(';').unwrap_or(after.len());
        let tree = after[..end].trim_start_matches("use").trim();
        paths.extend(expand(tree));
        rest = &after[end..];
    }
    let mut roots: Vec<String> = vec!["crate::".into(), "super::".into(), "self::".into()];
    roots.extend(children.iter().map(|c| format!("{c}::")));
    for root in &roots {
        let mut from = 0;
        while let Some(i) = code[from..].find(root.as_str()) {
            let start = from + i;
            let boundary = code[..start]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
            let len = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - start);
            if boundary {
                paths.push(code[start..start + len].to_string());
            }
            from = start + len.max(1);
        }
    }
    paths
}

fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("use ") {
        let at = from + i;
        let line_start = text[..at].rfind('\n').map(|n| n + 1).unwrap_or(0);
        let before = text[line_start..at].trim();
        if before.is_empty() || before == "pub" || before.starts_with("pub(") {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// The module a path names, relative to `module`: the longest known prefix.
fn resolve(path: &str, module: &str, known: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = Vec::new();
    let mut i = 0;
    // The module a file's `super::` starts from: for `a/mod.rs` (module `a`) and for `a/b.rs`
    // (module `a::b`) alike, `super` is the parent of the module.
    let here: Vec<String> = module.split("::").map(str::to_string).collect();
    match segs.first() {
        Some(&"crate") => i = 1,
        Some(&"self") => {
            base = here.clone();
            i = 1;
        }
        Some(&"super") => {
            base = here.clone();
            while segs.get(i) == Some(&"super") {
                base.pop();
                i += 1;
            }
        }
        _ => return None,
    }
    let mut found = None;
    let mut current = base;
    for seg in &segs[i..] {
        current.push(seg.to_string());
        let name = current.join("::");
        if known.contains(&name) {
            found = Some(name);
        } else {
            break;
        }
    }
    found
}

struct Crate {
    modules: Graph,
    files: BTreeMap<String, PathBuf>,
}

fn read_crate() -> Crate {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut by_module = BTreeMap::new();
    for f in &files {
        if let Some(m) = module_of(f) {
            by_module.insert(m, f.clone());
        }
    }
    let known: BTreeSet<String> = by_module.keys().cloned().collect();
    let mut modules = Graph::new();
    for (module, path) in &by_module {
        let text = std::fs::read_to_string(path).expect("read a source file");
        let code = production_code(&text);
        let children = declared_children(&code);
        let edges = modules.entry(module.clone()).or_default();
        for p in paths_in(&code, &children) {
            let first = p.split("::").next().unwrap_or("");
            let relative =
                ["crate", "super", "self"].contains(&first) || children.iter().any(|c| c == first);
            if !relative {
                continue;
            }
            // A path through a child resolves from this module itself.
            let p = if children.iter().any(|c| c == first) {
                format!("self::{p}")
            } else {
                p
            };
            if let Some(target) = resolve(&p, module, &known) {
                if &target != module {
                    edges.insert(target);
                }
            }
        }
    }
    Crate {
        modules,
        files: by_module,
    }
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// The table of `src/lib.rs`: room → the rooms it may use.
fn allowed_table() -> Graph {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let mut table = Graph::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | [`") else {
            continue;
        };
        let Some((name, rest)) = row.split_once("`]") else {
            continue;
        };
        let may_use = rest.rsplit('|').nth(1).unwrap_or("");
        let uses: BTreeSet<String> = may_use
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        assert!(
            table.insert(name.to_string(), uses).is_none(),
            "lib.rs lists `{name}` twice"
        );
    }
    table
}

fn lib_rooms() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|n| n.trim_end_matches(';').to_string())
        .collect()
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<&str> = graph.keys().map(String::as_str).collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_map_lists_every_room_and_only_rooms() {
    let table = allowed_table();
    let rooms = lib_rooms();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        listed, rooms,
        "the table in src/lib.rs must list exactly the modules lib.rs declares"
    );
    for (name, uses) in &table {
        for u in uses {
            assert!(
                rooms.contains(u),
                "`{name}` may use `{u}`, which is no room"
            );
        }
    }
}

#[test]
fn the_map_allows_arrows_one_way_only() {
    let found = cycles(&allowed_table());
    assert!(
        found.is_empty(),
        "the table in src/lib.rs allows cycles: {found:?}"
    );
}

/// The uses between rooms that `table` does not allow, one line each.
fn disallowed(table: &Graph, krate: &Crate) -> Vec<String> {
    let mut wrong = Vec::new();
    for (module, targets) in &krate.modules {
        let from = room(module);
        for target in targets {
            let to = room(target);
            if from != to && !table.get(from).is_some_and(|uses| uses.contains(to)) {
                wrong.push(format!(
                    "{} ({module}) uses {target}: `{from}` may not use `{to}`",
                    krate.files[module].display()
                ));
            }
        }
    }
    wrong
}

#[test]
fn every_use_between_rooms_is_on_the_map() {
    let wrong = disallowed(&allowed_table(), &read_crate());
    assert!(
        wrong.is_empty(),
        "uses the map in src/lib.rs does not allow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_cycle_between_modules() {
    let krate = read_crate();
    let found = cycles(&krate.modules);
    assert!(found.is_empty(), "module cycles in src/: {found:?}");
}

/// The reader itself: it must see the uses that matter, or the checks above prove nothing.
#[test]
fn the_reader_sees_uses_of_every_kind() {
    let krate = read_crate();
    let uses = |m: &str| krate.modules.get(m).cloned().unwrap_or_default();
    // `use crate::…` across rooms.
    assert!(
        uses("smtp::message").contains("delivery"),
        "{:?}",
        uses("smtp::message")
    );
    // `super::x` inside a room.
    assert!(uses("smtp::connection").contains("smtp::session"));
    // a path in code, not in a `use`.
    assert!(
        uses("delivery::submit").contains("ops::audit"),
        "{:?}",
        uses("delivery::submit")
    );
    // `pub use child::…` in a mod.rs.
    assert!(uses("delivery").contains("delivery::outcome"));
    // test files are no modules here (sandbox's use `tls` only in tests).
    assert!(!krate.modules.contains_key("sandbox::dialog_tests"));

    // A backward use is reported: the map without smtp → delivery flags the face.
    let mut table = allowed_table();
    table.get_mut("smtp").unwrap().remove("delivery");
    let wrong = disallowed(&table, &krate);
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("(smtp::message) uses delivery")),
        "{wrong:?}"
    );
}

#[test]
fn the_reader_handles_renames_literals_comments_and_test_items() {
    assert_eq!(
        expand("crate::{a::{B, c}, d}"),
        vec!["crate::a::B", "crate::a::c", "crate::d"]
    );
    assert_eq!(
        expand("crate::{delivery as d, spool::{Spool as S, body}}"),
        vec![
            "crate::delivery",
            "crate::spool::Spool",
            "crate::spool::body"
        ]
    );
    assert_eq!(expand("crate::a::B as C"), vec!["crate::a::B"]);
    let code = production_code(
        "use crate::real;\n\
         // use crate::in_comment;\n\
         /* crate::in_block */\n\
         const S: &str = \"crate::in_string // not a comment\";\n\
         const R: &str = r#\"crate::in_raw\"#;\n\
         const C: char = '{';\n\
         fn f<'a>(x: &'a str) -> &'a str { crate::in_body::g(x) }\n\
         #[cfg(test)]\nuse crate::test_only;\n\
         #[cfg(test)]\nmod tests {\n    use crate::in_tests;\n    fn t() { let _ = '}'; }\n}\n\
         pub fn after_tests() { crate::after::h() }\n",
    );
    let paths = paths_in(&code, &[]);
    for want in ["crate::real", "crate::in_body::g", "crate::after::h"] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing in {paths:?}"
        );
    }
    for unwanted in [
        "in_comment",
        "in_block",
        "in_string",
        "in_raw",
        "test_only",
        "in_tests",
    ] {
        assert!(
            !paths.iter().any(|p| p.contains(unwanted)),
            "{unwanted} counted in {paths:?}"
        );
    }
    assert_eq!(
        declared_children("mod a;\npub mod b;\npub(crate) mod c;\npub(in crate::x) mod d;\n"),
        vec!["a", "b", "c", "d"]
    );
}
