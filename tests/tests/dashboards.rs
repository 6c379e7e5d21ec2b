//! The Grafana dashboards in `dashboards/` against what the InfluxDB sink
//! writes (docs/INFLUXDB.md): every file is a provisionable dashboard on the
//! `${datasource}` variable, and every Flux query in it names only the sink's
//! measurement, tags and fields, and quantities that a shipped device profile
//! writes. A renamed tag or a misspelt quantity would otherwise show only as
//! an empty panel on somebody's wall.
//!
//! The Flux is read with a small scanner, not a parser: it finds `r.column`,
//! `r["column"]`, `column == "literal"` after either, the string lists after
//! `columns:`, `rowKey:`, `columnKey:` and `on:`, the string after
//! `valueColumn:`, and `tag:` in `schema.tagValues`. The dashboards write
//! their queries in that style.

use anyhow::{ensure, Context, Result};
use roomguard_collector::sinks::influx::{FIELDS, MEASUREMENT, TAGS};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Columns Flux itself gives every row.
const FLUX_COLUMNS: &[&str] = &[
    "_time",
    "_value",
    "_field",
    "_measurement",
    "_start",
    "_stop",
];

/// Grafana lays panels out on a grid 24 columns wide.
const GRID_COLUMNS: u64 = 24;

/// The datasource every panel and query variable must go through.
const DATASOURCE: &str = "${datasource}";

/// Panels that draw over time, whose queries must aggregate by `v.windowPeriod`.
const TIME_PANELS: &[&str] = &["timeseries", "state-timeline"];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Files of `dir` whose name ends in `.ext`, sorted.
fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every dashboard: file name and parsed JSON.
fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = repo_path("dashboards");
    let files = files_with_extension(&dir, "json")?;
    ensure!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{name} is not valid JSON"))?;
        out.push((name, json));
    }
    Ok(out)
}

/// Every `quantity = "…"` of the shipped device profiles.
fn profile_quantities() -> Result<BTreeSet<String>> {
    let dir = repo_path("configs/profiles");
    let mut quantities = BTreeSet::new();
    for path in files_with_extension(&dir, "toml")? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("quantity") else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('=') else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            if let Some(end) = rest.find('"') {
                quantities.insert(rest[..end].to_string());
            }
        }
    }
    ensure!(!quantities.is_empty(), "no quantities in {}", dir.display());
    Ok(quantities)
}

// ------------------------------------------------------------------ the scanner

/// What a Flux query names.
#[derive(Debug, Default, PartialEq)]
struct FluxNames {
    /// Every column read (`r.x`, `r["x"]`) or listed (`columns: ["x"]`, …).
    columns: Vec<String>,
    /// `r.column == "literal"` comparisons.
    comparisons: Vec<(String, String)>,
    /// `tag: "…"` arguments of `schema.tagValues`.
    tag_values: Vec<String>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    i
}

/// The index just past the string literal whose opening quote is at `start`
/// (the end of the text if it is never closed).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The string literal starting at `i` (after spaces): its text and the index
/// just past it.
fn string_at(q: &str, i: usize) -> Option<(&str, usize)> {
    let b = q.as_bytes();
    let start = skip_space(b, i);
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let end = string_end(b, start);
    if end < start + 2 || b[end - 1] != b'"' {
        return None;
    }
    Some((&q[start + 1..end - 1], end))
}

/// The list of string literals starting at `i` (after spaces), `["a", "b"]`:
/// its items and the index just past it.
fn string_list_at(q: &str, i: usize) -> Option<(Vec<&str>, usize)> {
    let b = q.as_bytes();
    let mut i = skip_space(b, i);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let mut items = Vec::new();
    loop {
        i = skip_space(b, i);
        match b.get(i) {
            Some(b']') => return Some((items, i + 1)),
            Some(b',') => i += 1,
            Some(b'"') => {
                let (item, after) = string_at(q, i)?;
                items.push(item);
                i = after;
            }
            _ => return None,
        }
    }
}

/// The column a row reference names at `i`, just after the word `r`
/// (`.column` or `["column"]`), and the index just past the reference.
fn column_at(q: &str, i: usize) -> Option<(&str, usize)> {
    let b = q.as_bytes();
    match b.get(i) {
        Some(b'.') => {
            let end = ident_end(b, i + 1);
            (end > i + 1).then_some((&q[i + 1..end], end))
        }
        Some(b'[') => {
            let (name, after) = string_at(q, i + 1)?;
            let close = skip_space(b, after);
            (b.get(close) == Some(&b']')).then_some((name, close + 1))
        }
        _ => None,
    }
}

