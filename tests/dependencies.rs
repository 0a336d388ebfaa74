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

/// The file without comments and without its test code.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]" {
            match lines.peek().map(|l| l.trim()) {
                // A test module declared here lives in its own (test) file: skip the line.
                Some(next) if next.starts_with("mod ") && next.ends_with(';') => {
                    lines.next();
                    continue;
                }
                // The test block at the end of the file: nothing after it counts.
                Some(next) if next.starts_with("mod ") && next.ends_with('{') => break,
                _ => {}
            }
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The child modules a file declares (`mod x;` / `pub mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub(crate) mod ")
                .or_else(|| l.strip_prefix("pub mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(|n| n.trim().to_string())
        })
        .collect()
}

/// Expands one `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
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

#[test]
fn every_use_between_rooms_is_on_the_map() {
    let table = allowed_table();
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (module, targets) in &krate.modules {
        let from = room(module);
        for target in targets {
            let to = room(target);
            if from == to {
                continue;
            }
            let ok = table.get(from).is_some_and(|uses| uses.contains(to));
            if !ok {
                wrong.push(format!(
                    "{} ({module}) uses {target}: `{from}` may not use `{to}`",
                    krate.files[module].display()
                ));
            }
        }
    }
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
        uses("smtp::connection").contains("delivery"),
        "{:?}",
        uses("smtp::connection")
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
    // test code is left out: wire/reply.rs's tests use nothing of ours, and sandbox's test
    // files (which use `tls`) are no modules here.
    assert!(!krate.modules.contains_key("sandbox::dialog_tests"));
    assert_eq!(
        expand("crate::{a::{B, c}, d}"),
        vec!["crate::a::B", "crate::a::c", "crate::d"]
    );
    // A made-up backward use is caught.
    let mut table = allowed_table();
    table.get_mut("smtp").unwrap().remove("delivery");
    let caught = krate.modules["smtp::connection"]
        .iter()
        .any(|t| room(t) == "delivery" && !table["smtp"].contains("delivery"));
    assert!(caught);
}
