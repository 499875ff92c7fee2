// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checks the specification, `spec/virtio-accel.md`, against this crate.
//!
//! The specification marks its machine-readable tables with an HTML comment on
//! the line before the table:
//!
//! - `<!-- layout: Type size=N -->`: the first three columns of every row are the
//!   decimal offset, the decimal size and the name of a field of `Type`; the rows
//!   must match `offset_of!` and the field sizes, tile the struct without gaps or
//!   overlaps, and add up to `N` = `size_of::<Type>()`;
//! - `<!-- values: Type -->`: the first two columns are a wire value (decimal or
//!   `0x` hexadecimal) and the name of the variant of the wire enum `Type` it
//!   converts to; every variant of `Type::ALL` must be listed;
//! - `<!-- arity: Op -->`: operation name, input count, output count, as
//!   [`Op::arity`] returns them;
//! - `<!-- constants -->`: constant name and value.
//!
//! Every wire struct, wire enum and constant known here must have exactly one
//! table or row; a missing table fails. The tests also check that the device ID
//! appears in §2 and that every section the crate's comments cite exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod spec_doc;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;

use spec_doc::{
    check_header, cited_sections, doc_path, heading_numbers, manifest_dir, parse_number, row_cells,
    Doc, Table,
};

use virtio_accel_spec::op::{
    AES_KEY_SIZE, COMPARE_EQUAL, DEFLATE_MAX_LEVEL, GCM_IV_SIZE, GCM_TAG_SIZE, PARAMS_SIZE,
};
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::{
    AesGcmParams, BufRef, ControlCommand, Crc32cParams, CtrlReq, CtrlResp, DeflateFormat,
    DeflateParams, Fence, FillParams, MemSeg, Op, Req, Resp, Status, VirtioAccelConfig,
    CONTROL_QUEUE, DIRECT_HANDLE, FIRST_REQUEST_QUEUE, MAX_REQUEST_QUEUES, VIRTIO_ACCEL_F_FENCES,
    VIRTIO_ACCEL_F_OBJECTS, VIRTIO_ID_ACCEL,
};

// ---------------------------------------------------------------------------
// The crate side.
// ---------------------------------------------------------------------------

/// One field of a wire struct, as the compiler lays it out.
#[derive(Debug)]
struct Field {
    name: &'static str,
    offset: usize,
    size: usize,
}

/// A wire struct, as the compiler lays it out.
#[derive(Debug)]
struct Layout {
    size: usize,
    fields: Vec<Field>,
}

/// Size of the field that `field` projects to, without needing a value of `T`.
fn size_of_field<T, F>(_field: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// `(name, Layout)` of a struct, given the list of all its fields.
///
/// The list must be complete: a struct pattern without `..` checks it at
/// compile time.
macro_rules! layout {
    ($ty:ident { $($field:ident),+ $(,)? }) => {{
        let _every_field_is_listed = |value: $ty| {
            let $ty { $($field: _),+ } = value;
        };
        (
            stringify!($ty),
            Layout {
                size: size_of::<$ty>(),
                fields: vec![$(Field {
                    name: stringify!($field),
                    offset: offset_of!($ty, $field),
                    size: size_of_field(|value: &$ty| &value.$field),
                }),+],
            },
        )
    }};
}

/// Every wire struct of the crate; each must have one layout table.
fn layouts() -> BTreeMap<&'static str, Layout> {
    BTreeMap::from([
        layout!(VirtioAccelConfig {
            num_request_queues,
            ops,
            max_segments,
            max_deps,
            max_objects,
            max_inflight,
            max_object_size,
            max_buffer_size,
        }),
        layout!(Req {
            op,
            num_deps,
            num_in,
            num_out,
            reserved,
            params
        }),
        layout!(Fence {
            seqno,
            queue,
            reserved
        }),
        layout!(BufRef {
            handle,
            reserved,
            offset,
            len
        }),
        layout!(Resp {
            status,
            reserved,
            fence,
            bytes_written,
            result
        }),
        layout!(CtrlReq { cmd, count, arg }),
        layout!(MemSeg { addr, len }),
        layout!(CtrlResp {
            status,
            reserved,
            value
        }),
        layout!(FillParams { pattern, reserved }),
        layout!(Crc32cParams { seed, reserved }),
        layout!(AesGcmParams {
            key,
            iv,
            reserved,
            tag
        }),
        layout!(DeflateParams {
            format,
            level,
            reserved
        }),
    ])
}

