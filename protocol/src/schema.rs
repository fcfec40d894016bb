//! The wire schema: every archived type's layout (sizes, field offsets, enum tags, and how a
//! `Vec`, `Option`, `String` or array is encoded), exported as JSON for clients in other
//! languages, with a layout hash per message, per protocol and per game.
//!
//! Message types derive [`Schema`] beside rkyv's `Archive`; [`messages!`](crate::messages)
//! requires it. Offsets and sizes come from the compiler (`offset_of!` and `size_of` on the
//! archived type), never from a hand-kept table. A [`Document`] collects a game's protocols:
//!
//! ```
//! use garrison_protocol::{messages, schema::Document, Schema};
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, Schema)]
//! pub struct Move { pub dx: i32, pub dy: i32, pub tag: Option<u8> }
//!
//! messages! { pub enum Game { 0x0010 => Move(Move) } }
//!
//! let document = Document::new("demo").protocol::<Game>();
//! let json = document.to_json();
//! assert!(json.contains(r#""name": "Move", "kind": 16"#));
//! // The hash changes with the bytes on the wire, not with names.
//! assert_eq!(document.layout_hash(), Document::new("renamed").protocol::<Game>().layout_hash());
//! ```
//!
//! **Schema evolution:** a layout is frozen once released. A changed layout (a field added,
//! removed, reordered or retyped, a variant added) is a new message kind, or a new version of the
//! whole protocol; the handshake's layout hash refuses a client built against another layout
//! (close code `layout_mismatch`) instead of letting it decode garbage.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{MessageKind, Protocol};

/// A type whose rkyv archived form has a layout this module can describe.
///
/// Derive it (`#[derive(Schema)]`) on every message type and every type a message contains.
pub trait Schema {
    /// Describes the archived form, defining named types in `registry`.
    fn schema_type(registry: &mut Registry) -> Type;
}

/// An archived type, as a field or element sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// A little-endian primitive (`u8`..`u64`, `i8`..`i64`, `f32`, `f64`, `bool`).
    Primitive(Primitive),
    /// `String`: eight bytes, inline up to eight bytes or out of line (see `docs/protocol.md`).
    String,
    /// `Vec<T>` (or a boxed slice): a relative pointer and a length, eight bytes.
    Vec(Box<Type>),
    /// `Option<T>`: a tag byte (0 none, 1 some) then `T`.
    Option(Box<Type>),
    /// `Box<T>`: a relative pointer, four bytes.
    Box(Box<Type>),
    /// `[T; N]`: `N` elements in place.
    Array(Box<Type>, usize),
    /// A tuple: its elements in place, in order.
    Tuple(Vec<Type>),
    /// A struct or enum defined in the [`Registry`] under this name.
    Named(String),
}

/// The primitives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Primitive {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
}

impl Primitive {
    /// The name used in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Primitive::U8 => "u8",
            Primitive::I8 => "i8",
            Primitive::U16 => "u16",
            Primitive::I16 => "i16",
            Primitive::U32 => "u32",
            Primitive::I32 => "i32",
            Primitive::U64 => "u64",
            Primitive::I64 => "i64",
            Primitive::F32 => "f32",
            Primitive::F64 => "f64",
            Primitive::Bool => "bool",
        }
    }

    /// Bytes on the wire.
    pub fn size(self) -> usize {
        match self {
            Primitive::U8 | Primitive::I8 | Primitive::Bool => 1,
            Primitive::U16 | Primitive::I16 => 2,
            Primitive::U32 | Primitive::I32 | Primitive::F32 => 4,
            Primitive::U64 | Primitive::I64 | Primitive::F64 => 8,
        }
    }
}

/// A field of a struct or of an enum variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name (`0`, `1`.. for a tuple field).
    pub name: String,
    /// Byte offset from the start of the archived struct (or of the variant, tag included).
    pub offset: usize,
    /// Its archived type.
    pub ty: Type,
}

