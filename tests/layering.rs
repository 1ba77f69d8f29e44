//! The server crate's map, held against its code: modules import only modules in the layers
//! below their own (the README's Layout section states the layers), the doors never import each
//! other, and no file imports, directly or through others, a file that imports it back.
//!
//! Imports are read as text: every `crate::…` and `super::…` path outside comments, resolved to
//! the longest module path that is a file. A `mod.rs`'s own `pub use` lines are its façade, not
//! imports (its other lines count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `server/src`, highest layer first. A module may import modules of
/// lower layers only; modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["server"],
    // The shared port, which routes each request to its door; the settings and the other
    // commands of the binary.
    &["transport", "settings", "oneshot", "benchmark", "fidelity"],
    // The doors: each translates its wire format into the core's types and back.
    &["api", "openai", "oip", "web"],
    // The request core, and the traces each request's life reports.
    &["service"],
    &["telemetry"],
    &["registry"],
    &["engine"],
    &["model", "media"],
    &["metrics", "allocator", "device", "deadline", "optional_setting"],
    &["error"],
];

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("server/src")
}

/// Every `.rs` file under `dir`, as its module path (`["engine", "worker"]`).
fn modules(dir: &Path, prefix: &[String], found: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                module.push(name);
            }
            found.insert(module, path);
        }
    }
}

/// The paths a line names: `crate::a::b` and `super::…::a` (relative to `module`).
fn named_paths(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = line.as_bytes();
    for start in (0..line.len()).filter(|&i| line.is_char_boundary(i)) {
        let at_word = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || b"_:".contains(&bytes[start - 1]));
        if !at_word {
            continue;
        }
        let rest = &line[start..];
        let (mut base, tail) = if let Some(tail) = rest.strip_prefix("crate::") {
            (vec![], tail)
        } else if rest.starts_with("super::") {
            // `super` is the parent of the module (a mod.rs is its directory's module).
            let mut base = module.to_vec();
            let mut tail = rest;
            while let Some(next) = tail.strip_prefix("super::") {
                base.pop();
                tail = next;
            }
            (base, tail)
        } else {
            continue;
        };
        let segments = tail
            .split("::")
            .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
            .take_while(|s| !s.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        base.extend(segments);
        paths.push(base);
    }
    paths
}

/// File → the files it imports.
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = BTreeMap::new();
    modules(&source_root(), &[], &mut files);
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let is_mod_file = path.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        // Test modules at the end of a file may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.trim();
            if line.starts_with("//") || (is_mod_file && (line.starts_with("pub use") || line.starts_with("pub mod"))) {
                continue;
            }
            for named in named_paths(line, module) {
                // The longest prefix that is a file.
                let target = (1..=named.len()).rev().map(|n| named[..n].to_vec()).find(|p| files.contains_key(p));
                if let Some(target) = target.filter(|t| t != module && !t.is_empty()) {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().position(|layer| layer.contains(&top.as_str()))
}

#[test]
fn every_module_has_a_layer() {
    let graph = import_graph();
    let unplaced: BTreeSet<&String> =
        graph.keys().filter_map(|m| m.first()).filter(|top| layer_of(&[(*top).clone()]).is_none()).collect();
    assert!(unplaced.is_empty(), "modules missing from LAYERS (and the README's Layout): {unplaced:?}");
}

#[test]
fn no_module_imports_one_above_it_or_beside_it() {
    let mut wrong = Vec::new();
    for (from, targets) in import_graph() {
        for to in targets {
            let (Some(a), Some(b)) = (layer_of(&from), layer_of(&to)) else { continue };
            if from[0] != to[0] && b <= a {
                wrong.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up or sideways in the layering:\n{}", wrong.join("\n"));
}

#[test]
fn no_file_imports_itself_back() {
    let graph = import_graph();
    // Tarjan's strongly connected components: any with more than one file is a cycle.
    struct State<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, usize>,
        low: BTreeMap<&'g Vec<String>, usize>,
        stack: Vec<&'g Vec<String>>,
        on_stack: BTreeSet<&'g Vec<String>>,
        cycles: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, node: &'g Vec<String>) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        for next in s.graph.get(node).into_iter().flatten() {
            let Some((next, _)) = s.graph.get_key_value(next) else { continue };
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.join("::"));
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                s.cycles.push(component);
            }
        }
    }
    let mut state = State {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        cycles: vec![],
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    assert!(state.cycles.is_empty(), "files that import each other (directly or through others): {:?}", state.cycles);
}

#[test]
fn the_reader_resolves_paths_as_rust_does() {
    let module = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let paths = named_paths("use crate::engine::worker::ModelWorker;", &module("api::captioner"));
    assert_eq!(paths, [module("engine::worker")]);
    let paths = named_paths("use super::queue::{QueueSlot, Waits};", &module("engine::worker"));
    assert_eq!(paths, [module("engine::queue")]);
    let paths = named_paths("use super::Call;", &module("service::request"));
    assert_eq!(paths, [module("service")]);
    let paths = named_paths("use super::super::x::Y;", &module("media::video::pass"));
    assert_eq!(paths, [module("media::x")]);
    // In a mod.rs, `super` is the parent of the directory's module.
    let paths = named_paths("use super::error::X;", &module("media::video"));
    assert_eq!(paths, [module("media::error")]);
}