/// Every wire enum of the crate; each must have one values table.
const WIRE_ENUMS: [&str; 4] = ["Status", "Op", "ControlCommand", "DeflateFormat"];

fn usize_value(value: usize) -> u64 {
    u64::try_from(value).unwrap()
}

/// Every named constant of the crate that the specification must give.
fn constants() -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("VIRTIO_ID_ACCEL", u64::from(VIRTIO_ID_ACCEL)),
        ("VIRTIO_ACCEL_F_OBJECTS", u64::from(VIRTIO_ACCEL_F_OBJECTS)),
        ("VIRTIO_ACCEL_F_FENCES", u64::from(VIRTIO_ACCEL_F_FENCES)),
        ("CONTROL_QUEUE", u64::from(CONTROL_QUEUE)),
        ("FIRST_REQUEST_QUEUE", u64::from(FIRST_REQUEST_QUEUE)),
        ("MAX_REQUEST_QUEUES", u64::from(MAX_REQUEST_QUEUES)),
        ("DIRECT_HANDLE", u64::from(DIRECT_HANDLE)),
        ("PARAMS_SIZE", usize_value(PARAMS_SIZE)),
        ("RESULT_SIZE", usize_value(RESULT_SIZE)),
        ("COMPARE_EQUAL", COMPARE_EQUAL),
        ("AES_KEY_SIZE", usize_value(AES_KEY_SIZE)),
        ("GCM_IV_SIZE", usize_value(GCM_IV_SIZE)),
        ("GCM_TAG_SIZE", usize_value(GCM_TAG_SIZE)),
        ("DEFLATE_MAX_LEVEL", u64::from(DEFLATE_MAX_LEVEL)),
    ])
}

// ---------------------------------------------------------------------------
// Reporting.
// ---------------------------------------------------------------------------

fn fail(errors: &[String]) -> ! {
    panic!(
        "{} disagrees with the crate ({} problem(s)):\n  {}",
        doc_path().display(),
        errors.len(),
        errors.join("\n  ")
    );
}

fn assert_no_errors(errors: &[String]) {
    if !errors.is_empty() {
        fail(errors);
    }
}

/// Records that `name` got a table at `line`, and complains about duplicates.
fn note_seen(
    seen: &mut BTreeMap<String, usize>,
    what: &str,
    name: &str,
    line: usize,
    errors: &mut Vec<String>,
) {
    if let Some(first) = seen.insert(name.to_string(), line) {
        errors.push(format!(
            "line {line}: second {what} for `{name}` (first at line {first})"
        ));
    }
}

/// Complains about every name of `required` not in `seen`.
fn require_all<'a>(
    seen: &BTreeMap<String, usize>,
    required: impl IntoIterator<Item = &'a str>,
    what: &str,
    errors: &mut Vec<String>,
) {
    for name in required {
        if !seen.contains_key(name) {
            errors.push(format!("no {what} for `{name}`"));
        }
    }
}

// ---------------------------------------------------------------------------
// Layout tables.
// ---------------------------------------------------------------------------

fn check_layout(
    table: &Table,
    name: &str,
    layout: &Layout,
    declared_size: usize,
    errors: &mut Vec<String>,
) {
    if declared_size != layout.size {
        errors.push(format!(
            "line {}: {name}: the marker says size={declared_size}, size_of is {}",
            table.line, layout.size
        ));
    }
    let mut cursor = 0;
    let mut documented = BTreeSet::new();
    for (line, row) in &table.rows {
        let Some([offset, size, field]) = row_cells(*line, row, 3, errors) else {
            continue;
        };
        let (Ok(offset), Ok(size)) = (offset.parse::<usize>(), size.parse::<usize>()) else {
            errors.push(format!(
                "line {line}: offset `{offset}` or size `{size}` is not a decimal number"
            ));
            continue;
        };
        if offset != cursor {
            let problem = if offset > cursor {
                "a gap before it"
            } else {
                "an overlap with the row before"
            };
            errors.push(format!(
                "line {line}: {name}.{field} at offset {offset} leaves {problem} (previous rows end at {cursor})"
            ));
        }
        cursor = offset + size;
        if !documented.insert(field.as_str()) {
            errors.push(format!("line {line}: {name}.{field} is listed twice"));
        }
        match layout.fields.iter().find(|f| f.name == field) {
            None => errors.push(format!("line {line}: {name} has no field `{field}`")),
            Some(actual) => {
                if actual.offset != offset {
                    errors.push(format!(
                        "line {line}: {name}.{field}: documented offset {offset}, offset_of! is {}",
                        actual.offset
                    ));
                }
                if actual.size != size {
                    errors.push(format!(
                        "line {line}: {name}.{field}: documented size {size}, the field's size is {}",
                        actual.size
                    ));
                }
            }
        }
    }
    if cursor != declared_size {
        errors.push(format!(
            "line {}: {name}: the rows cover {cursor} bytes, the marker says size={declared_size}",
            table.line
        ));
    }
    for field in &layout.fields {
        if !documented.contains(field.name) {
            errors.push(format!(
                "line {}: {name}.{} is not documented",
                table.line, field.name
            ));
        }
    }
}

