//! The shape of the code, checked: which top-level module of `src/` may use which (the layers,
//! top down: cli -> startup -> api -> state -> config -> accounts -> the stores -> plumbing),
//! no module cycle, no HTTP framework below the API, and no function over 80 lines.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// What each top-level module may use. Everything not listed is refused.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "startup",
            "api",
            "accounts",
            "auth",
            "client",
            "config",
            "db",
            "telemetry",
        ],
    ),
    (
        "startup",
        &[
            "api",
            "state",
            "accounts",
            "audit",
            "auth",
            "config",
            "db",
            "limits",
            "mail",
            "session",
            "store",
            "telemetry",
        ],
    ),
    (
        "api",
        &[
            "state", "accounts", "audit", "auth", "client", "config", "db", "limits", "session",
        ],
    ),
    (
        "state",
        &[
            "accounts",
            "auth",
            "config",
            "db",
            "mail",
            "session",
            "telemetry",
        ],
    ),
    (
        "config",
        &[
            "accounts",
            "audit",
            "auth",
            "limits",
            "mail",
            "store",
            "telemetry",
        ],
    ),
    (
        "accounts",
        &[
            "audit",
            "auth",
            "client",
            "db",
            "limits",
            "mail",
            "session",
            "store",
            "telemetry",
        ],
    ),
    ("mail", &["audit", "client", "db", "telemetry"]),
    ("audit", &["client", "db", "telemetry"]),
    ("auth", &["telemetry"]),
    ("session", &["store"]),
    ("limits", &["store", "telemetry"]),
    ("db", &[]),
    ("store", &[]),
    ("client", &[]),
    ("telemetry", &[]),
];

/// Modules below the API: they know nothing of HTTP frameworks.
const BELOW_HTTP: &[&str] = &[
    "accounts", "audit", "auth", "mail", "session", "limits", "db", "store",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code outside its unit tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("readable source");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`None` for lib.rs and main.rs).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        file => Some(file.trim_end_matches(".rs").to_owned()),
    }
}

/// Which top-level modules `code` names through `crate::`.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the names at the group's top level.
            let mut depth = 0;
            let mut name = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        at_start = true;
                        name.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if !name.is_empty() {
                        found.insert(name.clone());
                        at_start = false;
                    }
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|name| modules.contains(name));
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let mut used = uses(&code(file), &modules);
        used.remove(&module);
        graph.entry(module).or_default().extend(used);
    }
    graph
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut breaks = Vec::new();
    for (module, used) in graph() {
        let Some(may) = allowed.get(module.as_str()) else {
            breaks.push(format!("{module} is not in the layer table"));
            continue;
        };
        for name in used {
            if !may.contains(&name.as_str()) {
                breaks.push(format!("{module} uses {name}"));
            }
        }
    }
    assert!(breaks.is_empty(), "layering breaks: {breaks:#?}");
}

#[test]
fn the_layer_table_has_no_cycle() {
    // Depth-first search over the allowed edges; the real edges are a subset of them.
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        assert!(!path.contains(&node), "cycle: {path:?} -> {node}");
        path.push(node);
        for next in edges.get(node).copied().unwrap_or_default() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let edges: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut done = BTreeSet::new();
    for (module, _) in ALLOWED {
        visit(module, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn nothing_below_the_api_knows_the_http_framework() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files {
        let below = module_of(&file).is_some_and(|m| BELOW_HTTP.contains(&m.as_str()));
        let code = code(&file);
        if below && (code.contains("poem::") || code.contains("poem_openapi::")) {
            found.push(file.display().to_string());
        }
    }
    assert!(found.is_empty(), "HTTP framework below the API: {found:#?}");
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in files {
        let code = code(&file);
        let lines: Vec<&str> = code.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim_start();
            let is_fn = line.split_whitespace().take(5).any(|w| w == "fn")
                && !line.ends_with(';')
                && !line.starts_with("//");
            if !is_fn {
                i += 1;
                continue;
            }
            let (mut depth, mut started, mut j) = (0i32, false, i);
            while j < lines.len() {
                for c in without_literals(lines[j]).chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            started = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if started && depth <= 0 {
                    break;
                }
                j += 1;
            }
            if j - i + 1 > 80 {
                long.push(format!(
                    "{}:{} ({} lines)",
                    file.display(),
                    i + 1,
                    j - i + 1
                ));
            }
            i = if started { j + 1 } else { i + 1 };
        }
    }
    assert!(long.is_empty(), "functions over 80 lines: {long:#?}");
}

/// A line with its string and brace character literals emptied, so only code braces count.
fn without_literals(line: &str) -> String {
    let line = line.replace("'{'", "' '").replace("'}'", "' '");
    let mut out = String::with_capacity(line.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in line.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push(c);
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}