fn flux_names(q: &str) -> FluxNames {
    let b = q.as_bytes();
    let mut names = FluxNames::default();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            // Text inside a string literal is no code.
            i = string_end(b, i);
            continue;
        }
        let starts_word = is_ident(b[i]) && (i == 0 || (!is_ident(b[i - 1]) && b[i - 1] != b'.'));
        if !starts_word {
            i += 1;
            continue;
        }
        let end = ident_end(b, i);
        let word = &q[i..end];
        i = end;
        if word == "r" {
            let Some((column, after)) = column_at(q, i) else {
                continue;
            };
            names.columns.push(column.to_string());
            i = after;
            let op = skip_space(b, i);
            if b[op..].starts_with(b"==") {
                if let Some((literal, after)) = string_at(q, op + 2) {
                    names
                        .comparisons
                        .push((column.to_string(), literal.to_string()));
                    i = after;
                }
            }
            continue;
        }
        let colon = skip_space(b, i);
        if b.get(colon) != Some(&b':') {
            continue;
        }
        match word {
            "columns" | "rowKey" | "columnKey" | "on" => {
                if let Some((list, after)) = string_list_at(q, colon + 1) {
                    names.columns.extend(list.into_iter().map(str::to_string));
                    i = after;
                }
            }
            "valueColumn" | "tag" => {
                if let Some((name, after)) = string_at(q, colon + 1) {
                    if word == "tag" {
                        names.tag_values.push(name.to_string());
                    } else {
                        names.columns.push(name.to_string());
                    }
                    i = after;
                }
            }
            _ => {}
        }
    }
    names
}

/// What is wrong with the names of one query, each problem naming the bad name.
fn query_problems(names: &FluxNames, quantities: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for column in &names.columns {
        let c = column.as_str();
        let known = TAGS.contains(&c) || FIELDS.contains(&c) || FLUX_COLUMNS.contains(&c);
        if !known {
            problems.push(format!(
                "column `{c}` is no tag ({TAGS:?}), field ({FIELDS:?}) or Flux column of the sink's lines"
            ));
        }
    }
    for tag in &names.tag_values {
        if !TAGS.contains(&tag.as_str()) {
            problems.push(format!(
                "schema.tagValues tag `{tag}` is not one the sink writes ({TAGS:?})"
            ));
        }
    }
    for (column, literal) in &names.comparisons {
        let literal = literal.as_str();
        match column.as_str() {
            "_measurement" if literal != MEASUREMENT => problems.push(format!(
                "measurement `{literal}`: the sink writes only `{MEASUREMENT}`"
            )),
            "_field" if !FIELDS.contains(&literal) => problems.push(format!(
                "field `{literal}` is not one the sink writes ({FIELDS:?})"
            )),
            "quantity" if !quantities.contains(literal) => problems.push(format!(
                "quantity `{literal}` is written by no profile in configs/profiles"
            )),
            _ => {}
        }
    }
    if !names.comparisons.iter().any(|(c, _)| c == "_measurement") {
        problems.push(format!("no `r._measurement == \"{MEASUREMENT}\"` filter"));
    }
    problems
}

// ------------------------------------------------------------------ dashboards

/// Every panel, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

fn uses_datasource_variable(v: &Value) -> bool {
    v["datasource"]["uid"].as_str() == Some(DATASOURCE)
}

/// A template variable's query: a string, or `{ "query": "…" }` as newer
/// Grafana writes it.
fn variable_query(variable: &Value) -> Option<&str> {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
}

/// Grid position `(x, y, w, h)`, if complete and inside the 24 columns.
fn grid_pos(panel: &Value) -> Option<(u64, u64, u64, u64)> {
    let g = &panel["gridPos"];
    let (x, y, w, h) = (
        g["x"].as_u64()?,
        g["y"].as_u64()?,
        g["w"].as_u64()?,
        g["h"].as_u64()?,
    );
    (w >= 1 && h >= 1 && x + w <= GRID_COLUMNS).then_some((x, y, w, h))
}