#[test]
fn layout_tables_match_the_structs() {
    let doc = Doc::load();
    let layouts = layouts();
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    for table in doc.tables("layout") {
        check_header(table, &["Offset", "Size", "Field"], &mut errors);
        let words: Vec<&str> = table.arg.split_whitespace().collect();
        let [name, size] = words.as_slice() else {
            errors.push(format!(
                "line {}: expected `layout: Type size=N`, found `{}`",
                table.line, table.arg
            ));
            continue;
        };
        let Some(size) = size
            .strip_prefix("size=")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            errors.push(format!(
                "line {}: expected `size=N`, found `{size}`",
                table.line
            ));
            continue;
        };
        note_seen(&mut seen, "layout table", name, table.line, &mut errors);
        match layouts.get(name) {
            Some(layout) => check_layout(table, name, layout, size, &mut errors),
            None => errors.push(format!(
                "line {}: the crate has no wire struct `{name}`",
                table.line
            )),
        }
    }
    require_all(&seen, layouts.keys().copied(), "layout table", &mut errors);
    assert_no_errors(&errors);
}

// ---------------------------------------------------------------------------
// Value tables.
// ---------------------------------------------------------------------------

/// Checks a `values:` table of the wire enum `E`, whose wire type is `R`.
fn check_values<E, R>(table: &Table, all: &[E], errors: &mut Vec<String>)
where
    E: Copy + Debug + TryFrom<R>,
    R: TryFrom<u64>,
{
    let ty = &table.arg;
    let mut listed = BTreeSet::new();
    for (line, row) in &table.rows {
        let Some([value, name]) = row_cells(*line, row, 2, errors) else {
            continue;
        };
        let Some(number) = parse_number(value) else {
            errors.push(format!("line {line}: `{value}` is not a number"));
            continue;
        };
        let Ok(wire) = R::try_from(number) else {
            errors.push(format!(
                "line {line}: {value} does not fit the wire type of {ty}"
            ));
            continue;
        };
        match E::try_from(wire) {
            Ok(variant) => {
                let actual = format!("{variant:?}");
                if actual != *name {
                    errors.push(format!(
                        "line {line}: {ty} value {value} is {actual} in the crate, not {name}"
                    ));
                }
            }
            Err(_) => errors.push(format!(
                "line {line}: {value} ({name}) is not a {ty} value in the crate"
            )),
        }
        if !listed.insert(name.clone()) {
            errors.push(format!("line {line}: {ty}::{name} is listed twice"));
        }
    }
    for variant in all {
        let name = format!("{variant:?}");
        if !listed.contains(&name) {
            errors.push(format!(
                "line {}: {ty}::{name} is missing from the table",
                table.line
            ));
        }
    }
}

#[test]
fn value_tables_match_the_enums() {
    let doc = Doc::load();
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    for table in doc.tables("values") {
        check_header(table, &["Value", "Name"], &mut errors);
        note_seen(
            &mut seen,
            "values table",
            &table.arg,
            table.line,
            &mut errors,
        );
        match table.arg.as_str() {
            "Status" => check_values::<Status, u32>(table, Status::ALL, &mut errors),
            "Op" => check_values::<Op, u32>(table, Op::ALL, &mut errors),
            "ControlCommand" => {
                check_values::<ControlCommand, u32>(table, ControlCommand::ALL, &mut errors)
            }
            "DeflateFormat" => {
                check_values::<DeflateFormat, u8>(table, DeflateFormat::ALL, &mut errors)
            }
            other => errors.push(format!(
                "line {}: the crate has no wire enum `{other}`",
                table.line
            )),
        }
    }
    require_all(&seen, WIRE_ENUMS, "values table", &mut errors);
    assert_no_errors(&errors);
}

