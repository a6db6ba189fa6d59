//! scopegate: a reverse-proxy authorization gateway for machine APIs.
//!
//! # Layout
//!
//! - [`config`]: TOML → validated, immutable [`config::Config`] (raw shapes, validation, routes).
//! - [`scopes`]: State Backed's scope catalogue, the `org.keys.write` alias, scope sets.
//! - [`keys`]: the live [`keys::KeySet`] and the on-disk per-organization [`keys::store`].
//! - [`pipeline`]: the life of one request — path, route, token, verify, authorize, forward.
//! - [`gateway`]: live state (config snapshot, key set, metrics, readiness) behind `ArcSwap`.
//! - [`reload`]: file watching, polling and SIGHUP → rebuild → swap, with one outcome record.
//! - [`server`]: accept loops, graceful drain; [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`exchange`]: token exchange (`POST /tokens`) and anonymous sessions.
//! - [`error`]: every refusal and the one place it becomes a response; [`metrics`]: collectors.
//! - [`logging`]: the batching log writer; [`clock`]: the per-thread latest clock reading.
//! - [`cli`]: the `scopegate` subcommands, including [`cli::demo`].
//! - `fuzzing` (hidden): the checks behind the fuzz targets (`fuzz/`) and `tests/fuzz_replay.rs`.
//!
//! # The life of one request
//!
//! The handler loads the config snapshot and the key set once, normalizes the path, matches a
//! route, finds and verifies the bearer token, authorizes it into a `Permit`, and only then
//! forwards — streaming — to the route's upstream with verified identity headers. Every
//! refusal is answered locally; the upstream never sees it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod exchange;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod scopes;
pub mod server;
