//! A `tracing` layer that keeps every span's name and fields, for asserting trace attributes
//! without an exporter.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

/// One captured span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedSpan {
    /// The span's name.
    pub name: String,
    /// Its fields as text, including those recorded after creation.
    pub fields: BTreeMap<String, String>,
    /// The name of its parent span, if it has one.
    pub parent: Option<String>,
}

/// The spans a [`CaptureLayer`] saw, in creation order.
#[derive(Clone, Default, Debug)]
pub struct Captured(Arc<Mutex<Vec<CapturedSpan>>>);

impl Captured {
    /// Every span with this name.
    pub fn named(&self, name: &str) -> Vec<CapturedSpan> {
        self.0
            .lock()
            .expect("capture lock")
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }
}

/// The layer; install it with `tracing_subscriber::registry().with(layer)`.
#[derive(Clone, Default, Debug)]
pub struct CaptureLayer {
    /// What it captured.
    pub captured: Captured,
}

struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut span = CapturedSpan {
            name: attributes.metadata().name().to_owned(),
            ..CapturedSpan::default()
        };
        attributes.record(&mut Fields(&mut span.fields));
        span.parent = context
            .span(id)
            .and_then(|registered| registered.parent())
            .map(|parent| parent.name().to_owned());
        let mut spans = self.captured.0.lock().expect("capture lock");
        spans.push(span);
        if let Some(registered) = context.span(id) {
            registered.extensions_mut().insert(Index(spans.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        let Some(registered) = context.span(id) else {
            return;
        };
        let extensions = registered.extensions();
        let Some(Index(index)) = extensions.get::<Index>() else {
            return;
        };
        let mut spans = self.captured.0.lock().expect("capture lock");
        values.record(&mut Fields(&mut spans[*index].fields));
    }
}