#[test]
fn arity_table_matches_the_operations() {
    let doc = Doc::load();
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    for table in doc.tables("arity") {
        check_header(table, &["Name", "Inputs", "Outputs"], &mut errors);
        note_seen(
            &mut seen,
            "arity table",
            &table.arg,
            table.line,
            &mut errors,
        );
        if table.arg != "Op" {
            errors.push(format!(
                "line {}: expected `arity: Op`, found `arity: {}`",
                table.line, table.arg
            ));
            continue;
        }
        let mut listed = HashSet::new();
        for (line, row) in &table.rows {
            let Some([name, inputs, outputs]) = row_cells(*line, row, 3, &mut errors) else {
                continue;
            };
            let Some(op) = Op::ALL.iter().find(|op| format!("{op:?}") == *name) else {
                errors.push(format!("line {line}: the crate has no operation `{name}`"));
                continue;
            };
            let documented = (inputs.parse::<u8>().ok(), outputs.parse::<u8>().ok());
            let (num_in, num_out) = op.arity();
            if documented != (Some(num_in), Some(num_out)) {
                errors.push(format!(
                    "line {line}: {name} takes {num_in} input(s) and {num_out} output(s), the table says {inputs} and {outputs}"
                ));
            }
            if !listed.insert(*op) {
                errors.push(format!("line {line}: {name} is listed twice"));
            }
        }
        for op in Op::ALL {
            if !listed.contains(op) {
                errors.push(format!(
                    "line {}: {op:?} is missing from the arity table",
                    table.line
                ));
            }
        }
    }
    require_all(&seen, ["Op"], "arity table", &mut errors);
    assert_no_errors(&errors);
}

// ---------------------------------------------------------------------------
// Constants, device ID, section references.
// ---------------------------------------------------------------------------

#[test]
fn constant_tables_match_the_crate() {
    let doc = Doc::load();
    let constants = constants();
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    for table in doc.tables("constants") {
        check_header(table, &["Name", "Value"], &mut errors);
        for (line, row) in &table.rows {
            let Some([name, value]) = row_cells(*line, row, 2, &mut errors) else {
                continue;
            };
            note_seen(&mut seen, "constant row", name, *line, &mut errors);
            match (constants.get(name.as_str()), parse_number(value)) {
                (None, _) => errors.push(format!("line {line}: the crate has no checked constant `{name}`")),
                (Some(_), None) => errors.push(format!("line {line}: `{value}` is not a number")),
                (Some(actual), Some(documented)) if *actual != documented => errors.push(format!(
                    "line {line}: {name} is {actual:#x} ({actual}) in the crate, the table says {value}"
                )),
                _ => {}
            }
        }
    }
    require_all(
        &seen,
        constants.keys().copied(),
        "constant row",
        &mut errors,
    );
    assert_no_errors(&errors);
}

/// The text of top-level section `number`, from its heading to the next one.
fn section(text: &str, number: &str) -> Option<String> {
    let heading = format!("## {number} ");
    let mut lines = text.lines().skip_while(|line| !line.starts_with(&heading));
    let first = lines.next()?;
    let rest = lines.take_while(|line| !line.starts_with("## "));
    Some(
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn device_id_is_documented_in_section_2() {
    let doc = Doc::load();
    let Some(text) = section(&doc.text, "2") else {
        fail(&["no section `## 2 Device ID`".to_string()]);
    };
    let id = VIRTIO_ID_ACCEL.to_string();
    let mentioned = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == id);
    assert!(
        mentioned,
        "§2 of {} does not mention the device ID {id}",
        doc_path().display()
    );
}

#[test]
fn sections_exist() {
    let doc = Doc::load();
    let headings = heading_numbers(&doc.text);
    let mut errors = Vec::new();
    for number in 1..=12 {
        if !headings.contains(&number.to_string()) {
            errors.push(format!("no top-level section {number}"));
        }
    }
    for number in cited_sections(&doc.text) {
        if !headings.contains(&number) {
            errors.push(format!(
                "the document cites §{number}, which it does not have"
            ));
        }
    }
    let src = manifest_dir().join("src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sources in {}", src.display());
    for file in files {
        let code = std::fs::read_to_string(&file).unwrap();
        for number in cited_sections(&code) {
            if !headings.contains(&number) {
                errors.push(format!(
                    "{} cites §{number}, which the document does not have",
                    file.display()
                ));
            }
        }
    }
    assert_no_errors(&errors);
}
