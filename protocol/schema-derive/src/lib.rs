//! `#[derive(Schema)]`: describes the rkyv archived layout of a message type (sizes, field
//! offsets, enum tags) so `garrison_protocol::schema` can export it for clients in other
//! languages. Use it through `garrison_protocol::Schema` (or the runtime's prelude).

use proc_macro::TokenStream;
use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{
    Data, DeriveInput, Error, Expr, Fields, Ident, Lit, parse_macro_input, spanned::Spanned,
};

/// Derives `Schema` for a struct or enum that also derives rkyv's `Archive`.
///
/// Struct field offsets and sizes are read from the archived type itself (`offset_of!`,
/// `size_of`); an enum's variant fields follow its one-byte tag in declaration order (rkyv's
/// `repr(u8)` archived enums, in the unaligned format), which the generated code checks against
/// the archived type's size. Generic types and fields archived `with` a wrapper are refused.
#[proc_macro_derive(Schema)]
pub fn derive_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The path the generated code reaches the protocol crate by.
fn protocol_path() -> TokenStream2 {
    let found = crate_name("garrison-protocol").or_else(|_| {
        crate_name("garrison-runtime")
            .map(|found| match found {
                FoundCrate::Itself => FoundCrate::Name("garrison_runtime".into()),
                other => other,
            })
            .map(|found| match found {
                FoundCrate::Name(name) => FoundCrate::Name(format!("{name}::protocol")),
                itself => itself,
            })
    });
    match found {
        // The protocol crate names itself (`extern crate self as garrison_protocol`), so the
        // same path works in its library, its tests and its benches.
        Ok(FoundCrate::Itself) | Err(_) => quote!(::garrison_protocol),
        Ok(FoundCrate::Name(name)) => {
            let segments = name
                .split("::")
                .map(|segment| Ident::new(segment, Span::call_site()));
            quote!(::#(#segments)::*)
        }
    }
}

fn refuse_with(attrs: &[syn::Attribute]) -> Result<(), Error> {
    for attr in attrs {
        if attr.path().is_ident("rkyv") {
            let mut with = None;
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("with") {
                    with = Some(meta.path.span());
                }
                // Skip the value (if any) so parsing continues.
                if meta.input.peek(syn::Token![=]) {
                    let _: Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _group: proc_macro2::Group = meta.input.parse()?;
                }
                Ok(())
            });
            if let Some(span) = with {
                return Err(Error::new(
                    span,
                    "Schema cannot describe a field archived `with` a wrapper: its archived type is not its own",
                ));
            }
        }
    }
    Ok(())
}

fn field_list(
    protocol: &TokenStream2,
    fields: &Fields,
    offsets: bool,
) -> Result<Vec<TokenStream2>, Error> {
    let mut out = Vec::new();
    for (index, field) in fields.iter().enumerate() {
        refuse_with(&field.attrs)?;
        let ty = &field.ty;
        let (name, member) = match &field.ident {
            Some(ident) => (ident.to_string(), quote!(#ident)),
            None => {
                let member = syn::Index::from(index);
                (index.to_string(), quote!(#member))
            }
        };
        let offset = if offsets {
            quote!(::core::option::Option::Some(
                ::core::mem::offset_of!(__Archived, #member)
            ))
        } else {
            quote!(::core::option::Option::None)
        };
        out.push(quote! {
            #protocol::schema::Field::new(
                #name,
                #offset,
                <#ty as #protocol::schema::Schema>::schema_type(registry),
            )
        });
    }
    Ok(out)
}

fn expand(input: &DeriveInput) -> Result<TokenStream2, Error> {
    if !input.generics.params.is_empty() {
        return Err(Error::new(
            input.generics.span(),
            "Schema cannot describe a generic type: a message on the wire has one layout",
        ));
    }
    let protocol = protocol_path();
    let name = &input.ident;
    let name_text = name.to_string();
    let definition = match &input.data {
        Data::Struct(data) => {
            let fields = field_list(&protocol, &data.fields, true)?;
            quote! {
                let fields = ::std::vec![#(#fields),*];
                #protocol::schema::Definition::structure(
                    registry,
                    ::core::mem::size_of::<__Archived>(),
                    fields,
                )
            }
        }
        Data::Enum(data) => {
            let mut variants = Vec::new();
            let mut next: u64 = 0;
            for variant in &data.variants {
                let tag = match &variant.discriminant {
                    None => next,
                    Some((_, Expr::Lit(literal))) => match &literal.lit {
                        Lit::Int(int) => int.base10_parse::<u64>()?,
                        other => {
                            return Err(Error::new(
                                other.span(),
                                "Schema: a discriminant must be an integer literal",
                            ));
                        }
                    },
                    Some((_, other)) => {
                        return Err(Error::new(
                            other.span(),
                            "Schema: a discriminant must be an integer literal",
                        ));
                    }
                };
                if tag > u64::from(u8::MAX) {
                    return Err(Error::new(
                        variant.span(),
                        "Schema: rkyv archives enum tags as one byte",
                    ));
                }
                next = tag + 1;
                let tag = tag as u8;
                let variant_name = variant.ident.to_string();
                let fields = field_list(&protocol, &variant.fields, false)?;
                variants.push(quote! {
                    #protocol::schema::Variant::new(#variant_name, #tag, ::std::vec![#(#fields),*])
                });
            }
            quote! {
                let variants = ::std::vec![#(#variants),*];
                #protocol::schema::Definition::enumeration(
                    registry,
                    ::core::mem::size_of::<__Archived>(),
                    variants,
                )
            }
        }
        Data::Union(data) => {
            return Err(Error::new(
                data.union_token.span(),
                "Schema cannot describe a union",
            ));
        }
    };
    Ok(quote! {
        #[automatically_derived]
        impl #protocol::schema::Schema for #name {
            fn schema_type(
                registry: &mut #protocol::schema::Registry,
            ) -> #protocol::schema::Type {
                registry.define::<Self>(#name_text, |registry| {
                    #[allow(dead_code)]
                    type __Archived = <#name as #protocol::rkyv::Archive>::Archived;
                    #definition
                })
            }
        }
    })
}
