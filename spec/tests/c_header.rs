// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checks the kernel module's wire header,
//! `guest-driver/linux/include/uapi/linux/virtio_accel.h`, against the marked
//! tables of the specification, `spec/virtio-accel.md` (the markers are
//! described in `layout.rs`):
//!
//! - every `layout:` table has a C struct, named by [`STRUCT_NAMES`], with the
//!   table's fields in the table's order, each at the table's offset, of its
//!   size and of its type (the first word of the row's description: `le32`,
//!   `u8[8]`, `Fence`); laid out by C's rules the struct has no padding and is
//!   the marker's size;
//! - every row of a `constants` table has a `#define` of the same value, named
//!   as the table does if that starts with `VIRTIO_`, else with `VIRTIO_ACCEL_`
//!   in front (`PARAMS_SIZE` is `VIRTIO_ACCEL_PARAMS_SIZE`);
//! - every row of a `values:` table has a `#define` of the same value, named by
//!   the enum's prefix ([`ENUM_PREFIXES`]) and the variant in upper snake case
//!   (`Op` `AesGcmSeal` is `VIRTIO_ACCEL_OP_AES_GCM_SEAL`);
//! - the header has no struct and no `#define` the specification does not
//!   give (the include guard aside), and every section it cites exists.
//!
//! The header is read by a parser of the C it uses: `#define NAME value` where
//! the value is an integer literal or the name of another define, and structs
//! of `__u8`, `__le16`, `__le32`, `__le64`, structs defined above and arrays of
//! those. Anything else in the header fails the test and names the line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod spec_doc;

use std::collections::BTreeMap;
use std::path::PathBuf;

use spec_doc::{
    check_header, cited_sections, doc_path, heading_numbers, manifest_dir, parse_number, row_cells,
    Doc, Table,
};

/// The header, relative to the workspace root.
const HEADER: &str = "guest-driver/linux/include/uapi/linux/virtio_accel.h";

/// The C struct of every layout table of the specification.
const STRUCT_NAMES: [(&str, &str); 12] = [
    ("VirtioAccelConfig", "virtio_accel_config"),
    ("Req", "virtio_accel_req"),
    ("Fence", "virtio_accel_fence"),
    ("BufRef", "virtio_accel_bufref"),
    ("Resp", "virtio_accel_resp"),
    ("CtrlReq", "virtio_accel_ctrl_req"),
    ("CtrlResp", "virtio_accel_ctrl_resp"),
    ("MemSeg", "virtio_accel_mem_seg"),
    ("FillParams", "virtio_accel_fill_params"),
    ("Crc32cParams", "virtio_accel_crc32c_params"),
    ("AesGcmParams", "virtio_accel_aes_gcm_params"),
    ("DeflateParams", "virtio_accel_deflate_params"),
];

/// The prefix of the `#define`s of every values table of the specification.
const ENUM_PREFIXES: [(&str, &str); 4] = [
    ("Op", "VIRTIO_ACCEL_OP_"),
    ("Status", "VIRTIO_ACCEL_S_"),
    ("ControlCommand", "VIRTIO_ACCEL_CMD_"),
    ("DeflateFormat", "VIRTIO_ACCEL_DEFLATE_"),
];

/// The little-endian and byte types of the wire, with their sizes; their
/// names in the specification drop the leading underscores.
const WIRE_TYPES: [(&str, usize); 4] = [("__u8", 1), ("__le16", 2), ("__le32", 4), ("__le64", 8)];

/// Most define-to-define references followed when evaluating one.
const MAX_DEFINE_DEPTH: usize = 8;

fn header_path() -> PathBuf {
    manifest_dir().join("..").join(HEADER)
}

/// Where line `line` of the header is, for messages.
fn at_header(line: usize) -> String {
    format!("{HEADER}:{line}")
}

/// Where line `line` of the specification is, for messages.
fn at_spec(line: usize) -> String {
    format!("spec/virtio-accel.md:{line}")
}

// ---------------------------------------------------------------------------
// Reading the header.
// ---------------------------------------------------------------------------

/// A `#define` of the header.
#[derive(Debug)]
struct Define {
    line: usize,
    /// The replacement text, trimmed; `None` for a function-like macro.
    body: Option<String>,
}

