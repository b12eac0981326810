//! The library's top-level modules depend on each other one way only (DESIGN.md: api, relay
//! and events over the broker, the broker over the store, the store over the domain): a test
//! reads the sources, finds which module names which, and fails on any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::harness::repo_path;

/// The modules `src/lib.rs` declares: the library's rooms.
fn top_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(repo_path("src/lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .chain(lib.lines().filter_map(|l| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The source with comments and string literals blanked, so a module named in prose or in a
/// test's expectations is not taken for a dependency.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => escaped = false,
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '/' if chars.peek() == Some(&'/') => break,
                _ => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// The top-level modules named in `code`: `crate::x` paths and `use crate::{x, y::z}` groups.
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item of the group names a module.
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or("").trim())
                .collect()
        } else {
            vec![
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or(""),
            ]
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| modules.contains(*n))
                .map(str::to_string),
        );
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// Which top-level module each names, from every file under `src/` that belongs to one.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_modules();
    let src = repo_path("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path").as_os_str();
        let owner = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if !modules.contains(&owner) {
            continue; // lib.rs, and the binary's own modules
        }
        let text = std::fs::read_to_string(&file).expect("a source file");
        let mut named = named_modules(&code_only(&text), &modules);
        named.remove(&owner);
        graph.entry(owner).or_default().extend(named);
    }
    graph
}

/// A cycle through `start`, as the path that closes it, if there is one.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in graph
        .get(path.last().expect("a path"))
        .into_iter()
        .flatten()
    {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(c) = cycle_from(graph, start, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_one_way_only() {
    let graph = dependencies();
    assert!(
        graph.len() >= 8,
        "the scan found too few modules to mean anything: {graph:?}"
    );
    for start in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, start, &mut vec![start.clone()]) {
            panic!(
                "import cycle between top-level modules: {}",
                cycle.join(" -> ")
            );
        }
    }
    // The layers DESIGN.md draws, checked by name so a new edge the other way fails here too.
    for (low, high) in [
        ("domain", "store"),
        ("store", "broker"),
        ("broker", "events"),
        ("broker", "relay"),
        ("broker", "api"),
        ("http", "server"),
    ] {
        assert!(
            !graph.get(low).is_some_and(|d| d.contains(high)),
            "`{low}` must not import `{high}`: {graph:?}"
        );
    }
}

#[test]
fn the_scan_sees_groups_paths_and_not_prose() {
    let modules: BTreeSet<String> = ["api", "broker", "store"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = code_only(
        "use crate::{broker::Broker, store};\n// crate::api in a comment\nlet s = \"crate::api\";\n",
    );
    let named = named_modules(&code, &modules);
    assert_eq!(
        named,
        ["broker", "store"].into_iter().map(String::from).collect()
    );
}
