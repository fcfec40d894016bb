//! C# codecs: one file for .NET Standard 2.0 / Unity (C# 6, no dependencies): the game's types
//! as classes and enums, and per type a reader, an encoder in two passes (out-of-line data
//! first, then the object in place, as rkyv writes it) and a plain-JSON writer.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use crate::{CodegenError, field as field_of, list, number, text};

/// A type as the schema writes it.
#[derive(Debug, Clone)]
enum Ty {
    Primitive(&'static str),
    String,
    Named(String),
    Vec(Box<Ty>),
    Option(Box<Ty>),
    Box(Box<Ty>),
    Array(Box<Ty>, usize),
    Tuple(Vec<Ty>),
}

struct Field {
    name: String,
    offset: usize,
    ty: Ty,
}

struct Variant {
    name: String,
    tag: u8,
    fields: Vec<Field>,
}

enum Def {
    Struct { size: usize, fields: Vec<Field> },
    Enum { size: usize, variants: Vec<Variant> },
}

const PRIMITIVES: &[(&str, &str, usize)] = &[
    ("u8", "byte", 1),
    ("i8", "sbyte", 1),
    ("bool", "bool", 1),
    ("u16", "ushort", 2),
    ("i16", "short", 2),
    ("u32", "uint", 4),
    ("i32", "int", 4),
    ("f32", "float", 4),
    ("u64", "ulong", 8),
    ("i64", "long", 8),
    ("f64", "double", 8),
];

fn bad(what: impl Into<String>) -> CodegenError {
    CodegenError::Malformed(what.into())
}

fn parse_ty(value: &Value, types: &serde_json::Map<String, Value>) -> Result<Ty, CodegenError> {
    if let Some(name) = value.as_str() {
        if name == "string" {
            return Ok(Ty::String);
        }
        if let Some((primitive, _, _)) = PRIMITIVES.iter().find(|(p, _, _)| *p == name) {
            return Ok(Ty::Primitive(primitive));
        }
        if types.contains_key(name) {
            return Ok(Ty::Named(name.to_owned()));
        }
        return Err(bad(format!("unknown type `{name}`")));
    }
    let inner = |key: &str| -> Result<Option<Box<Ty>>, CodegenError> {
        value
            .get(key)
            .map(|inner| parse_ty(inner, types).map(Box::new))
            .transpose()
    };
    if let Some(inner) = inner("vec")? {
        return Ok(Ty::Vec(inner));
    }
    if let Some(inner) = inner("option")? {
        return Ok(Ty::Option(inner));
    }
    if let Some(inner) = inner("box")? {
        return Ok(Ty::Box(inner));
    }
    if let Some(inner) = inner("array")? {
        let len = value
            .get("len")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("an array without `len`"))?;
        return Ok(Ty::Array(inner, len as usize));
    }
    if let Some(elements) = value.get("tuple").and_then(Value::as_array) {
        let elements: Result<Vec<_>, _> = elements.iter().map(|e| parse_ty(e, types)).collect();
        return Ok(Ty::Tuple(elements?));
    }
    Err(bad(format!("unknown type {value}")))
}

fn parse_fields(
    value: &Value,
    types: &serde_json::Map<String, Value>,
) -> Result<Vec<Field>, CodegenError> {
    list(value, "fields", "a definition")?
        .iter()
        .map(|field| {
            Ok(Field {
                name: text(field, "name", "a field")?.to_owned(),
                offset: number(field, "offset", "a field")? as usize,
                ty: parse_ty(field_of(field, "type", "a field")?, types)?,
            })
        })
        .collect()
}

struct Model {
    defs: BTreeMap<String, Def>,
}