impl Field {
    /// A field; `offset` is `None` in an enum variant, where [`Definition::enumeration`] lays
    /// the fields out after the tag.
    pub fn new(name: &str, offset: Option<usize>, ty: Type) -> Self {
        Field {
            name: name.to_owned(),
            offset: offset.unwrap_or(usize::MAX),
            ty,
        }
    }
}

/// A variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The variant's name.
    pub name: String,
    /// Its tag byte.
    pub tag: u8,
    /// Its fields, after the tag.
    pub fields: Vec<Field>,
}

impl Variant {
    /// A variant.
    pub fn new(name: &str, tag: u8, fields: Vec<Field>) -> Self {
        Variant {
            name: name.to_owned(),
            tag,
            fields,
        }
    }
}

/// A named type's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Definition {
    /// A struct: fields at fixed offsets.
    Struct {
        /// Bytes of the archived struct.
        size: usize,
        /// Its fields.
        fields: Vec<Field>,
    },
    /// An enum: a one-byte tag, then the variant's fields.
    Enum {
        /// Bytes of the archived enum (the largest variant, tag included).
        size: usize,
        /// Its variants.
        variants: Vec<Variant>,
    },
}

impl Definition {
    /// A struct of `size` bytes.
    ///
    /// # Panics
    /// If the fields' sizes do not add up to `size`: the unaligned format has no padding, so
    /// a mismatch means a field's [`Schema`] describes another type than the one archived.
    pub fn structure(registry: &Registry, size: usize, fields: Vec<Field>) -> Self {
        let sum: usize = fields.iter().map(|field| registry.size_of(&field.ty)).sum();
        assert_eq!(
            sum, size,
            "schema: the fields' archived sizes ({sum}) do not add up to the struct's ({size})"
        );
        Definition::Struct { size, fields }
    }

    /// An enum of `size` bytes: each variant's fields are laid out after its tag byte, in
    /// declaration order (rkyv's `repr(u8)` archived enums in the unaligned format).
    ///
    /// # Panics
    /// If the largest variant is not `size` bytes (see [`Definition::structure`]).
    pub fn enumeration(registry: &Registry, size: usize, mut variants: Vec<Variant>) -> Self {
        let mut largest = 1;
        for variant in &mut variants {
            let mut offset = 1;
            for field in &mut variant.fields {
                field.offset = offset;
                offset += registry.size_of(&field.ty);
            }
            largest = largest.max(offset);
        }
        assert_eq!(
            largest, size,
            "schema: the largest variant ({largest} bytes) is not the enum's archived size ({size})"
        );
        Definition::Enum { size, variants }
    }

    /// Bytes of the archived type.
    pub fn size(&self) -> usize {
        match self {
            Definition::Struct { size, .. } | Definition::Enum { size, .. } => *size,
        }
    }
}

/// The named types met while describing messages, each defined once.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// Name -> (the Rust type's full path, its definition once known).
    types: BTreeMap<String, (&'static str, Option<Definition>)>,
}

impl Registry {
    /// Defines `T` under `name` (once; a later call only names it), returning its reference.
    ///
    /// # Panics
    /// If two different Rust types are given the same name in one document.
    pub fn define<T: ?Sized>(
        &mut self,
        name: &str,
        define: impl FnOnce(&mut Registry) -> Definition,
    ) -> Type {
        let path = std::any::type_name::<T>();
        if let Some((known, _)) = self.types.get(name) {
            assert_eq!(
                *known, path,
                "schema: two types are both named `{name}` ({known} and {path}); rename one"
            );
            return Type::Named(name.to_owned());
        }
        // Registered before its fields, so a type that contains itself through a pointer ends.
        self.types.insert(name.to_owned(), (path, None));
        let definition = define(self);
        self.types.insert(name.to_owned(), (path, Some(definition)));
        Type::Named(name.to_owned())
    }

