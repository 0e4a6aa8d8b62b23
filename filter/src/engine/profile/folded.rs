//! A small table that every worker marks in its own view on the request path
//! (no host call) and folds into one shared record from its ticks: at most
//! one compare-and-swap a second, the record merged with what the worker
//! marked since, every worker's marks read back. The releases' adopters
//! (`adoption`) and the routes' callers (`breadth`) are two such tables.

use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::record;
use std::cell::{Cell, Ref, RefCell};

const SYNC_MS: u64 = 1_000;

/// A table that folds: merged as of a time, empty when nothing is marked,
/// and its shared record's bytes.
pub trait Mergeable: Clone + Default {
    fn merge(&mut self, other: &Self, now_ms: u64);
    fn is_empty(&self) -> bool;
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// One worker's view of the table, and what it marked since its last fold.
pub struct Folded<T> {
    key: String,
    view: RefCell<T>,
    pending: RefCell<T>,
    synced_ms: Cell<u64>,
}

impl<T: Mergeable> Folded<T> {
    pub fn new(key: String) -> Self {
        Folded { key, view: RefCell::new(T::default()), pending: RefCell::new(T::default()), synced_ms: Cell::new(0) }
    }

    /// Request path: `mark` in this worker's view and in what it folds next.
    pub fn mark(&self, mark: impl Fn(&mut T)) {
        mark(&mut self.view.borrow_mut());
        mark(&mut self.pending.borrow_mut());
    }

    /// Request path: this worker's view, every worker's as of the last fold.
    pub fn view(&self) -> Ref<'_, T> {
        self.view.borrow()
    }

    /// Tick: folds this worker's marks into the shared record and reads
    /// everyone's back (at most once a `SYNC_MS`). A failed fold keeps the
    /// marks for the next tick. Returns whether the view took a record in.
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<bool, StoreError> {
        if now_ms < self.synced_ms.get().saturating_add(SYNC_MS) {
            return Ok(false);
        }
        self.synced_ms.set(now_ms);
        let pending = self.pending.borrow().clone();
        let merged = if pending.is_empty() {
            match store.get(&self.key)? {
                Some((bytes, _)) => T::decode(&bytes).unwrap_or_default(),
                None => return Ok(false),
            }
        } else {
            let merged = record::update(store, metrics, Table::Profile, &self.key, |bytes| {
                let mut shared = bytes.and_then(T::decode).unwrap_or_default();
                shared.merge(&pending, now_ms);
                (Some(shared.encode()), shared)
            })?;
            *self.pending.borrow_mut() = T::default();
            merged
        };
        self.view.borrow_mut().merge(&merged, now_ms);
        Ok(true)
    }
}