impl Model {
    fn size(&self, ty: &Ty) -> usize {
        match ty {
            Ty::Primitive(name) => PRIMITIVES
                .iter()
                .find(|(p, _, _)| p == name)
                .map_or(0, |p| p.2),
            Ty::String | Ty::Vec(_) => 8,
            Ty::Box(_) => 4,
            Ty::Option(inner) => 1 + self.size(inner),
            Ty::Array(inner, len) => self.size(inner) * len,
            Ty::Tuple(elements) => elements.iter().map(|e| self.size(e)).sum(),
            Ty::Named(name) => match &self.defs[name] {
                Def::Struct { size, .. } | Def::Enum { size, .. } => *size,
            },
        }
    }

    fn is_unit_enum(&self, name: &str) -> bool {
        matches!(&self.defs[name], Def::Enum { variants, .. } if variants.iter().all(|v| v.fields.is_empty()))
    }

    /// A C# value type (so `Option` of it is `T?`).
    fn is_value_type(&self, ty: &Ty) -> bool {
        match ty {
            Ty::Primitive(_) => true,
            Ty::Named(name) => self.is_unit_enum(name),
            _ => false,
        }
    }

    fn cs_type(&self, ty: &Ty) -> String {
        match ty {
            Ty::Primitive(name) => PRIMITIVES
                .iter()
                .find(|(p, _, _)| p == name)
                .map_or("?", |p| p.1)
                .to_owned(),
            Ty::String => "string".into(),
            Ty::Named(name) => name.clone(),
            Ty::Vec(inner) | Ty::Array(inner, _) => format!("{}[]", self.cs_type(inner)),
            Ty::Option(inner) if self.is_value_type(inner) => format!("{}?", self.cs_type(inner)),
            Ty::Option(inner) | Ty::Box(inner) => self.cs_type(inner),
            Ty::Tuple(elements) => format!(
                "Tuple<{}>",
                elements
                    .iter()
                    .map(|e| self.cs_type(e))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// An expression reading `ty` at `at`; `path` is the C# string literal errors name (the
    /// reader is `r`, the depth `d`).
    fn read(&self, ty: &Ty, at: &str, path: &str, level: usize) -> String {
        let p = format!("p{level}");
        match ty {
            Ty::Primitive(name) => {
                let method = match *name {
                    "bool" => "Bool".to_owned(),
                    other => other.to_uppercase(),
                };
                format!("r.{method}({at}, {path})")
            }
            Ty::String => format!("r.Str({at}, {path})"),
            Ty::Named(name) => format!("Read{name}(r, {at}, {path}, d + 1)"),
            Ty::Vec(inner) if matches!(**inner, Ty::Primitive("u8")) => {
                format!("r.Bytes({at}, {path})")
            }
            Ty::Vec(inner) => format!(
                "r.Vec<{}>({at}, {}, {path}, {p} => {})",
                self.cs_type(inner),
                self.size(inner),
                self.read(inner, &p, path, level + 1)
            ),
            Ty::Array(inner, len) if matches!(**inner, Ty::Primitive("u8")) => {
                format!("r.Fixed({at}, {len}, {path})")
            }
            Ty::Array(inner, len) => format!(
                "r.Fixed<{}>({at}, {len}, {}, {path}, {p} => {})",
                self.cs_type(inner),
                self.size(inner),
                self.read(inner, &p, path, level + 1)
            ),
            Ty::Option(inner) => format!(
                "(r.Some({at}, {path}) ? ({}){} : null)",
                self.cs_type(ty),
                self.read(inner, &format!("{at} + 1"), path, level + 1)
            ),
            Ty::Box(inner) => self.read(inner, &format!("r.Box({at}, {path})"), path, level + 1),
            Ty::Tuple(elements) => {
                let mut offset = 0;
                let mut parts = Vec::new();
                for element in elements {
                    parts.push(self.read(element, &format!("{at} + {offset}"), path, level + 1));
                    offset += self.size(element);
                }
                format!("Tuple.Create({})", parts.join(", "))
            }
        }
    }

    /// An expression writing `value`'s out-of-line data and giving its resolver (or null).
    fn deps(&self, ty: &Ty, value: &str, level: usize) -> String {
        let (e, p, res) = (
            format!("e{level}"),
            format!("p{level}"),
            format!("r{level}"),
        );
        match ty {
            Ty::Primitive(_) => "null".into(),
            Ty::Named(name) if self.is_unit_enum(name) => "null".into(),
            Ty::String => format!("wr.DepsStr({value}, w)"),
            Ty::Named(name) => format!("Deps{name}(wr, {value}, w)"),
            Ty::Vec(inner) if matches!(**inner, Ty::Primitive("u8")) => {
                format!("wr.DepsBytes({value}, w)")
            }
            Ty::Vec(inner) => format!(
                "wr.DepsVec<{t}>({value}, {size}, w, {e} => {deps}, ({p}, {e}, {res}) => {{ {place} }})",
                t = self.cs_type(inner),
                size = self.size(inner),
                deps = self.deps(inner, &e, level + 1),
                place = self.place(inner, &p, &e, &res, level + 1),
            ),
            Ty::Array(inner, len) => format!(
                "wr.DepsFixed<{t}>({value}, {len}, w, {e} => {deps})",
                t = self.cs_type(inner),
                deps = self.deps(inner, &e, level + 1),
            ),
            Ty::Option(inner) => {
                let unwrapped = if self.is_value_type(inner) {
                    format!("{value}.Value")
                } else {
                    value.to_owned()
                };
                match self.deps(inner, &unwrapped, level + 1) {
                    // Nothing out of line either way.
                    none if none == "null" => none,
                    deps => format!("({value} == null ? null : {deps})"),
                }
            }
            Ty::Box(inner) => format!(
                "wr.DepsBox<{t}>({value}, {size}, {e} => {deps}, ({p}, {e}, {res}) => {{ {place} }})",
                t = self.cs_type(inner),
                size = self.size(inner),
                deps = self.deps(inner, &e, level + 1),
                place = self.place(inner, &p, &e, &res, level + 1),
            ),
            Ty::Tuple(elements) => {
                let parts: Vec<String> = elements
                    .iter()
                    .enumerate()
                    .map(|(i, element)| {
                        self.deps(element, &format!("{value}.Item{}", i + 1), level + 1)
                    })
                    .collect();
                format!("new object[] {{ {} }}", parts.join(", "))
            }
        }
    }

    /// Statements placing `value` at `at` with its resolver `res`.
    fn place(&self, ty: &Ty, at: &str, value: &str, res: &str, level: usize) -> String {
        let (p, e, r) = (
            format!("q{level}"),
            format!("f{level}"),
            format!("s{level}"),
        );
        match ty {
            Ty::Primitive(name) => {
                let (method, cast) = match *name {
                    "u8" => ("U8", ""),
                    "i8" => ("U8", "(byte)"),
                    "bool" => ("Bool", ""),
                    "u16" => ("U16", ""),
                    "i16" => ("U16", "(ushort)"),
                    "u32" => ("U32", ""),
                    "i32" => ("U32", "(uint)"),
                    "f32" => ("F32", ""),
                    "u64" => ("U64", ""),
                    "i64" => ("U64", "(ulong)"),
                    _ => ("F64", ""),
                };
                format!("wr.{method}({at}, {cast}{value});")
            }
            Ty::Named(name) if self.is_unit_enum(name) => format!(
                "if (!Enum.IsDefined(typeof({name}), {value})) throw new EncodeException(w, \"not a variant of {name}\"); wr.U8({at}, (byte){value});"
            ),
            Ty::String => format!("wr.PlaceStr({at}, {res});"),
            Ty::Named(name) => format!("Place{name}(wr, {at}, {value}, {res}, w);"),
            Ty::Vec(_) => format!("wr.PlaceVec({at}, {res});"),
            Ty::Array(inner, _) if matches!(**inner, Ty::Primitive("u8")) => {
                format!("Buffer.BlockCopy({value}, 0, wr.Buf, {at}, {value}.Length);")
            }
            Ty::Array(inner, _) => format!(
                "wr.PlaceFixed<{t}>({at}, {value}, {size}, {res}, ({p}, {e}, {r}) => {{ {place} }});",
                t = self.cs_type(inner),
                size = self.size(inner),
                place = self.place(inner, &p, &e, &r, level + 1),
            ),
            Ty::Option(inner) => {
                let unwrapped = if self.is_value_type(inner) {
                    format!("{value}.Value")
                } else {
                    value.to_owned()
                };
                format!(
                    "if ({value} != null) {{ wr.U8({at}, 1); {} }}",
                    self.place(inner, &format!("{at} + 1"), &unwrapped, res, level + 1)
                )
            }
            Ty::Box(_) => format!("wr.PlaceBox({at}, {res});"),
            Ty::Tuple(elements) => {
                let mut offset = 0;
                let mut statements = Vec::new();
                for (i, element) in elements.iter().enumerate() {
                    statements.push(self.place(
                        element,
                        &format!("{at} + {offset}"),
                        &format!("{value}.Item{}", i + 1),
                        &format!("{r}[{i}]"),
                        level + 1,
                    ));
                    offset += self.size(element);
                }
                let declare = if statements.iter().any(|s| s.contains(&format!("{r}["))) {
                    format!("var {r} = (object[]){res}; ")
                } else {
                    String::new()
                };
                format!("{{ {declare}{} }}", statements.join(" "))
            }
        }
    }

    /// The statements placing each of `owner`'s fields at its offset, with resolver `rs[i]`.
    fn place_fields(&self, fields: &[Field], owner: &str) -> Vec<String> {
        fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                self.place(
                    &field.ty,
                    &format!("at + {}", field.offset),
                    &format!("{owner}.{}", pascal(&field.name)),
                    &format!("rs[{i}]"),
                    0,
                )
            })
            .collect()
    }

    /// Statements appending `value` as plain JSON to `sb`.
    fn plain(&self, ty: &Ty, value: &str, level: usize) -> String {
        let e = format!("j{level}");
        match ty {
            Ty::Primitive("bool") => format!("sb.Append({value} ? \"true\" : \"false\");"),
            Ty::Primitive("u64" | "i64") => {
                format!("sb.Append('\"').Append(Json.Num({value})).Append('\"');")
            }
            Ty::Primitive(_) => format!("sb.Append(Json.Num({value}));"),
            Ty::String => format!("Json.Str(sb, {value});"),
            Ty::Named(name) if self.is_unit_enum(name) => {
                format!("Json.Str(sb, {value}.ToString());")
            }
            Ty::Named(name) => format!("Plain{name}(sb, {value});"),
            Ty::Vec(inner) | Ty::Array(inner, _) => format!(
                "Json.List<{}>(sb, {value}, {e} => {{ {} }});",
                self.cs_type(inner),
                self.plain(inner, &e, level + 1)
            ),
            Ty::Option(inner) => {
                let unwrapped = if self.is_value_type(inner) {
                    format!("{value}.Value")
                } else {
                    value.to_owned()
                };
                format!(
                    "if ({value} == null) sb.Append(\"null\"); else {{ {} }}",
                    self.plain(inner, &unwrapped, level + 1)
                )
            }
            Ty::Box(inner) => self.plain(inner, value, level),
            Ty::Tuple(elements) => {
                let mut out = "sb.Append('['); ".to_owned();
                for (i, element) in elements.iter().enumerate() {
                    if i > 0 {
                        out.push_str("sb.Append(','); ");
                    }
                    out.push_str(&self.plain(
                        element,
                        &format!("{value}.Item{}", i + 1),
                        level + 1,
                    ));
                    out.push(' ');
                }
                out.push_str("sb.Append(']');");
                out
            }
        }
    }
}

/// `snake_case` to `PascalCase`; a tuple field `0` becomes `_0`.
fn pascal(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_digit()) {
        return format!("_{name}");
    }
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Writes the C# file for `schema` (the JSON `Document::to_json` writes).
///
/// # Errors
/// [`CodegenError`] when the schema is not JSON or not a version-1 Garrison schema.
pub fn csharp(schema: &str) -> Result<String, CodegenError> {
    let schema: Value = serde_json::from_str(schema)?;
    if schema.get("garrison_schema").and_then(Value::as_u64) != Some(1) {
        return Err(bad(
            "not a version-1 Garrison schema (`garrison_schema`: 1)",
        ));
    }
    let name = schema
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no name"))?;
    let hash = schema
        .get("layout_hash")
        .and_then(Value::as_str)
        .filter(|hash| u64::from_str_radix(hash, 16).is_ok())
        .ok_or_else(|| bad("layout_hash is not 16 hex digits"))?;
    let types = schema
        .get("types")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("types is not an object"))?;
    let mut defs = BTreeMap::new();
    for (type_name, definition) in types {
        let size = definition
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("{type_name}: no size")))? as usize;
        let def = match definition.get("kind").and_then(Value::as_str) {
            Some("struct") => Def::Struct {
                size,
                fields: parse_fields(definition, types)?,
            },
            Some("enum") => {
                let variants = list(definition, "variants", type_name)?
                    .iter()
                    .map(|variant| {
                        Ok(Variant {
                            name: text(variant, "name", "a variant")?.to_owned(),
                            tag: u8::try_from(number(variant, "tag", "a variant")?)
                                .map_err(|_| bad("a variant's tag is not one byte"))?,
                            fields: parse_fields(variant, types)?,
                        })
                    })
                    .collect::<Result<Vec<_>, CodegenError>>()?;
                Def::Enum { size, variants }
            }
            other => return Err(bad(format!("{type_name}: unknown kind {other:?}"))),
        };
        defs.insert(type_name.clone(), def);
    }
    let model = Model { defs };
    let namespace = format!("Garrison.{}", pascal(name));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by garrison-codegen from the `{name}` wire schema (layout {hash}). Do not edit:\n\
         // regenerate with `garrison-codegen csharp SCHEMA.json OUT.cs`.\n\
         using System;\nusing System.Globalization;\nusing System.Text;\n\nnamespace {namespace}\n{{"
    );
    out.push_str(include_str!("runtime.cs"));

    // The types.
    for (type_name, def) in &model.defs {
        out.push('\n');
        match def {
            Def::Struct { size, fields } => {
                let _ = writeln!(
                    out,
                    "    /// <summary>`{type_name}` ({size} bytes archived).</summary>"
                );
                let _ = writeln!(out, "    public sealed class {type_name}\n    {{");
                for field in fields {
                    let _ = writeln!(
                        out,
                        "        public {} {};",
                        model.cs_type(&field.ty),
                        pascal(&field.name)
                    );
                }
                out.push_str("    }\n");
            }
            Def::Enum { size, variants } if model.is_unit_enum(type_name) => {
                let _ = writeln!(
                    out,
                    "    /// <summary>`{type_name}` ({size} byte archived).</summary>"
                );
                let _ = writeln!(out, "    public enum {type_name} : byte\n    {{");
                for variant in variants {
                    let _ = writeln!(out, "        {} = {},", variant.name, variant.tag);
                }
                out.push_str("    }\n");
            }
            Def::Enum { size, variants } => {
                let _ = writeln!(
                    out,
                    "    /// <summary>`{type_name}` ({size} bytes archived): one subclass per variant.</summary>"
                );
                let _ = writeln!(out, "    public abstract class {type_name}\n    {{");
                for variant in variants {
                    let _ = writeln!(
                        out,
                        "        public sealed class {} : {type_name}\n        {{",
                        variant.name
                    );
                    for field in &variant.fields {
                        let _ = writeln!(
                            out,
                            "            public {} {};",
                            model.cs_type(&field.ty),
                            pascal(&field.name)
                        );
                    }
                    out.push_str("        }\n");
                }
                out.push_str("    }\n");
            }
        }
    }

    // The codecs.
    let _ = writeln!(
        out,
        "\n    /// <summary>The `{name}` codecs.</summary>\n    public static class Codec\n    {{\n        \
         /// <summary>The layout hash this file was generated for: send it in `Hello.Layout`.</summary>\n        \
         public const ulong LayoutHash = 0x{hash}UL;\n"
    );
    for (type_name, def) in &model.defs {
        let unit = model.is_unit_enum(type_name);
        // Reader.
        let _ = writeln!(
            out,
            "        internal static {type_name} Read{type_name}(Reader r, int at, string w, int d)\n        {{\n            r.Depth(d, w);"
        );
        match def {
            Def::Struct { size, fields } => {
                let _ = writeln!(
                    out,
                    "            r.Check(at, {size}, w);\n            var v = new {type_name}();"
                );
                for field in fields {
                    let _ = writeln!(
                        out,
                        "            v.{} = {};",
                        pascal(&field.name),
                        model.read(
                            &field.ty,
                            &format!("at + {}", field.offset),
                            &format!("\"{type_name}.{}\"", field.name),
                            0
                        )
                    );
                }
                out.push_str("            return v;\n        }\n");
            }
            Def::Enum { size, variants } => {
                let _ = writeln!(
                    out,
                    "            r.Check(at, {size}, w);\n            switch (r.U8(at, w))\n            {{"
                );
                for variant in variants {
                    if unit {
                        let _ = writeln!(
                            out,
                            "                case {}: return {type_name}.{};",
                            variant.tag, variant.name
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "                case {}:\n                {{\n                    var v = new {type_name}.{}();",
                            variant.tag, variant.name
                        );
                        for field in &variant.fields {
                            let _ = writeln!(
                                out,
                                "                    v.{} = {};",
                                pascal(&field.name),
                                model.read(
                                    &field.ty,
                                    &format!("at + {}", field.offset),
                                    &format!("\"{type_name}.{}.{}\"", variant.name, field.name),
                                    0
                                )
                            );
                        }
                        out.push_str("                    return v;\n                }\n");
                    }
                }
                let _ = writeln!(
                    out,
                    "                default: throw new DecodeException(w, \"{type_name} has no variant with tag \" + r.U8(at, w));\n            }}\n        }}"
                );
            }
        }
        if unit {
            // Unit enums are placed inline by their fields' owners; they need only JSON.
            let _ = writeln!(out);
            continue;
        }
        // Deps, Place, Plain.
        let _ = writeln!(
            out,
            "\n        internal static object Deps{type_name}(Writer wr, {type_name} v, string w)\n        {{\n            Writer.Need(v, w);"
        );
        match def {
            Def::Struct { fields, .. } => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|field| model.deps(&field.ty, &format!("v.{}", pascal(&field.name)), 0))
                    .collect();
                let _ = writeln!(
                    out,
                    "            return new object[] {{ {} }};\n        }}",
                    parts.join(", ")
                );
                let statements = model.place_fields(fields, "v");
                let _ = writeln!(
                    out,
                    "\n        internal static void Place{type_name}(Writer wr, int at, {type_name} v, object res, string w)\n        {{"
                );
                if statements.iter().any(|statement| statement.contains("rs[")) {
                    out.push_str("            var rs = (object[])res;\n");
                }
                for statement in statements {
                    let _ = writeln!(out, "            {statement}");
                }
                out.push_str("        }\n");
                let _ = writeln!(
                    out,
                    "\n        internal static void Plain{type_name}(StringBuilder sb, {type_name} v)\n        {{\n            sb.Append('{{');"
                );
                for (i, field) in fields.iter().enumerate() {
                    let comma = if i > 0 { "," } else { "" };
                    let _ = writeln!(
                        out,
                        "            sb.Append(\"{comma}\\\"{}\\\":\");",
                        field.name
                    );
                    let _ = writeln!(
                        out,
                        "            {}",
                        model.plain(&field.ty, &format!("v.{}", pascal(&field.name)), 0)
                    );
                }
                out.push_str("            sb.Append('}');\n        }\n");
            }
            Def::Enum { variants, .. } => {
                for variant in variants {
                    let class = format!("{type_name}.{}", variant.name);
                    let parts: Vec<String> = variant
                        .fields
                        .iter()
                        .map(|field| {
                            model.deps(&field.ty, &format!("x.{}", pascal(&field.name)), 0)
                        })
                        .collect();
                    let parts = parts.join(", ");
                    let cast = if parts.contains("x.") {
                        format!("var x = ({class})v; ")
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "            if (v is {class}) {{ {cast}return new object[] {{ {parts} }}; }}"
                    );
                }
                let _ = writeln!(
                    out,
                    "            throw new EncodeException(w, \"not a variant of {type_name}\");\n        }}"
                );
                let _ = writeln!(
                    out,
                    "\n        internal static void Place{type_name}(Writer wr, int at, {type_name} v, object res, string w)\n        {{"
                );
                for variant in variants {
                    let class = format!("{type_name}.{}", variant.name);
                    let statements = model.place_fields(&variant.fields, "x");
                    let _ = writeln!(out, "            if (v is {class})\n            {{");
                    if statements.iter().any(|statement| statement.contains("x.")) {
                        let _ = writeln!(out, "                var x = ({class})v;");
                    }
                    if statements.iter().any(|statement| statement.contains("rs[")) {
                        out.push_str("                var rs = (object[])res;\n");
                    }
                    let _ = writeln!(out, "                wr.U8(at, {});", variant.tag);
                    for statement in statements {
                        let _ = writeln!(out, "                {statement}");
                    }
                    out.push_str("                return;\n            }\n");
                }
                out.push_str("        }\n");
                let _ = writeln!(
                    out,
                    "\n        internal static void Plain{type_name}(StringBuilder sb, {type_name} v)\n        {{"
                );
                for variant in variants {
                    let class = format!("{type_name}.{}", variant.name);
                    let cast = if variant.fields.is_empty() {
                        String::new()
                    } else {
                        format!("                var x = ({class})v;\n")
                    };
                    let _ = writeln!(
                        out,
                        "            if (v is {class})\n            {{\n{cast}                sb.Append(\"{{\\\"kind\\\":\\\"{}\\\"\");",
                        variant.name
                    );
                    for field in &variant.fields {
                        let key = if field.name.chars().all(|c| c.is_ascii_digit()) {
                            format!("_{}", field.name)
                        } else {
                            field.name.clone()
                        };
                        let _ = writeln!(out, "                sb.Append(\",\\\"{key}\\\":\");");
                        let _ = writeln!(
                            out,
                            "                {}",
                            model.plain(&field.ty, &format!("x.{}", pascal(&field.name)), 0)
                        );
                    }
                    out.push_str(
                        "                sb.Append('}');\n                return;\n            }\n",
                    );
                }
                out.push_str("        }\n");
            }
        }
    }

    // Per message: Encode (a whole frame) and Decode (a payload); per protocol: Decode(frame).
    let protocols = schema
        .get("protocols")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no protocols"))?;
    let mut plain_cases = String::new();
    let mut payload_cases = String::new();
    for type_name in model.defs.keys() {
        if model.is_unit_enum(type_name) {
            let _ = writeln!(
                plain_cases,
                "            if (value is {type_name}) {{ var sb = new StringBuilder(); Json.Str(sb, value.ToString()); return sb.ToString(); }}"
            );
        } else {
            let _ = writeln!(
                plain_cases,
                "            if (value is {type_name}) {{ var sb = new StringBuilder(); Plain{type_name}(sb, ({type_name})value); return sb.ToString(); }}"
            );
        }
    }
    for protocol in protocols {
        let protocol_name = protocol
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a protocol without a name"))?;
        let messages = protocol
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("a protocol without messages"))?;
        let mut cases = String::new();
        for message in messages {
            let message_name = message
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a message without a name"))?;
            let kind = message
                .get("kind")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("a message without a kind"))?;
            let ty = message
                .get("type")
                .and_then(Value::as_str)
                .filter(|t| model.defs.contains_key(*t) && !model.is_unit_enum(t))
                .ok_or_else(|| bad(format!("{protocol_name}.{message_name}: a message's type must be a struct or data enum")))?;
            let size = model.size(&Ty::Named(ty.to_owned()));
            let _ = writeln!(
                out,
                "\n        /// <summary>`{message_name}` (kind 0x{kind:04x}) as a whole frame.</summary>\n        \
                 public static byte[] Encode{message_name}({ty} message, uint seq = 0)\n        {{\n            \
                 return Wire.EncodeFrame(0x{kind:04x}, seq, Payload{ty}(message));\n        }}\n\n        \
                 /// <summary>Decodes a `{message_name}` payload, validating it; throws a DecodeException.</summary>\n        \
                 public static {ty} Decode{message_name}(byte[] payload)\n        {{\n            \
                 if (payload.Length < {size}) throw new DecodeException(\"{ty}\", \"payload of \" + payload.Length + \" bytes is shorter than the {size}-byte root\");\n            \
                 return Read{ty}(new Reader(payload), payload.Length - {size}, \"{ty}\", 0);\n        }}"
            );
            let _ = writeln!(
                cases,
                "                case 0x{kind:04x}: return Decode{message_name}(frame.Payload);"
            );
        }
        let _ = writeln!(
            out,
            "\n        /// <summary>Decodes a frame of `{protocol_name}` to its message object; throws a DecodeException for another kind.</summary>\n        \
             public static object Decode{protocol_name}(Frame frame)\n        {{\n            switch (frame.Kind)\n            {{\n{cases}                \
             default: throw new DecodeException(\"{protocol_name}\", \"unknown message kind 0x\" + frame.Kind.ToString(\"x4\"));\n            }}\n        }}"
        );
    }
    for (type_name, def) in &model.defs {
        if model.is_unit_enum(type_name) {
            continue;
        }
        let size = match def {
            Def::Struct { size, .. } | Def::Enum { size, .. } => *size,
        };
        let _ = writeln!(
            out,
            "\n        /// <summary>A `{type_name}` as a payload (root last), in rkyv's bytes.</summary>\n        \
             public static byte[] Payload{type_name}({type_name} value)\n        {{\n            \
             var wr = new Writer();\n            var res = Deps{type_name}(wr, value, \"{type_name}\");\n            \
             int at = wr.Reserve({size});\n            Place{type_name}(wr, at, value, res, \"{type_name}\");\n            return wr.ToArray();\n        }}"
        );
        let _ = writeln!(
            payload_cases,
            "            if (value is {type_name}) return Payload{type_name}(({type_name})value);"
        );
    }
    let _ = writeln!(
        out,
        "\n        /// <summary>Any generated type's value as plain JSON (u64 as decimal strings), for logs and fixtures.</summary>\n        \
         public static string ToPlain(object value)\n        {{\n{plain_cases}            throw new ArgumentException(\"not a `{name}` type: \" + value);\n        }}\n\n        \
         /// <summary>Any message's payload, whatever its type.</summary>\n        \
         public static byte[] Payload(object value)\n        {{\n{payload_cases}            throw new ArgumentException(\"not a `{name}` message type: \" + value);\n        }}\n    }}\n}}"
    );
    Ok(out)
}