    /// The definition of a named type.
    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.types
            .get(name)
            .and_then(|(_, definition)| definition.as_ref())
    }

    /// Every named type, by name.
    pub fn definitions(&self) -> impl Iterator<Item = (&str, &Definition)> {
        self.types
            .iter()
            .filter_map(|(name, (_, definition))| Some((name.as_str(), definition.as_ref()?)))
    }

    /// Bytes `ty` takes in place.
    ///
    /// # Panics
    /// For a named type still being defined that is held in place (not behind a pointer):
    /// such a type would be infinitely large and cannot be archived.
    pub fn size_of(&self, ty: &Type) -> usize {
        match ty {
            Type::Primitive(primitive) => primitive.size(),
            Type::String | Type::Vec(_) => 8,
            Type::Box(_) => 4,
            Type::Option(inner) => 1 + self.size_of(inner),
            Type::Array(inner, len) => self.size_of(inner) * len,
            Type::Tuple(elements) => elements.iter().map(|element| self.size_of(element)).sum(),
            Type::Named(name) => self
                .get(name)
                .unwrap_or_else(|| panic!("schema: `{name}` contains itself in place"))
                .size(),
        }
    }

    /// A canonical text of `ty`'s layout with every named type written out: what the layout
    /// hash is taken over. Names are left out, so renaming a type or field keeps the hash.
    fn canonical(&self, ty: &Type, out: &mut String, open: &mut Vec<String>) {
        match ty {
            Type::Primitive(primitive) => out.push_str(primitive.name()),
            Type::String => out.push_str("string"),
            Type::Vec(inner) => self.wrapped("vec", inner, out, open),
            Type::Option(inner) => self.wrapped("option", inner, out, open),
            Type::Box(inner) => self.wrapped("box", inner, out, open),
            Type::Array(inner, len) => {
                let _ = write!(out, "array{len}");
                self.wrapped("", inner, out, open);
            }
            Type::Tuple(elements) => {
                out.push_str("tuple(");
                for element in elements {
                    self.canonical(element, out, open);
                    out.push(',');
                }
                out.push(')');
            }
            Type::Named(name) => {
                if let Some(depth) = open.iter().position(|known| known == name) {
                    // A recursive reference (through a pointer): name it by depth.
                    let _ = write!(out, "self{depth}");
                    return;
                }
                let Some(definition) = self.get(name) else {
                    return;
                };
                open.push(name.clone());
                match definition {
                    Definition::Struct { size, fields } => {
                        let _ = write!(out, "struct{size}{{");
                        self.canonical_fields(fields, out, open);
                        out.push('}');
                    }
                    Definition::Enum { size, variants } => {
                        let _ = write!(out, "enum{size}{{");
                        for variant in variants {
                            let _ = write!(out, "{}:(", variant.tag);
                            self.canonical_fields(&variant.fields, out, open);
                            out.push_str(");");
                        }
                        out.push('}');
                    }
                }
                open.pop();
            }
        }
    }

    fn wrapped(&self, label: &str, inner: &Type, out: &mut String, open: &mut Vec<String>) {
        out.push_str(label);
        out.push('<');
        self.canonical(inner, out, open);
        out.push('>');
    }

    fn canonical_fields(&self, fields: &[Field], out: &mut String, open: &mut Vec<String>) {
        for field in fields {
            let _ = write!(out, "@{}:", field.offset);
            self.canonical(&field.ty, out, open);
            out.push(';');
        }
    }

    /// The layout hash of `ty` (FNV-1a, 64 bits, over its canonical layout).
    pub fn layout_hash(&self, ty: &Type) -> u64 {
        let mut text = String::new();
        self.canonical(ty, &mut text, &mut Vec::new());
        fnv1a(text.as_bytes())
    }
}

/// FNV-1a, 64 bits: small, stable, and easy to write in any client language.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One message of a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSchema {
    /// Its kind id.
    pub kind: MessageKind,
    /// Its name (the variant's).
    pub name: &'static str,
    /// Its archived type.
    pub ty: Type,
}

/// A protocol's messages, described.
#[derive(Debug, Clone)]
pub struct ProtocolSchema {
    /// The protocol's name (the enum's).
    pub name: &'static str,
    /// Its messages, in declaration order.
    pub messages: Vec<MessageSchema>,
}