/// A field of a C struct, laid out by C's rules.
#[derive(Debug)]
struct CField {
    line: usize,
    name: String,
    offset: usize,
    size: usize,
    /// The type as the specification writes it: `le32`, `u8[8]`, `Fence`.
    spec_type: String,
}

/// A struct of the header, laid out by C's rules.
#[derive(Debug)]
struct CStruct {
    line: usize,
    fields: Vec<CField>,
    size: usize,
    align: usize,
}

/// What the checks know of the header.
#[derive(Debug, Default)]
struct CHeader {
    defines: BTreeMap<String, Define>,
    structs: BTreeMap<String, CStruct>,
}

/// A token of C code: its text and line.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
}

/// `text` with every comment replaced by spaces, newlines kept, so that line
/// numbers stay right.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('/', Some('*')) => {
                chars.next();
                out.push_str("  ");
                let mut previous = ' ';
                for c in chars.by_ref() {
                    out.push(if c == '\n' { '\n' } else { ' ' });
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                    out.push(' ');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits line `line`, `code`, into identifiers, numbers and single
/// punctuation characters.
fn tokenize(code: &str, line: usize, tokens: &mut Vec<Token>) {
    let mut chars = code.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut text = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                text.push(c);
                chars.next();
            }
            tokens.push(Token { text, line });
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            chars.next();
        }
    }
}

/// Records the preprocessor directive `directive` (without its `#`) of line
/// `line`.
fn parse_directive(directive: &str, line: usize, header: &mut CHeader, errors: &mut Vec<String>) {
    let directive = directive.trim();
    let (keyword, rest) = directive
        .split_once(|c: char| c.is_whitespace())
        .unwrap_or((directive, ""));
    match keyword {
        "ifndef" | "endif" | "include" => {}
        "define" => {
            let rest = rest.trim_start();
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (name, body) = rest.split_at(name_end);
            if !is_identifier(name) {
                errors.push(format!("{}: cannot read `#{directive}`", at_header(line)));
                return;
            }
            let body = (!body.starts_with('(')).then(|| body.trim().to_string());
            let define = Define { line, body };
            if let Some(first) = header.defines.insert(name.to_string(), define) {
                errors.push(format!(
                    "{}: {name} is defined twice (first at line {})",
                    at_header(line),
                    first.line
                ));
            }
        }
        _ => errors.push(format!(
            "{}: `#{directive}`: this test understands only #define, #ifndef, #endif and #include",
            at_header(line)
        )),
    }
}

/// Reads the header: its defines, and the code tokens of everything else.
fn read_directives(text: &str, header: &mut CHeader, errors: &mut Vec<String>) -> Vec<Token> {
    let code = strip_comments(text);
    let mut tokens = Vec::new();
    let mut lines = code.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((line, content)) = lines.next() {
        let Some(directive) = content.trim_start().strip_prefix('#') else {
            tokenize(content, line, &mut tokens);
            continue;
        };
        let mut directive = directive.to_string();
        while let Some(joined) = directive.strip_suffix('\\') {
            directive = joined.to_string();
            match lines.next() {
                Some((_, next)) => directive.push_str(next),
                None => break,
            }
        }
        parse_directive(&directive, line, header, errors);
    }
    tokens
}

/// A C integer literal: decimal, octal or hexadecimal, with `u`/`l` suffixes.
fn parse_c_integer(literal: &str) -> Option<u64> {
    let digits = literal.trim_end_matches(['u', 'U', 'l', 'L']);
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()
    } else {
        digits.parse().ok()
    }
}

impl CHeader {
    /// The value of `expression`, an integer literal or a define's name, or
    /// why it has none.
    fn value(&self, expression: &str) -> Result<u64, String> {
        self.evaluate(expression, 0)
    }

