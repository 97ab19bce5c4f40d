//! `#[derive(Module)]`: writes `nn::Module` (and `nn::module::StateField`) for a struct from its
//! fields, so that no parameter or buffer can be left out of a model's lists.
//!
//! Every named field is one of:
//! - state: a `Var` (a parameter), a `Buffer`, a sub-module, or an `Option` / `Vec` of those
//!   (a `Vec` names its items `field.0`, `field.1`, ...). Listed under the field's name, or
//!   under `#[module(name = "...")]` when the checkpoint format names it otherwise;
//! - `#[module(flatten)]`: a sub-module whose own names go directly under this module's prefix
//!   (a group of layers that the checkpoint format does not nest);
//! - `#[module(skip)]`: configuration, not state (sizes, rates, flags).
//!
//! A field that is none of these does not compile (its type does not implement `StateField`),
//! so a new field forces a decision instead of silently going untrained and unsaved.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

enum Listing {
    Named(String),
    Flatten,
    Skip,
}

fn listing(field: &syn::Field) -> syn::Result<Listing> {
    let ident = field.ident.as_ref().expect("named field").to_string();
    let mut out = Listing::Named(ident);
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                out = Listing::Skip;
            } else if meta.path.is_ident("flatten") {
                out = Listing::Flatten;
            } else if meta.path.is_ident("name") {
                out = Listing::Named(meta.value()?.parse::<LitStr>()?.value());
            } else {
                return Err(meta.error("expected `skip`, `flatten` or `name = \"...\"`"));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(&input, "#[derive(Module)] works on structs").to_compile_error().into();
    };
    let Fields::Named(fields) = &data.fields else {
        return syn::Error::new_spanned(&input, "#[derive(Module)] needs named fields").to_compile_error().into();
    };
    let mut params = vec![];
    let mut buffers = vec![];
    for field in &fields.named {
        let ident = field.ident.as_ref().expect("named field");
        let at = match listing(field) {
            Ok(Listing::Skip) => continue,
            Ok(Listing::Flatten) => quote! { prefix.to_string() },
            Ok(Listing::Named(n)) => quote! { ::nn::module::join(prefix, #n) },
            Err(e) => return e.to_compile_error().into(),
        };
        params.push(quote! { ::nn::module::StateField::field_parameters(&self.#ident, &#at, out); });
        buffers.push(quote! { ::nn::module::StateField::field_buffers(&self.#ident, &#at, out); });
    }
    quote! {
        impl #impl_generics ::nn::Module for #name #ty_generics #where_clause {
            fn parameters(&self, prefix: &str, out: &mut Vec<(String, ::nn::module::Var)>) {
                #(#params)*
            }
            fn buffers(&self, prefix: &str, out: &mut Vec<(String, ::nn::Buffer)>) {
                #(#buffers)*
            }
        }
        impl #impl_generics ::nn::module::StateField for #name #ty_generics #where_clause {
            fn field_parameters(&self, name: &str, out: &mut Vec<(String, ::nn::module::Var)>) {
                ::nn::Module::parameters(self, name, out)
            }
            fn field_buffers(&self, name: &str, out: &mut Vec<(String, ::nn::Buffer)>) {
                ::nn::Module::buffers(self, name, out)
            }
        }
    }
    .into()
}
