//! Client codecs from a Garrison wire schema (`garrison_protocol::schema::Document::to_json`).
//!
//! [`typescript`] writes one self-contained TypeScript module: the game's types as interfaces
//! and unions, the layout table, a small runtime that reads and writes the rkyv subset on the
//! wire (validating every bound, offset, tag, bool and UTF-8 sequence, and writing the exact
//! bytes rkyv writes), per-message `encodeX` (a whole frame) and `decodeX` (a payload), and per
//! protocol a `decodeP(frame)` that dispatches on the kind. [`csharp`] writes the same as one C#
//! file for .NET Standard 2.0 and Unity (C# 6): classes and enums, per type a reader, a two-pass
//! encoder and a plain-JSON writer.

use std::fmt::Write as _;

use serde_json::{Map, Value};

mod csharp;

pub use csharp::csharp;

/// A schema the generator cannot use.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// Not JSON.
    #[error("the schema is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a Garrison schema of a version this generator reads.
    #[error("the schema is malformed: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> CodegenError {
    CodegenError::Malformed(what.into())
}

fn field<'a>(value: &'a Value, name: &str, at: &str) -> Result<&'a Value, CodegenError> {
    value
        .get(name)
        .ok_or_else(|| malformed(format!("{at} has no `{name}`")))
}

fn text<'a>(value: &'a Value, name: &str, at: &str) -> Result<&'a str, CodegenError> {
    field(value, name, at)?
        .as_str()
        .ok_or_else(|| malformed(format!("{at}.{name} is not a string")))
}

fn number(value: &Value, name: &str, at: &str) -> Result<u64, CodegenError> {
    field(value, name, at)?
        .as_u64()
        .ok_or_else(|| malformed(format!("{at}.{name} is not a number")))
}

fn list<'a>(value: &'a Value, name: &str, at: &str) -> Result<&'a Vec<Value>, CodegenError> {
    field(value, name, at)?
        .as_array()
        .ok_or_else(|| malformed(format!("{at}.{name} is not a list")))
}

const PRIMITIVES: &[&str] = &[
    "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool",
];

/// The TypeScript type of a schema type.
fn ts_type(ty: &Value, types: &Map<String, Value>) -> Result<String, CodegenError> {
    if let Some(name) = ty.as_str() {
        return Ok(match name {
            "u64" | "i64" => "bigint".into(),
            "bool" => "boolean".into(),
            "string" => "string".into(),
            primitive if PRIMITIVES.contains(&primitive) => "number".into(),
            named if types.contains_key(named) => named.into(),
            unknown => return Err(malformed(format!("unknown type `{unknown}`"))),
        });
    }
    let is_u8 = |inner: &Value| inner.as_str() == Some("u8");
    if let Some(inner) = ty.get("vec") {
        return Ok(if is_u8(inner) {
            "Uint8Array".into()
        } else {
            format!("{}[]", wrap(ts_type(inner, types)?))
        });
    }
    if let Some(inner) = ty.get("array") {
        return Ok(if is_u8(inner) {
            "Uint8Array".into()
        } else {
            format!("{}[]", wrap(ts_type(inner, types)?))
        });
    }
    if let Some(inner) = ty.get("option") {
        return Ok(format!("{} | null", ts_type(inner, types)?));
    }
    if let Some(inner) = ty.get("box") {
        return ts_type(inner, types);
    }
    if let Some(elements) = ty.get("tuple").and_then(Value::as_array) {
        let elements: Result<Vec<_>, _> = elements.iter().map(|e| ts_type(e, types)).collect();
        return Ok(format!("[{}]", elements?.join(", ")));
    }
    Err(malformed(format!("unknown type {ty}")))
}

fn wrap(ty: String) -> String {
    if ty.contains(' ') {
        format!("({ty})")
    } else {
        ty
    }
}

fn key(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name.to_owned()
    }
}

fn fields_ts(
    fields: &[Value],
    types: &Map<String, Value>,
    at: &str,
) -> Result<Vec<String>, CodegenError> {
    fields
        .iter()
        .map(|f| {
            let name = text(f, "name", at)?;
            Ok(format!(
                "{}: {}",
                key(name),
                ts_type(field(f, "type", at)?, types)?
            ))
        })
        .collect()
}