fn structure_problems(file: &str, d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{file}: {what}"));
    if d["title"].as_str().is_none_or(str::is_empty) {
        problem("no title".into());
    }
    match d["uid"].as_str() {
        Some(uid) if !uid.is_empty() && uid.len() <= 40 => {}
        _ => problem("no uid of 1 to 40 characters".into()),
    }
    if !d["schemaVersion"].is_u64() {
        problem("schemaVersion is not a number".into());
    }
    if !d["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("roomguard")))
    {
        problem("not tagged `roomguard`".into());
    }
    if d["panels"].as_array().is_none_or(Vec::is_empty) {
        problem("no panels".into());
    }

    // Template variables.
    match variable(d, "datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "influxdb" => {}
        _ => problem("no `datasource` variable of type datasource, query influxdb".into()),
    }
    if variable(d, "bucket").is_none() {
        problem("no `bucket` variable".into());
    }
    for name in ["site", "room"] {
        match variable(d, name) {
            Some(v) if v["type"] == "query" => {
                if !uses_datasource_variable(v) {
                    problem(format!("variable `{name}` is not on `{DATASOURCE}`"));
                }
                if variable_query(v).is_none() {
                    problem(format!("variable `{name}` has no query"));
                }
            }
            _ => problem(format!("no query variable `{name}`")),
        }
    }

    // Panels.
    let mut placed: Vec<(String, (u64, u64, u64, u64))> = Vec::new();
    for panel in panels(d) {
        let t = title(panel);
        if panel["type"].as_str().is_none_or(str::is_empty) {
            problem(format!("panel \"{t}\" has no type"));
        }
        if panel["title"].as_str().is_none_or(str::is_empty) {
            problem(format!("a panel ({t}) has no title"));
        }
        match grid_pos(panel) {
            Some(pos) => {
                let (x, y, w, h) = pos;
                for (other, (ox, oy, ow, oh)) in &placed {
                    if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                        problem(format!("panel \"{t}\" overlaps panel \"{other}\""));
                    }
                }
                placed.push((t.to_string(), pos));
            }
            None => problem(format!(
                "panel \"{t}\" has no gridPos x, y, w, h within {GRID_COLUMNS} columns"
            )),
        }
        if panel["type"] == "row" {
            continue;
        }
        if !uses_datasource_variable(panel) {
            problem(format!("panel \"{t}\" is not on `{DATASOURCE}`"));
        }
        let targets = panel["targets"].as_array();
        if targets.is_none_or(Vec::is_empty) {
            problem(format!("panel \"{t}\" has no query"));
        }
        for target in targets.into_iter().flatten() {
            let r = target["refId"].as_str().unwrap_or("?");
            if target.get("datasource").is_some() && !uses_datasource_variable(target) {
                problem(format!("panel \"{t}\" query {r} is not on `{DATASOURCE}`"));
            }
            if target["query"].as_str().is_none_or(str::is_empty) {
                problem(format!("panel \"{t}\" query {r} has no Flux query"));
            }
        }
    }
    problems
}

/// Every Flux query of a dashboard, with where it is: `variable site`,
/// `panel "Title" query A`, and the panel's type (empty for a variable).
fn queries(d: &Value) -> Vec<(String, &str, &str)> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            if let Some(q) = variable_query(v) {
                let name = v["name"].as_str().unwrap_or("?");
                out.push((format!("variable `{name}`"), "", q));
            }
        }
    }
    for panel in panels(d) {
        let kind = panel["type"].as_str().unwrap_or("");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(q) = target["query"].as_str() {
                let r = target["refId"].as_str().unwrap_or("?");
                out.push((format!("panel \"{}\" query {r}", title(panel)), kind, q));
            }
        }
    }
    out
}

/// The conventions every panel query keeps: the bucket variable, the
/// dashboard's time range, the site variable, and for a graph over time the
/// window Grafana asks for.
fn panel_query_problems(kind: &str, query: &str, names: &FluxNames) -> Vec<String> {
    let mut problems = Vec::new();
    for needed in [
        "from(bucket: \"${bucket}\")",
        "v.timeRangeStart",
        "v.timeRangeStop",
    ] {
        if !query.contains(needed) {
            problems.push(format!("does not use `{needed}`"));
        }
    }
    if TIME_PANELS.contains(&kind) && !query.contains("v.windowPeriod") {
        problems.push("draws over time but does not aggregate by `v.windowPeriod`".into());
    }
    let site = ("site".to_string(), "${site}".to_string());
    if !names.comparisons.contains(&site) {
        problems.push("does not filter `r.site == \"${site}\"`".into());
    }
    problems
}