    /// The value of `expression`, an integer literal or a define's name, in
    /// parentheses or not; `depth` defines were followed to get there.
    fn evaluate(&self, expression: &str, depth: usize) -> Result<u64, String> {
        let mut expression = expression.trim();
        while let Some(inner) = expression
            .strip_prefix('(')
            .and_then(|e| e.strip_suffix(')'))
        {
            expression = inner.trim();
        }
        if let Some(value) = parse_c_integer(expression) {
            return Ok(value);
        }
        if !is_identifier(expression) {
            return Err(format!(
                "`{expression}` is neither an integer nor a define's name"
            ));
        }
        let define = self
            .defines
            .get(expression)
            .ok_or_else(|| format!("`{expression}` is not defined"))?;
        let body = define.body.as_deref().ok_or_else(|| {
            format!(
                "{expression} (line {}) is a function-like macro",
                define.line
            )
        })?;
        if depth >= MAX_DEFINE_DEPTH {
            return Err(format!(
                "defines nest more than {MAX_DEFINE_DEPTH} deep at {expression}"
            ));
        }
        self.evaluate(body, depth + 1)
    }
}

/// Parses the code tokens of the header: struct definitions only.
struct StructParser<'a> {
    tokens: &'a [Token],
    next: usize,
}

impl StructParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn take(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.next)?;
        self.next += 1;
        Some(token)
    }

    /// Takes the next token; `context` says where the header would end.
    fn next_token(&mut self, context: &str) -> Result<Token, String> {
        let last_line = self.tokens.last().map_or(1, |t| t.line);
        self.take()
            .cloned()
            .ok_or_else(|| format!("{}: the header ends {context}", at_header(last_line)))
    }

    /// Takes the next token, which must be `expected` (or an identifier, when
    /// `expected` is `None`).
    fn expect(&mut self, expected: Option<&str>, after: &str) -> Result<Token, String> {
        let token = self.next_token(&format!("after {after}"))?;
        let fits = match expected {
            Some(text) => token.text == text,
            None => is_identifier(&token.text),
        };
        if fits {
            Ok(token)
        } else {
            Err(format!(
                "{}: expected {} after {after}, found `{}`",
                at_header(token.line),
                expected.map_or("a name".to_string(), |t| format!("`{t}`")),
                token.text
            ))
        }
    }

    /// The tokens of one field declaration of struct `struct_name`, up to its
    /// `;`.
    fn field_tokens(&mut self, struct_name: &str) -> Result<Vec<Token>, String> {
        let mut field = Vec::new();
        loop {
            let token = self.next_token(&format!("inside struct {struct_name}"))?;
            match token.text.as_str() {
                ";" => return Ok(field),
                "}" | "{" => {
                    return Err(format!(
                        "{}: unexpected `{}` in a field of struct {struct_name}",
                        at_header(token.line),
                        token.text
                    ))
                }
                _ => field.push(token),
            }
        }
    }
}

/// The C struct name of the specification's layout `spec_name`.
fn c_struct_name(spec_name: &str) -> Option<&'static str> {
    STRUCT_NAMES
        .iter()
        .find(|(spec, _)| *spec == spec_name)
        .map(|(_, c)| *c)
}

/// The specification's name of the C struct `c_name`.
fn spec_struct_name(c_name: &str) -> Option<&'static str> {
    STRUCT_NAMES
        .iter()
        .find(|(_, c)| *c == c_name)
        .map(|(spec, _)| *spec)
}

/// Type, size and alignment of one element of a field, from its type tokens.
fn element_type(
    type_tokens: &[Token],
    field: &Token,
    header: &CHeader,
) -> Result<(String, usize, usize), String> {
    let words: Vec<&str> = type_tokens.iter().map(|t| t.text.as_str()).collect();
    match words.as_slice() {
        ["struct", name] => {
            let nested = header.structs.get(*name).ok_or_else(|| {
                format!(
                    "{}: field `{}` is a struct {name}, which is not defined above it",
                    at_header(field.line),
                    field.text
                )
            })?;
            let spec_type = spec_struct_name(name).map_or(format!("struct {name}"), str::to_string);
            Ok((spec_type, nested.size, nested.align))
        }
        [name] => WIRE_TYPES
            .iter()
            .find(|(wire, _)| wire == name)
            .map(|(wire, size)| (wire.trim_start_matches('_').to_string(), *size, *size))
            .ok_or_else(|| {
                format!(
                    "{}: field `{}` has type `{name}`, not a wire type (__u8, __le16, __le32, __le64 or a struct)",
                    at_header(field.line),
                    field.text
                )
            }),
        _ => Err(format!(
            "{}: field `{}` has type `{}`, which this test cannot read",
            at_header(field.line),
            field.text,
            words.join(" ")
        )),
    }
}