/// Writes the TypeScript module for `schema` (the JSON `Document::to_json` writes).
///
/// # Errors
/// [`CodegenError`] when the schema is not JSON or not a version-1 Garrison schema.
pub fn typescript(schema: &str) -> Result<String, CodegenError> {
    let schema: Value = serde_json::from_str(schema)?;
    if schema.get("garrison_schema").and_then(Value::as_u64) != Some(1) {
        return Err(malformed(
            "not a version-1 Garrison schema (`garrison_schema`: 1)",
        ));
    }
    let name = text(&schema, "name", "schema")?;
    let hash = text(&schema, "layout_hash", "schema")?;
    if u64::from_str_radix(hash, 16).is_err() {
        return Err(malformed("layout_hash is not 16 hex digits"));
    }
    let types = field(&schema, "types", "schema")?
        .as_object()
        .ok_or_else(|| malformed("types is not an object"))?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by garrison-codegen from the `{name}` wire schema (layout {hash}). Do not edit:\n\
         // regenerate with `garrison-codegen typescript SCHEMA.json OUT.ts`.\n\
         /* eslint-disable */\n"
    );
    out.push_str(include_str!("runtime.ts"));
    out.push('\n');
    let _ = writeln!(
        out,
        "/** The layout hash this module was generated for: send it in `Hello.layout`. */\n\
         export const LAYOUT_HASH = 0x{hash}n;\n"
    );

    // The layout table the runtime reads, with `unit` marked on enums of unit variants only.
    let mut table = Map::new();
    for (type_name, definition) in types {
        let at = format!("types.{type_name}");
        let kind = text(definition, "kind", &at)?;
        let mut entry = Map::new();
        entry.insert("kind".into(), kind.into());
        entry.insert("size".into(), number(definition, "size", &at)?.into());
        match kind {
            "struct" => {
                entry.insert(
                    "fields".into(),
                    Value::Array(strip_fields(list(definition, "fields", &at)?)),
                );
            }
            "enum" => {
                let variants = list(definition, "variants", &at)?;
                let mut unit = true;
                let mut stripped = Vec::new();
                for variant in variants {
                    let fields = list(variant, "fields", &at)?;
                    unit &= fields.is_empty();
                    let mut v = Map::new();
                    v.insert("name".into(), text(variant, "name", &at)?.into());
                    v.insert("tag".into(), number(variant, "tag", &at)?.into());
                    v.insert("fields".into(), Value::Array(strip_fields(fields)));
                    stripped.push(Value::Object(v));
                }
                entry.insert("unit".into(), unit.into());
                entry.insert("variants".into(), Value::Array(stripped));
            }
            other => return Err(malformed(format!("{at}: unknown kind `{other}`"))),
        }
        table.insert(type_name.clone(), Value::Object(entry));
    }
    let _ = writeln!(
        out,
        "const TYPES: Record<string, Def> = {};\nconst codec = new Codec(TYPES);\n",
        serde_json::to_string(&Value::Object(table)).map_err(CodegenError::Json)?
    );
    out.push_str(
        "/** A value of the named type as plain JSON (bigints as decimal strings, bytes as arrays). */\n\
         export function toPlain(type: string, value: unknown): unknown {\n  return toPlainWith(codec, type, value);\n}\n\n\
         /** The inverse of `toPlain`. */\n\
         export function fromPlain(type: string, plain: unknown): unknown {\n  return fromPlainWith(codec, type, plain);\n}\n\n",
    );

    // The types.
    for (type_name, definition) in types {
        let at = format!("types.{type_name}");
        let _ = writeln!(
            out,
            "/** `{type_name}` ({} bytes archived). */",
            number(definition, "size", &at)?
        );
        match text(definition, "kind", &at)? {
            "struct" => {
                let fields = fields_ts(list(definition, "fields", &at)?, types, &at)?;
                let _ = writeln!(out, "export interface {type_name} {{");
                for f in fields {
                    let _ = writeln!(out, "  {f};");
                }
                out.push_str("}\n\n");
            }
            _ => {
                let variants = list(definition, "variants", &at)?;
                let unit = variants.iter().all(|v| {
                    v.get("fields")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                });
                let mut arms = Vec::new();
                for variant in variants {
                    let variant_name = text(variant, "name", &at)?;
                    if unit {
                        arms.push(format!("\"{variant_name}\""));
                    } else {
                        let mut parts = vec![format!("kind: \"{variant_name}\"")];
                        parts.extend(fields_ts(list(variant, "fields", &at)?, types, &at)?);
                        arms.push(format!("{{ {} }}", parts.join("; ")));
                    }
                }
                let _ = writeln!(
                    out,
                    "export type {type_name} =\n  | {};\n",
                    arms.join("\n  | ")
                );
            }
        }
    }

    // The protocols.
    for protocol in list(&schema, "protocols", "schema")? {
        let protocol_name = text(protocol, "name", "protocols")?;
        let at = format!("protocols.{protocol_name}");
        let messages = list(protocol, "messages", &at)?;
        let _ = writeln!(
            out,
            "/** The kind ids of `{protocol_name}`. */\nexport const {protocol_name}Kind = {{"
        );
        for message in messages {
            let _ = writeln!(
                out,
                "  {}: 0x{:04x},",
                text(message, "name", &at)?,
                number(message, "kind", &at)?
            );
        }
        out.push_str("} as const;\n\n");
        let _ = writeln!(
            out,
            "/** The type of each `{protocol_name}` message. */\nexport const {protocol_name}Types = {{"
        );
        for message in messages {
            let _ = writeln!(
                out,
                "  {}: {},",
                text(message, "name", &at)?,
                field(message, "type", &at)?
            );
        }
        out.push_str("} as const;\n\n");
        let mut arms = Vec::new();
        let mut cases = String::new();
        for message in messages {
            let message_name = text(message, "name", &at)?;
            let ty = field(message, "type", &at)?;
            let type_name = ty
                .as_str()
                .filter(|t| types.contains_key(*t))
                .ok_or_else(|| {
                    malformed(format!(
                        "{at}.{message_name}: a message's type must be a named type"
                    ))
                })?;
            arms.push(format!(
                "{{ kind: \"{message_name}\"; message: {type_name}; frame: Frame }}"
            ));
            let _ = writeln!(
                cases,
                "    case {protocol_name}Kind.{message_name}:\n      return {{ kind: \"{message_name}\", message: decode{message_name}(frame.payload), frame }};"
            );
            let _ = writeln!(
                out,
                "/** `{message_name}` (kind 0x{kind:04x}) as a whole frame. */\n\
                 export function encode{message_name}(message: {type_name}, seq = 0): Uint8Array {{\n  \
                 return encodeFrame({protocol_name}Kind.{message_name}, seq, codec.encode(\"{type_name}\", message));\n}}\n\n\
                 /** Decodes a `{message_name}` payload, validating it; throws a DecodeError. */\n\
                 export function decode{message_name}(payload: Uint8Array): {type_name} {{\n  \
                 return codec.decode(\"{type_name}\", payload) as {type_name};\n}}\n",
                kind = number(message, "kind", &at)?,
            );
        }
        let _ = writeln!(
            out,
            "/** A decoded `{protocol_name}` message. */\nexport type {protocol_name} =\n  | {};\n\n\
             /** Decodes a frame of `{protocol_name}`; throws a DecodeError for another kind or a bad payload. */\n\
             export function decode{protocol_name}(frame: Frame): {protocol_name} {{\n  switch (frame.kind) {{\n{cases}    default:\n      \
             throw new DecodeError(\"{protocol_name}\", `unknown message kind 0x${{frame.kind.toString(16).padStart(4, \"0\")}}`);\n  }}\n}}\n",
            arms.join("\n  | ")
        );
    }
    Ok(out)
}