/// A game's wire schema: its protocols and every type they use.
#[derive(Debug, Clone)]
pub struct Document {
    name: String,
    registry: Registry,
    protocols: Vec<ProtocolSchema>,
}

impl Document {
    /// A document named `name` (the game) holding Garrison's control protocol (the handshake,
    /// `Close`, `Refused`), which every client speaks; add the game's protocols to it.
    pub fn new(name: &str) -> Self {
        Document {
            name: name.to_owned(),
            registry: Registry::default(),
            protocols: Vec::new(),
        }
        .protocol::<crate::control::Control>()
    }

    /// Adds protocol `P` (in handshake-hash order: add the client's protocol first).
    pub fn protocol<P: Protocol>(mut self) -> Self {
        let messages = P::describe(&mut self.registry);
        self.protocols.push(ProtocolSchema {
            name: P::NAME,
            messages,
        });
        self
    }

    /// The protocols, in the order added.
    pub fn protocols(&self) -> &[ProtocolSchema] {
        &self.protocols
    }

    /// The types.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A message's layout hash: over its kind id and its type's layout.
    pub fn message_hash(&self, message: &MessageSchema) -> u64 {
        let mut text = format!("kind{}=", message.kind.0);
        self.registry
            .canonical(&message.ty, &mut text, &mut Vec::new());
        fnv1a(text.as_bytes())
    }

    /// A protocol's layout hash: over its messages' hashes, in declaration order.
    pub fn protocol_hash(&self, protocol: &ProtocolSchema) -> u64 {
        let mut text = String::new();
        for message in &protocol.messages {
            let _ = write!(text, "{:016x};", self.message_hash(message));
        }
        fnv1a(text.as_bytes())
    }

    /// The game's layout hash, over its protocols' hashes in the order added (the control
    /// protocol first): what a client
    /// sends in its `Hello` and the gateway compares
    /// ([`GatewayConfig::layout`](https://docs.rs/garrison-runtime)).
    pub fn layout_hash(&self) -> u64 {
        let mut text = String::new();
        for protocol in &self.protocols {
            let _ = write!(text, "{:016x};", self.protocol_hash(protocol));
        }
        fnv1a(text.as_bytes())
    }

