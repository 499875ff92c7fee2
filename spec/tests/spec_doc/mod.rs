// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The specification, `spec/virtio-accel.md`, as the tests read it: its marked
//! tables (see `layout.rs` for the markers), its numbered headings and the
//! sections text cites. Shared by `layout.rs` (the document against the crate)
//! and `c_header.rs` (the document against the kernel module's C header).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Kinds of marker comment that introduce a checked table.
const MARKERS: [&str; 4] = ["layout", "values", "arity", "constants"];

/// A table of the document introduced by a marker comment.
#[derive(Debug)]
pub struct Table {
    /// Line number (1-based) of the marker.
    pub line: usize,
    /// `layout`, `values`, `arity` or `constants`.
    pub kind: String,
    /// What follows `kind:` in the marker, e.g. `Req size=80`.
    pub arg: String,
    /// Header cells.
    pub header: Vec<String>,
    /// Body rows: line number and cells.
    pub rows: Vec<(usize, Vec<String>)>,
}

/// The specification, split into lines and marked tables.
pub struct Doc {
    /// The whole document.
    pub text: String,
    /// Its marked tables, in document order.
    pub tables: Vec<Table>,
}

/// The spec crate's directory, `spec/`.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the specification.
pub fn doc_path() -> PathBuf {
    manifest_dir().join("virtio-accel.md")
}

impl Doc {
    /// Reads and parses the specification; panics if it is unreadable or a
    /// marked table is malformed.
    pub fn load() -> Doc {
        let path = doc_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let tables = parse_tables(&text).unwrap_or_else(|errors| {
            panic!(
                "{}: malformed marked tables ({} problem(s)):\n  {}",
                path.display(),
                errors.len(),
                errors.join("\n  ")
            )
        });
        Doc { text, tables }
    }

    /// The tables of kind `kind` (`layout`, `values`, `arity`, `constants`).
    pub fn tables<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Table> + 'a {
        self.tables.iter().filter(move |t| t.kind == kind)
    }
}

/// The cells of a table line, trimmed, with code backticks removed.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line.strip_suffix('|').unwrap_or(line);
    line.split('|')
        .map(|cell| cell.trim().replace('`', ""))
        .collect()
}

/// The kind and argument of a marker comment, if `line` is one.
fn marker(line: &str) -> Option<(String, String)> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    let (kind, arg) = inner.split_once(':').unwrap_or((inner, ""));
    let kind = kind.trim();
    MARKERS
        .contains(&kind)
        .then(|| (kind.to_string(), arg.trim().to_string()))
}

fn parse_tables(text: &str) -> Result<Vec<Table>, Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tables = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some((kind, arg)) = marker(line) else {
            continue;
        };
        let line_no = index + 1;
        let table_lines: Vec<(usize, &str)> = lines[index + 1..]
            .iter()
            .enumerate()
            .map(|(i, l)| (line_no + 1 + i, *l))
            .take_while(|(_, l)| l.trim_start().starts_with('|'))
            .collect();
        let [(_, header), (separator_no, separator), body @ ..] = table_lines.as_slice() else {
            errors.push(format!(
                "line {line_no}: marker `{kind}: {arg}` is not directly followed by a table with a header and a separator"
            ));
            continue;
        };
        let separator_ok = cells(separator)
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')));
        if !separator_ok {
            errors.push(format!("line {separator_no}: not a table separator row"));
        }
        if body.is_empty() {
            errors.push(format!("line {line_no}: table `{kind}: {arg}` has no rows"));
        }
        tables.push(Table {
            line: line_no,
            kind,
            arg,
            header: cells(header),
            rows: body.iter().map(|(n, l)| (*n, cells(l))).collect(),
        });
    }
    if errors.is_empty() {
        Ok(tables)
    } else {
        Err(errors)
    }
}

/// A decimal or `0x` hexadecimal number; `_` separators are allowed.
pub fn parse_number(cell: &str) -> Option<u64> {
    let digits = cell.replace('_', "");
    match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

/// Complains unless the table's header row starts with `expected`.
pub fn check_header(table: &Table, expected: &[&str], errors: &mut Vec<String>) {
    let found: Vec<&str> = table.header.iter().map(String::as_str).collect();
    if found.len() < expected.len() || found[..expected.len()] != *expected {
        errors.push(format!(
            "line {}: table `{}: {}` must start with columns {expected:?}, found {found:?}",
            table.line, table.kind, table.arg
        ));
    }
}

/// The cells of a row, if it has at least `n`.
pub fn row_cells<'a>(
    line: usize,
    row: &'a [String],
    n: usize,
    errors: &mut Vec<String>,
) -> Option<&'a [String]> {
    if row.len() < n {
        errors.push(format!(
            "line {line}: row has {} cells, expected at least {n}",
            row.len()
        ));
        None
    } else {
        Some(&row[..n])
    }
}

/// Numbers of the document's numbered headings, e.g. "6", "6.2", "6.2.1".
pub fn heading_numbers(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let title = line.strip_prefix('#')?.trim_start_matches('#').trim_start();
            let number = title.split_whitespace().next()?.trim_end_matches('.');
            (!number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .then(|| number.to_string())
        })
        .collect()
}

/// Every `§N` or `§N.M` cited in `text`.
pub fn cited_sections(text: &str) -> BTreeSet<String> {
    text.split('§')
        .skip(1)
        .filter_map(|rest| {
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            (!number.is_empty()).then(|| number.to_string())
        })
        .collect()
}
