//! Watching a decision step by step, for `scopegate explain`.
//!
//! The pipeline reports each step to a [`Trace`]. Serving passes `()`, whose methods are empty
//! and whose detail closures are never called, so the request path pays nothing; `explain`
//! passes [`Steps`] and prints them. Both run the very same functions.

/// Receives the steps of a decision.
pub trait Trace {
    /// Records a step; `detail` is only called when someone listens.
    fn step(&mut self, name: &'static str, detail: impl FnOnce() -> String);
}

impl Trace for () {
    #[inline(always)]
    fn step(&mut self, _name: &'static str, _detail: impl FnOnce() -> String) {}
}

/// The steps of one decision, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<(&'static str, String)>);

impl Trace for Steps {
    fn step(&mut self, name: &'static str, detail: impl FnOnce() -> String) {
        self.0.push((name, detail()));
    }
}