    /// The document as JSON: deterministic (types by name, fields in order), two-space
    /// indented, one field or message per line so a diff reads well.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        out.push_str("{\n");
        let _ = writeln!(out, "  \"garrison_schema\": 1,");
        let _ = writeln!(out, "  \"name\": {},", json_string(&self.name));
        let _ = writeln!(
            out,
            "  \"format\": {{ \"endian\": \"little\", \"pointer_width\": 32, \"aligned\": false, \"root\": \"end\" }},"
        );
        let _ = writeln!(out, "  \"layout_hash\": \"{:016x}\",", self.layout_hash());
        out.push_str("  \"protocols\": [\n");
        for (index, protocol) in self.protocols.iter().enumerate() {
            let _ = writeln!(out, "    {{");
            let _ = writeln!(out, "      \"name\": {},", json_string(protocol.name));
            let _ = writeln!(
                out,
                "      \"layout_hash\": \"{:016x}\",",
                self.protocol_hash(protocol)
            );
            out.push_str("      \"messages\": [\n");
            for (position, message) in protocol.messages.iter().enumerate() {
                let _ = write!(
                    out,
                    "        {{ \"name\": {}, \"kind\": {}, \"type\": {}, \"size\": {}, \"layout_hash\": \"{:016x}\" }}",
                    json_string(message.name),
                    message.kind.0,
                    self.type_json(&message.ty),
                    self.registry.size_of(&message.ty),
                    self.message_hash(message),
                );
                out.push_str(comma(position, protocol.messages.len()));
            }
            out.push_str("      ]\n");
            let _ = write!(out, "    }}");
            out.push_str(comma(index, self.protocols.len()));
        }
        out.push_str("  ],\n");
        out.push_str("  \"types\": {\n");
        let definitions: Vec<_> = self.registry.definitions().collect();
        for (index, (name, definition)) in definitions.iter().enumerate() {
            let _ = writeln!(out, "    {}: {{", json_string(name));
            match definition {
                Definition::Struct { size, fields } => {
                    let _ = writeln!(out, "      \"kind\": \"struct\",");
                    let _ = writeln!(out, "      \"size\": {size},");
                    out.push_str("      \"fields\": [\n");
                    self.fields_json(fields, "        ", &mut out);
                    out.push_str("      ]\n");
                }
                Definition::Enum { size, variants } => {
                    let _ = writeln!(out, "      \"kind\": \"enum\",");
                    let _ = writeln!(out, "      \"size\": {size},");
                    let _ = writeln!(out, "      \"tag\": \"u8\",");
                    out.push_str("      \"variants\": [\n");
                    for (position, variant) in variants.iter().enumerate() {
                        let _ = write!(
                            out,
                            "        {{ \"name\": {}, \"tag\": {}, \"fields\": [",
                            json_string(&variant.name),
                            variant.tag
                        );
                        if variant.fields.is_empty() {
                            out.push_str("] }");
                        } else {
                            out.push('\n');
                            self.fields_json(&variant.fields, "          ", &mut out);
                            out.push_str("        ] }");
                        }
                        out.push_str(comma(position, variants.len()));
                    }
                    out.push_str("      ]\n");
                }
            }
            let _ = write!(out, "    }}");
            out.push_str(comma(index, definitions.len()));
        }
        out.push_str("  }\n}\n");
        out
    }

    fn fields_json(&self, fields: &[Field], indent: &str, out: &mut String) {
        for (position, field) in fields.iter().enumerate() {
            let _ = write!(
                out,
                "{indent}{{ \"name\": {}, \"offset\": {}, \"size\": {}, \"type\": {} }}",
                json_string(&field.name),
                field.offset,
                self.registry.size_of(&field.ty),
                self.type_json(&field.ty)
            );
            out.push_str(comma(position, fields.len()));
        }
    }

    fn type_json(&self, ty: &Type) -> String {
        match ty {
            Type::Primitive(primitive) => json_string(primitive.name()),
            Type::String => json_string("string"),
            Type::Named(name) => json_string(name),
            Type::Vec(inner) => format!("{{ \"vec\": {} }}", self.type_json(inner)),
            Type::Option(inner) => format!("{{ \"option\": {} }}", self.type_json(inner)),
            Type::Box(inner) => format!("{{ \"box\": {} }}", self.type_json(inner)),
            Type::Array(inner, len) => {
                format!("{{ \"array\": {}, \"len\": {len} }}", self.type_json(inner))
            }
            Type::Tuple(elements) => {
                let elements: Vec<String> = elements
                    .iter()
                    .map(|element| self.type_json(element))
                    .collect();
                format!("{{ \"tuple\": [{}] }}", elements.join(", "))
            }
        }
    }
}

fn comma(position: usize, len: usize) -> &'static str {
    if position + 1 < len { ",\n" } else { "\n" }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

macro_rules! primitives {
    ($($ty:ty => $primitive:ident),+ $(,)?) => {$(
        impl Schema for $ty {
            fn schema_type(_: &mut Registry) -> Type {
                Type::Primitive(Primitive::$primitive)
            }
        }
    )+};
}

primitives! {
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64, bool => Bool,
}

impl Schema for String {
    fn schema_type(_: &mut Registry) -> Type {
        Type::String
    }
}

impl<T: Schema> Schema for Vec<T> {
    fn schema_type(registry: &mut Registry) -> Type {
        Type::Vec(Box::new(T::schema_type(registry)))
    }
}

impl<T: Schema> Schema for Box<[T]> {
    fn schema_type(registry: &mut Registry) -> Type {
        Type::Vec(Box::new(T::schema_type(registry)))
    }
}

impl<T: Schema> Schema for Option<T> {
    fn schema_type(registry: &mut Registry) -> Type {
        Type::Option(Box::new(T::schema_type(registry)))
    }
}