#[test]
fn every_dashboard_is_a_provisionable_grafana_dashboard_on_the_datasource_variable() -> Result<()> {
    let mut problems = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    for (file, d) in dashboards()? {
        problems.extend(structure_problems(&file, &d));
        if let Some(uid) = d["uid"].as_str() {
            if let Some(first) = uids.insert(uid.to_string(), file.clone()) {
                problems.push(format!("{file}: uid `{uid}` is also the uid of {first}"));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    Ok(())
}

#[test]
fn every_dashboard_query_names_only_what_the_sink_writes() -> Result<()> {
    let quantities = profile_quantities()?;
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, d) in dashboards()? {
        for (place, kind, query) in queries(&d) {
            let names = flux_names(query);
            let mut found = query_problems(&names, &quantities);
            if place.starts_with("panel") {
                found.extend(panel_query_problems(kind, query, &names));
            }
            if place == "variable `room`" {
                let site = ("site".to_string(), "${site}".to_string());
                if !names.comparisons.contains(&site) {
                    found.push("does not filter the rooms by `r.site == \"${site}\"`".into());
                }
            }
            problems.extend(found.into_iter().map(|p| format!("{file}: {place}: {p}")));
            checked += 1;
        }
    }
    assert!(checked > 0, "no Flux queries found in dashboards/");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    Ok(())
}

#[test]
fn the_scanner_finds_every_name_a_query_uses() {
    let q = r#"import "influxdata/influxdb/schema"
states = from(bucket: "${bucket}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "roomguard" and r["site"] == "${site}" and r.room =~ /^${room:regex}$/)
  |> filter(fn: (r) => (r.quantity == "h2_lfl" or r.quantity=="smoke") and r._field == "value")
  |> map(fn: (r) => ({r with _value: r._value * 1.0}))
  |> group(columns: ["device", "point"])
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
schema.tagValues(bucket: "${bucket}", tag: "unit", predicate: (r) => r.point != "r.notacolumn")"#;
    let names = flux_names(q);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names.columns,
        strings(&[
            "_measurement",
            "site",
            "room",
            "quantity",
            "quantity",
            "_field",
            "_value",
            "device",
            "point",
            "_time",
            "_field",
            "_value",
            "point",
        ])
    );
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names.comparisons,
        pairs(&[
            ("_measurement", "roomguard"),
            ("site", "${site}"),
            ("quantity", "h2_lfl"),
            ("quantity", "smoke"),
            ("_field", "value"),
        ])
    );
    assert_eq!(names.tag_values, strings(&["unit"]));
    let quantities: BTreeSet<String> = ["h2_lfl", "smoke"].iter().map(|s| s.to_string()).collect();
    assert_eq!(query_problems(&names, &quantities), Vec::<String>::new());
}

#[test]
fn a_query_naming_a_tag_field_measurement_or_quantity_the_sink_never_writes_is_caught() {
    let quantities: BTreeSet<String> = ["temperature"].iter().map(|s| s.to_string()).collect();
    let cases = [
        (
            r#"filter(fn: (r) => r._measurement == "roomguard" and r.rooom == "x")"#,
            "rooom",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "roomguard" and r["sensor"] == "x")"#,
            "sensor",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "roomguard") |> group(columns: ["rack"])"#,
            "rack",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "roomguard" and r._field == "reading")"#,
            "reading",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "environment")"#,
            "environment",
        ),
        (
            r#"filter(fn: (r) => r._measurement == "roomguard" and r.quantity == "temprature")"#,
            "temprature",
        ),
        (
            r#"schema.tagValues(bucket: "b", tag: "building", predicate: (r) => r._measurement == "roomguard")"#,
            "building",
        ),
        (r#"filter(fn: (r) => r.site == "a")"#, "_measurement"),
    ];
    for (query, bad) in cases {
        let problems = query_problems(&flux_names(query), &quantities);
        assert!(
            problems.iter().any(|p| p.contains(bad)),
            "`{bad}` in {query} not reported: {problems:?}"
        );
    }
    let good =
        r#"filter(fn: (r) => r._measurement == "roomguard" and r.quantity == "temperature")"#;
    assert_eq!(
        query_problems(&flux_names(good), &quantities),
        Vec::<String>::new()
    );
}