/// Name token and element count of a field declaration's declarator: `name`
/// or `name[N]`.
fn declarator<'t>(
    tokens: &'t [Token],
    header: &CHeader,
) -> Result<(&'t [Token], &'t Token, Option<usize>), String> {
    let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
    let line = tokens.first().map_or(0, |t| t.line);
    match texts.as_slice() {
        [.., _, name, "[", length, "]"] if is_identifier(name) => {
            let split = tokens.len() - 4;
            let count = header
                .value(length)
                .and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: the length of `{name}`: {e}", at_header(line)))?;
            Ok((&tokens[..split], &tokens[split], Some(count)))
        }
        [.., _, name] if is_identifier(name) => {
            let split = tokens.len() - 1;
            Ok((&tokens[..split], &tokens[split], None))
        }
        _ => Err(format!(
            "{}: cannot read the field declaration `{}`",
            at_header(line),
            texts.join(" ")
        )),
    }
}

/// Lays out the fields of struct `name` by C's rules; implicit padding is an
/// error, since every wire struct is packed by construction.
fn lay_out(
    name: &str,
    line: usize,
    declarations: &[Vec<Token>],
    header: &CHeader,
    errors: &mut Vec<String>,
) -> Result<CStruct, String> {
    let mut fields = Vec::new();
    let mut end: usize = 0;
    let mut align: usize = 1;
    for tokens in declarations {
        let (type_tokens, field, count) = declarator(tokens, header)?;
        let (element, element_size, element_align) = element_type(type_tokens, field, header)?;
        let offset = end.next_multiple_of(element_align);
        if offset != end {
            errors.push(format!(
                "{}: C puts {} byte(s) of padding before {name}.{}",
                at_header(field.line),
                offset - end,
                field.text
            ));
        }
        let (size, spec_type) = match count {
            Some(n) => {
                let size = element_size.checked_mul(n).ok_or_else(|| {
                    format!(
                        "{}: {name}.{} is too large",
                        at_header(field.line),
                        field.text
                    )
                })?;
                (size, format!("{element}[{n}]"))
            }
            None => (element_size, element),
        };
        fields.push(CField {
            line: field.line,
            name: field.text.clone(),
            offset,
            size,
            spec_type,
        });
        end = offset + size;
        align = align.max(element_align);
    }
    let size = end.next_multiple_of(align);
    if size != end {
        errors.push(format!(
            "{}: C puts {} byte(s) of padding at the end of struct {name}",
            at_header(line),
            size - end
        ));
    }
    Ok(CStruct {
        line,
        fields,
        size,
        align,
    })
}

/// Reads the struct definitions of the code tokens into `header`.
fn read_structs(tokens: &[Token], header: &mut CHeader, errors: &mut Vec<String>) {
    let mut parser = StructParser { tokens, next: 0 };
    while parser.peek().is_some() {
        if let Err(error) = read_struct(&mut parser, header, errors) {
            errors.push(error);
            return;
        }
    }
}

fn read_struct(
    parser: &mut StructParser<'_>,
    header: &mut CHeader,
    errors: &mut Vec<String>,
) -> Result<(), String> {
    let keyword = parser.take().cloned().expect("a token was peeked");
    if keyword.text != "struct" {
        return Err(format!(
            "{}: unexpected `{}`: outside directives the header may hold only struct definitions",
            at_header(keyword.line),
            keyword.text
        ));
    }
    let name = parser.expect(None, "`struct`")?;
    parser.expect(Some("{"), &format!("`struct {}`", name.text))?;
    let mut declarations = Vec::new();
    while parser.peek().is_some_and(|t| t.text != "}") {
        declarations.push(parser.field_tokens(&name.text)?);
    }
    parser.expect(Some("}"), &format!("the fields of struct {}", name.text))?;
    parser.expect(Some(";"), &format!("the `}}` of struct {}", name.text))?;
    let layout = lay_out(&name.text, name.line, &declarations, header, errors)?;
    if let Some(first) = header.structs.insert(name.text.clone(), layout) {
        errors.push(format!(
            "{}: struct {} is defined twice (first at line {})",
            at_header(name.line),
            name.text,
            first.line
        ));
    }
    Ok(())
}