impl<T: Schema> Schema for Box<T> {
    fn schema_type(registry: &mut Registry) -> Type {
        Type::Box(Box::new(T::schema_type(registry)))
    }
}

impl<T: Schema, const N: usize> Schema for [T; N] {
    fn schema_type(registry: &mut Registry) -> Type {
        Type::Array(Box::new(T::schema_type(registry)), N)
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),+ $(,)?) => {$(
        impl<$($name: Schema),+> Schema for ($($name,)+) {
            fn schema_type(registry: &mut Registry) -> Type {
                Type::Tuple(vec![$($name::schema_type(registry)),+])
            }
        }
    )+};
}

tuples!((A, B), (A, B, C), (A, B, C, D));

#[cfg(test)]
mod tests {
    use rkyv::{Archive, Serialize};

    use super::*;
    use crate::{Schema, messages};

    #[derive(Archive, Serialize, Schema)]
    struct Inner {
        a: u16,
        b: Option<u32>,
    }

    #[derive(Archive, Serialize, Schema)]
    #[allow(dead_code)]
    enum Shape {
        Empty,
        Dot(u8),
        Box { w: u32, h: u16 },
    }

    #[derive(Archive, Serialize, Schema)]
    struct Outer {
        id: u64,
        name: String,
        inner: Inner,
        shapes: Vec<Shape>,
        mac: [u8; 3],
    }

    messages! {
        enum Sample { 0x0042 => Outer(Outer) }
    }

    #[test]
    fn offsets_and_sizes_come_from_the_archived_types() {
        let document = Document::new("t").protocol::<Sample>();
        let registry = document.registry();
        let Some(Definition::Struct { size, fields }) = registry.get("Outer") else {
            panic!("Outer is a struct");
        };
        assert_eq!(*size, size_of::<ArchivedOuter>());
        let offsets: Vec<_> = fields
            .iter()
            .map(|field| (field.name.as_str(), field.offset))
            .collect();
        assert_eq!(
            offsets,
            [
                ("id", 0),
                ("name", 8),
                ("inner", 16),
                ("shapes", 23),
                ("mac", 31)
            ]
        );
        let Some(Definition::Enum { size, variants }) = registry.get("Shape") else {
            panic!("Shape is an enum");
        };
        assert_eq!(*size, 7);
        assert_eq!(variants[2].fields[1].offset, 5);
        assert_eq!(
            variants
                .iter()
                .map(|variant| variant.tag)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn the_hash_follows_the_layout_not_the_names() {
        #[derive(Archive, Serialize, Schema)]
        struct Renamed {
            identifier: u64,
        }
        #[derive(Archive, Serialize, Schema)]
        struct Wider {
            identifier: u64,
            more: u8,
        }
        #[derive(Archive, Serialize, Schema)]
        struct Original {
            id: u64,
        }
        messages! { enum A { 1 => Original(Original) } }
        messages! { enum B { 1 => Renamed(Renamed) } }
        messages! { enum C { 1 => Wider(Wider) } }
        #[derive(Archive, Serialize, Schema)]
        struct Again {
            id: u64,
        }
        messages! { enum D { 2 => Again(Again) } }
        let hash = |document: Document| document.layout_hash();
        let a = hash(Document::new("a").protocol::<A>());
        assert_eq!(a, hash(Document::new("b").protocol::<B>()));
        assert_ne!(a, hash(Document::new("c").protocol::<C>()));
        // The kind id is part of the layout a client is built against.
        assert_ne!(a, hash(Document::new("d").protocol::<D>()));
    }

    #[test]
    fn the_json_names_every_type_and_is_stable() {
        let document = Document::new("t").protocol::<Sample>();
        let json = document.to_json();
        for name in [
            "\"Outer\"",
            "\"Inner\"",
            "\"Shape\"",
            "{ \"vec\": \"Shape\" }",
            "{ \"option\": \"u32\" }",
        ] {
            assert!(json.contains(name), "{name} missing from {json}");
        }
        assert_eq!(json, Document::new("t").protocol::<Sample>().to_json());
    }
}
