//! The application's handlers: `on`/`off` listeners by event name and the older `onMessage`
//! and `onStateChange` callbacks, called so that a handler that throws is reported (with
//! `console.error` and an `error` event), never lost.

use std::cell::RefCell;

use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::errors::bad_request;

/// The events of `on` and `off` (the `TagcastEventMap` TypeScript interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message routed to the connection: `{message, tags, pos}`.
    Message,
    /// A state change: `{state, code, reason}`.
    State,
    /// A reconnect that resumed: `{recovered, missed}`.
    Resumed,
    /// The connection's tags changed (`setTags`, or the server's `POST /retag`): `{tags, pos}`.
    Tags,
    /// A handler threw: `{error, event}`.
    Error,
}

impl Kind {
    /// The event named `name`; a `bad_request` naming the known ones otherwise.
    pub(crate) fn parse(name: &str) -> Result<Kind, JsValue> {
        Ok(match name {
            "message" => Kind::Message,
            "state" => Kind::State,
            "resumed" => Kind::Resumed,
            "tags" => Kind::Tags,
            "error" => Kind::Error,
            _ => {
                return Err(bad_request(format!(
                    "unknown event {name:?}: use message, state, resumed, tags or error"
                )))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::State => "state",
            Kind::Resumed => "resumed",
            Kind::Tags => "tags",
            Kind::Error => "error",
        }
    }
}

/// The handlers of one client. Kept apart from the connection's state, in their own cell, so
/// that a handler may call back into the client (send, close, on, off) while events are emitted.
#[derive(Default)]
pub(crate) struct Handlers {
    /// `on` listeners, in the order they were added.
    listeners: Vec<(Kind, Function)>,
    /// `onMessage` callbacks, called with `(message, tags, pos)`.
    pub(crate) on_message: Vec<Function>,
    /// `onStateChange` callbacks, called with `(state)`.
    pub(crate) on_state: Vec<Function>,
}

impl Handlers {
    /// Adds a listener; one already there for this event is not added twice (as with the DOM's
    /// `addEventListener`).
    pub(crate) fn add(&mut self, kind: Kind, handler: Function) {
        if !self.has(kind, &handler) {
            self.listeners.push((kind, handler));
        }
    }

    /// Removes a listener, if it is there.
    pub(crate) fn remove(&mut self, kind: Kind, handler: &JsValue) {
        self.listeners
            .retain(|(k, f)| !(*k == kind && same(f, handler)));
    }

    fn has(&self, kind: Kind, handler: &Function) -> bool {
        self.listeners
            .iter()
            .any(|(k, f)| *k == kind && same(f, handler))
    }

    /// The listeners of `kind`, and the older callbacks that take the same event.
    fn of(&self, kind: Kind) -> (Vec<Function>, Vec<Function>) {
        let listeners = self.listeners.iter().filter(|(k, _)| *k == kind);
        let legacy = match kind {
            Kind::Message => self.on_message.clone(),
            Kind::State => self.on_state.clone(),
            Kind::Resumed | Kind::Tags | Kind::Error => Vec::new(),
        };
        (listeners.map(|(_, f)| f.clone()).collect(), legacy)
    }
}

/// Whether `handler` is `f` (JavaScript's `===`).
fn same(f: &Function, handler: &JsValue) -> bool {
    let f: &JsValue = f;
    f == handler
}

/// Emits an event: the `on` listeners of `kind` get `event`, the older callbacks get
/// `legacy_args`. Nothing is borrowed while a handler runs.
pub(crate) fn emit(
    handlers: &RefCell<Handlers>,
    kind: Kind,
    event: &JsValue,
    legacy_args: &[JsValue],
) {
    let (listeners, legacy) = handlers.borrow().of(kind);
    if !legacy.is_empty() {
        let args: Array = legacy_args.iter().collect();
        for callback in legacy {
            if let Err(error) = callback.apply(&JsValue::NULL, &args) {
                report(handlers, kind, &error);
            }
        }
    }
    for listener in listeners {
        // A listener removed by an earlier one during this event is not called (as in the DOM).
        if !handlers.borrow().has(kind, &listener) {
            continue;
        }
        if let Err(error) = listener.call1(&JsValue::NULL, event) {
            report(handlers, kind, &error);
        }
    }
}

/// A handler of `kind` threw `error`: `console.error`, then an `error` event (for a throwing
/// `error` listener, `console.error` only).
fn report(handlers: &RefCell<Handlers>, kind: Kind, error: &JsValue) {
    let what = JsValue::from(format!("tagcast: a '{}' handler threw:", kind.as_str()));
    web_sys::console::error_2(&what, error);
    if kind != Kind::Error {
        let event = object(&[("error", error), ("event", &kind.as_str().into())]);
        emit(handlers, Kind::Error, &event, &[]);
    }
}

/// A plain object with these properties.
pub(crate) fn object(fields: &[(&str, &JsValue)]) -> JsValue {
    let object = Object::new();
    for (name, value) in fields {
        let _ = Reflect::set(&object, &JsValue::from_str(name), value);
    }
    object.into()
}