/// Parses the header's text.
fn parse_c_header(text: &str) -> (CHeader, Vec<String>) {
    let mut header = CHeader::default();
    let mut errors = Vec::new();
    let tokens = read_directives(text, &mut header, &mut errors);
    read_structs(&tokens, &mut header, &mut errors);
    (header, errors)
}

// ---------------------------------------------------------------------------
// Structs against the layout tables.
// ---------------------------------------------------------------------------

/// A row of a layout table: offset, size, field and type.
#[derive(Debug, PartialEq)]
struct SpecField {
    line: usize,
    name: String,
    offset: usize,
    size: usize,
    spec_type: String,
}

/// The rows of a layout table; the type is the description's first word.
fn spec_fields(table: &Table, errors: &mut Vec<String>) -> Vec<SpecField> {
    let mut fields = Vec::new();
    for (line, row) in &table.rows {
        let Some([offset, size, name, description]) = row_cells(*line, row, 4, errors) else {
            continue;
        };
        let (Ok(offset), Ok(size)) = (offset.parse(), size.parse()) else {
            errors.push(format!(
                "{}: offset `{offset}` or size `{size}` is not a decimal number",
                at_spec(*line)
            ));
            continue;
        };
        let spec_type = description
            .split_once('.')
            .map_or(description.as_str(), |(first, _)| first)
            .trim()
            .to_string();
        fields.push(SpecField {
            line: *line,
            name: name.clone(),
            offset,
            size,
            spec_type,
        });
    }
    fields
}

fn describe(offset: usize, size: usize, spec_type: &str) -> String {
    format!("at offset {offset}, {size} byte(s), {spec_type}")
}

/// Compares struct `c_name` with the layout table of `spec_name`: the size,
/// the set of fields, each field's offset, size and type, and their order.
fn check_struct(
    table: &Table,
    spec_name: &str,
    spec_size: usize,
    c_name: &str,
    c_struct: &CStruct,
    errors: &mut Vec<String>,
) {
    if c_struct.size != spec_size {
        errors.push(format!(
            "{}: struct {c_name} is {} bytes, the spec's {spec_name} is {spec_size} ({})",
            at_header(c_struct.line),
            c_struct.size,
            at_spec(table.line)
        ));
    }
    let spec = spec_fields(table, errors);
    for s in &spec {
        let spec_says = describe(s.offset, s.size, &s.spec_type);
        let Some(c) = c_struct.fields.iter().find(|c| c.name == s.name) else {
            errors.push(format!(
                "{}: struct {c_name} lacks the spec's {spec_name}.{} {spec_says} ({})",
                at_header(c_struct.line),
                s.name,
                at_spec(s.line)
            ));
            continue;
        };
        let header_says = describe(c.offset, c.size, &c.spec_type);
        if header_says != spec_says {
            errors.push(format!(
                "{}: {c_name}.{} is {header_says}; the spec's {spec_name}.{} is {spec_says} ({})",
                at_header(c.line),
                c.name,
                s.name,
                at_spec(s.line)
            ));
        }
    }
    for c in &c_struct.fields {
        if !spec.iter().any(|s| s.name == c.name) {
            errors.push(format!(
                "{}: {c_name}.{} is not in the spec's {spec_name} table ({})",
                at_header(c.line),
                c.name,
                at_spec(table.line)
            ));
        }
    }
    let c_order: Vec<&str> = c_struct
        .fields
        .iter()
        .map(|c| c.name.as_str())
        .filter(|name| spec.iter().any(|s| s.name == *name))
        .collect();
    let spec_order: Vec<&str> = spec
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| c_order.contains(name))
        .collect();
    if c_order != spec_order {
        errors.push(format!(
            "{}: the fields of struct {c_name} are in the order {}; the spec's {spec_name} has {} ({})",
            at_header(c_struct.line),
            c_order.join(", "),
            spec_order.join(", "),
            at_spec(table.line)
        ));
    }
}

