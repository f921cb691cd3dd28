//! The shape of the source, checked: imports between modules point one way (no cycle), and a
//! module over ~500 lines says at its top why it is that long. Read from the files, as a
//! reviewer would, so a change that quietly adds a cycle or grows a module fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`commands::deploy::plan`) → its source without comments and test modules.
fn modules() -> BTreeMap<String, (PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.insert(parts.join("::"), (p, code_of(&text)));
        }
    }
    out
}

/// The text without `//` comments and without the `#[cfg(test)] mod tests` block, which
/// may reach anywhere.
fn code_of(text: &str) -> String {
    let body = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    body.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The longest known module that `path` (after `crate::`) names.
fn resolve(path: &str, known: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|c| known.contains(c))
}

/// Every `crate::a::b` path in `code`, with `use crate::{x, y::z}` groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let head: String = rest.chars().take_while(|&c| ident(c)).collect();
        if rest[head.len()..].starts_with('{') && (head.is_empty() || head.ends_with("::")) {
            let group = &rest[head.len() + 1..rest[head.len()..].find('}').map_or(rest.len(), |e| head.len() + e)];
            for item in group.split([',', '{', ' ', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
                out.push(format!("{head}{item}"));
            }
        } else {
            out.push(head.trim_end_matches(':').to_string());
        }
    }
    out
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, (_, code)) in &mods {
        let e = edges.entry(m.clone()).or_default();
        for p in crate_paths(code) {
            // A module's own children and its ancestors are its own business (`mod` lines, and
            // the shared types a folder's mod.rs holds for its files).
            if let Some(t) =
                resolve(&p, &known).filter(|t| t != m && !m.starts_with(&format!("{t}::")) && !t.starts_with(&format!("{m}::")))
            {
                e.insert(t);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
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
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { g: edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The same graph between top-level modules (`commands`, `remote`, `transport`, …): a folder's
/// mod.rs reaches its own files without `crate::`, so a cycle through a folder shows only here.
fn top_level(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, targets) in edges {
        let e = out.entry(top(m)).or_default();
        e.extend(targets.iter().map(|t| top(t)).filter(|t| *t != top(m)));
    }
    out
}

#[test]
fn imports_between_modules_point_one_way() {
    check_one_way(&edges());
    check_one_way(&top_level(&edges()));
}

fn check_one_way(edges: &BTreeMap<String, BTreeSet<String>>) {
    assert!(edges.values().any(|e| e.contains("workspace")), "the import scan finds nothing: {edges:?}");
    let found = cycles(edges);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let set: BTreeSet<&String> = c.iter().collect();
            let arrows: Vec<String> =
                c.iter().flat_map(|m| edges[m].iter().filter(|t| set.contains(t)).map(move |t| format!("{m} -> {t}"))).collect();
            arrows.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", shown.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
    let paths = crate_paths("use crate::{layout, workspace::{Entry, cache}};\nlet x = crate::report::Printer::new(g);");
    assert!(paths.contains(&"layout".to_string()) && paths.contains(&"report::Printer::new".to_string()), "{paths:?}");
}

#[test]
fn a_long_module_says_why_at_its_top() {
    let mut unexplained = Vec::new();
    for (m, (path, _)) in modules() {
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String = text.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        if text.lines().count() > 520 && !header.contains("Size:") {
            unexplained.push(format!("{m} ({} lines): no `//! Size:` reason in its header", text.lines().count()));
        }
    }
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
}
