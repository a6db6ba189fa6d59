//! scopegate's adversarial suite: a real `scopegate serve` process, a recording upstream, and
//! requests an attacker would send — one module per family. Every case asserts the response
//! (status and `code`) and what the upstream saw (nothing, or exactly the authorized request
//! with exactly the key's identity); every table holds allowed controls, so a broken harness
//! cannot pass.
//!
//! Run with `cargo test --test adversarial`.

#[path = "../it/support/mod.rs"]
mod support;

mod harness;

mod exhaustion;
mod framing;
mod headers;
mod jwt;
mod paths;
mod transport;