fn check_structs(doc: &Doc, header: &CHeader, errors: &mut Vec<String>) {
    let mut matched = Vec::new();
    for table in doc.tables("layout") {
        check_header(table, &["Offset", "Size", "Field", "Description"], errors);
        let words: Vec<&str> = table.arg.split_whitespace().collect();
        let [spec_name, size] = words.as_slice() else {
            errors.push(format!(
                "{}: expected `layout: Type size=N`, found `{}`",
                at_spec(table.line),
                table.arg
            ));
            continue;
        };
        let Some(size) = size
            .strip_prefix("size=")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            errors.push(format!("{}: expected `size=N`", at_spec(table.line)));
            continue;
        };
        let Some(c_name) = c_struct_name(spec_name) else {
            errors.push(format!(
                "{}: layout {spec_name} has no C struct name in STRUCT_NAMES of {}",
                at_spec(table.line),
                file!()
            ));
            continue;
        };
        matched.push(c_name);
        match header.structs.get(c_name) {
            Some(c_struct) => check_struct(table, spec_name, size, c_name, c_struct, errors),
            None => errors.push(format!(
                "{HEADER}: no struct {c_name}, the C form of the spec's {spec_name} ({})",
                at_spec(table.line)
            )),
        }
    }
    for (c_name, c_struct) in &header.structs {
        if !matched.contains(&c_name.as_str()) {
            errors.push(format!(
                "{}: struct {c_name} has no layout table in the spec",
                at_header(c_struct.line)
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Defines against the constant and value tables.
// ---------------------------------------------------------------------------

/// A `#define` the specification asks for.
#[derive(Debug)]
struct Expected {
    /// Line of the table row.
    line: usize,
    /// What the row defines, e.g. `constant PARAMS_SIZE` or `Op Copy`.
    what: String,
    /// The row's value cell.
    cell: String,
    value: u64,
}

/// `AesGcmSeal` as `AES_GCM_SEAL`, `Crc32c` as `CRC32C`.
fn upper_snake_case(camel: &str) -> String {
    let mut out = String::new();
    let mut previous: Option<char> = None;
    for c in camel.chars() {
        if c.is_ascii_uppercase()
            && previous.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
        previous = Some(c);
    }
    out
}

/// The C name of the specification's constant `name`.
fn c_constant_name(name: &str) -> String {
    if name.starts_with("VIRTIO_") {
        name.to_string()
    } else {
        format!("VIRTIO_ACCEL_{name}")
    }
}

fn expect_define(
    expected: &mut BTreeMap<String, Expected>,
    c_name: String,
    entry: Expected,
    errors: &mut Vec<String>,
) {
    let line = entry.line;
    if let Some(first) = expected.insert(c_name.clone(), entry) {
        errors.push(format!(
            "{}: {c_name} would also be the C name of {} ({})",
            at_spec(line),
            first.what,
            at_spec(first.line)
        ));
    }
}

/// Every `#define` the specification's constant and value tables ask for.
fn expected_defines(doc: &Doc, errors: &mut Vec<String>) -> BTreeMap<String, Expected> {
    let mut expected = BTreeMap::new();
    for table in doc.tables("constants") {
        check_header(table, &["Name", "Value"], errors);
        for (line, row) in &table.rows {
            let Some([name, cell]) = row_cells(*line, row, 2, errors) else {
                continue;
            };
            let Some(value) = parse_number(cell) else {
                errors.push(format!("{}: `{cell}` is not a number", at_spec(*line)));
                continue;
            };
            let entry = Expected {
                line: *line,
                what: format!("constant {name}"),
                cell: cell.clone(),
                value,
            };
            expect_define(&mut expected, c_constant_name(name), entry, errors);
        }
    }
    for table in doc.tables("values") {
        check_header(table, &["Value", "Name"], errors);
        let Some((_, prefix)) = ENUM_PREFIXES.iter().find(|(ty, _)| *ty == table.arg) else {
            errors.push(format!(
                "{}: values of {} have no C prefix in ENUM_PREFIXES of {}",
                at_spec(table.line),
                table.arg,
                file!()
            ));
            continue;
        };
        for (line, row) in &table.rows {
            let Some([cell, name]) = row_cells(*line, row, 2, errors) else {
                continue;
            };
            let Some(value) = parse_number(cell) else {
                errors.push(format!("{}: `{cell}` is not a number", at_spec(*line)));
                continue;
            };
            let entry = Expected {
                line: *line,
                what: format!("{} {name}", table.arg),
                cell: cell.clone(),
                value,
            };
            let c_name = format!("{prefix}{}", upper_snake_case(name));
            expect_define(&mut expected, c_name, entry, errors);
        }
    }
    expected
}

fn check_defines(doc: &Doc, header: &CHeader, errors: &mut Vec<String>) {
    let expected = expected_defines(doc, errors);
    for (c_name, spec) in &expected {
        let Some(define) = header.defines.get(c_name) else {
            errors.push(format!(
                "{HEADER}: no #define {c_name} for the spec's {} = {} ({})",
                spec.what,
                spec.cell,
                at_spec(spec.line)
            ));
            continue;
        };
        match header.value(c_name) {
            Ok(value) if value == spec.value => {}
            Ok(value) => errors.push(format!(
                "{}: {c_name} is {value:#x} ({value}); the spec's {} is {} ({})",
                at_header(define.line),
                spec.what,
                spec.cell,
                at_spec(spec.line)
            )),
            Err(why) => errors.push(format!(
                "{}: {c_name} has no value this test can read: {why}",
                at_header(define.line)
            )),
        }
    }
    for (c_name, define) in &header.defines {
        // Names with a leading underscore (the include guard) are not wire
        // constants.
        if !c_name.starts_with('_') && !expected.contains_key(c_name) {
            errors.push(format!(
                "{}: #define {c_name} is no constant or value of the spec (constant rows map to VIRTIO_ACCEL_<NAME>, values to {})",
                at_header(define.line),
                ENUM_PREFIXES
                    .iter()
                    .map(|(ty, prefix)| format!("{prefix}<{ty} in UPPER_SNAKE_CASE>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Section references.
// ---------------------------------------------------------------------------

fn check_sections(doc: &Doc, header_text: &str, errors: &mut Vec<String>) {
    let headings = heading_numbers(&doc.text);
    for number in cited_sections(header_text) {
        if !headings.contains(&number) {
            errors.push(format!(
                "{HEADER} cites §{number}, which {} does not have",
                doc_path().display()
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// Every disagreement between the specification and the header text `text`.
fn check_all(doc: &Doc, text: &str) -> Vec<String> {
    let (header, mut errors) = parse_c_header(text);
    check_structs(doc, &header, &mut errors);
    check_defines(doc, &header, &mut errors);
    check_sections(doc, text, &mut errors);
    errors
}

fn read_header() -> String {
    let path = header_path();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the C header {}: {e}", path.display()))
}

/// Runs `check` on the specification and the parsed header, failing with
/// every problem it and the parser found.
fn assert_agree(check: fn(&Doc, &CHeader, &mut Vec<String>)) {
    let doc = Doc::load();
    let (header, mut errors) = parse_c_header(&read_header());
    check(&doc, &header, &mut errors);
    if !errors.is_empty() {
        panic!(
            "{HEADER} disagrees with {} ({} problem(s)):\n  {}",
            doc_path().display(),
            errors.len(),
            errors.join("\n  ")
        );
    }
}

#[test]
fn header_structs_match_the_layout_tables() {
    assert_agree(check_structs);
}

#[test]
fn header_defines_match_the_constant_and_value_tables() {
    assert_agree(check_defines);
}

#[test]
fn sections_cited_by_the_header_exist() {
    let doc = Doc::load();
    let mut errors = Vec::new();
    check_sections(&doc, &read_header(), &mut errors);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// `text` with each line whose trimmed content is the `old` of a pair
/// replaced by its `new` (which may hold several lines, or none to delete
/// it). Every `old` must be exactly one line of `text`.
fn replace_lines(text: &str, pairs: &[(&str, &str)]) -> String {
    for (old, _) in pairs {
        let matches = text.lines().filter(|l| l.trim() == *old).count();
        assert_eq!(
            matches, 1,
            "{HEADER} has {matches} line(s) `{old}`: update the perturbations of this test"
        );
    }
    let mut out = String::new();
    for line in text.lines() {
        match pairs.iter().find(|(old, _)| line.trim() == *old) {
            Some((_, "")) => continue,
            Some((_, new)) => out.push_str(new),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The trimmed line of `text` that is `#define name ...`.
fn define_line<'t>(text: &'t str, name: &str) -> &'t str {
    text.lines()
        .map(str::trim)
        .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
        .unwrap_or_else(|| panic!("{HEADER} has no #define {name}: update this test"))
}

/// `text` with the body of `#define name` replaced by `body`.
fn redefine(text: &str, name: &str, body: &str) -> String {
    let new = format!("#define {name} {body}");
    replace_lines(text, &[(define_line(text, name), &new)])
}

#[test]
fn perturbed_headers_fail() {
    let doc = Doc::load();
    let original = read_header();
    let baseline = check_all(&doc, &original);
    let perturbations = [
        (
            "a status value",
            redefine(&original, "VIRTIO_ACCEL_S_BUSY", "12"),
            "VIRTIO_ACCEL_S_BUSY is 0xc (12); the spec's Status Busy is 11",
        ),
        (
            "the all-ones COMPARE result",
            redefine(
                &original,
                "VIRTIO_ACCEL_COMPARE_EQUAL",
                "0xfffffffffffffffeULL",
            ),
            "the spec's constant COMPARE_EQUAL is 0xffff_ffff_ffff_ffff",
        ),
        (
            "a size constant, also an array length",
            redefine(&original, "VIRTIO_ACCEL_PARAMS_SIZE", "60"),
            "virtio_accel_req.params is at offset 16, 60 byte(s), u8[60]",
        ),
        (
            "a missing operation",
            replace_lines(
                &original,
                &[(define_line(&original, "VIRTIO_ACCEL_OP_FILL"), "")],
            ),
            "no #define VIRTIO_ACCEL_OP_FILL for the spec's Op Fill = 2",
        ),
        (
            "a define the spec does not have",
            original.replace(
                "#endif /* _UAPI",
                "#define VIRTIO_ACCEL_OP_FROB 10\n#endif /* _UAPI",
            ),
            "#define VIRTIO_ACCEL_OP_FROB is no constant or value of the spec",
        ),
        (
            "a wider field",
            replace_lines(&original, &[("__le16 num_deps;", "\t__le32 num_deps;")]),
            "virtio_accel_req.num_deps is at offset 4, 4 byte(s), le32",
        ),
        (
            "two fields swapped",
            replace_lines(
                &original,
                &[
                    ("__u8 num_in;", "\t__u8 num_out;"),
                    ("__u8 num_out;", "\t__u8 num_in;"),
                ],
            ),
            "the fields of struct virtio_accel_req are in the order op, num_deps, num_out, num_in",
        ),
        (
            "a shorter array in a nested struct",
            replace_lines(&original, &[("__u8 reserved[6];", "\t__u8 reserved[5];")]),
            "C puts 1 byte(s) of padding at the end of struct virtio_accel_fence",
        ),
        (
            "a native-endian field",
            replace_lines(&original, &[("__le32 seed;", "\t__u32 seed;")]),
            "field `seed` has type `__u32`, not a wire type",
        ),
        (
            "a field the spec does not have",
            replace_lines(
                &original,
                &[("__le64 addr;", "\t__le64 addr;\n\t__le64 extra;")],
            ),
            "virtio_accel_mem_seg.extra is not in the spec's MemSeg table",
        ),
        (
            "a section the spec does not have",
            original.replace("/* §8.3 */", "/* §8.30 */"),
            "cites §8.30",
        ),
    ];
    for (what, perturbed, expected) in perturbations {
        assert_ne!(
            perturbed, original,
            "{what}: the perturbation changed nothing"
        );
        assert!(
            !baseline.iter().any(|e| e.contains(expected)),
            "{what}: the unchanged header already gives `{expected}`"
        );
        let errors = check_all(&doc, &perturbed);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: expected a problem containing `{expected}`, got:\n  {}",
            errors.join("\n  ")
        );
    }
}