/// Fields as the runtime reads them: name, offset and type.
fn strip_fields(fields: &[Value]) -> Vec<Value> {
    fields
        .iter()
        .map(|f| {
            let mut m = Map::new();
            for k in ["name", "offset", "type"] {
                if let Some(v) = f.get(k) {
                    m.insert(k.into(), v.clone());
                }
            }
            Value::Object(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_schema_is_a_typed_error_not_a_panic() {
        for (schema, says) in [
            ("not json", "not JSON"),
            ("{}", "version-1"),
            (
                r#"{"garrison_schema": 1, "name": "x", "layout_hash": "zz"}"#,
                "hex",
            ),
            (
                r#"{"garrison_schema": 1, "name": "x", "layout_hash": "00", "types": {"A": {"kind": "struct", "size": 1, "fields": [{"name": "a", "offset": 0, "type": "nope"}]}}, "protocols": []}"#,
                "unknown type `nope`",
            ),
        ] {
            for generate in [typescript, csharp] {
                let error = generate(schema).expect_err(schema).to_string();
                assert!(error.contains(says), "{schema}: {error}");
            }
        }
    }

    #[test]
    fn the_checked_in_csharp_battle_client_is_generated_from_the_checked_in_schema() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/battle");
        let schema = std::fs::read_to_string(format!("{root}/schema.json")).unwrap();
        let generated = csharp(&schema).unwrap();
        let path = format!("{root}/clients/csharp/Battle.cs");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "{path} is not generated from the schema: regenerate it with `cargo run -p \
             garrison-codegen -- csharp samples/battle/schema.json {path}`"
        );
    }

    #[test]
    fn the_checked_in_battle_client_is_generated_from_the_checked_in_schema() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/battle");
        let schema = std::fs::read_to_string(format!("{root}/schema.json")).unwrap();
        let generated = typescript(&schema).unwrap();
        let path = format!("{root}/clients/typescript/src/battle.ts");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "{path} is not generated from the schema: regenerate it with `cargo run -p \
             garrison-codegen -- typescript samples/battle/schema.json {path}`"
        );
    }
}
