//! scopegate's integration tests: one binary, real sockets on 127.0.0.1, a recording upstream.

mod support;

mod cli;
mod config_examples;
mod dashboard;
mod errors;
mod exchange;
mod explain;
mod forwarding;
mod h1_server;
mod identity;
mod keys_api;
mod kubernetes;
mod limits;
mod pool;
mod reload;
mod replicas;
mod shutdown;
mod store_stress;
mod streaming;
mod tls;
mod token_cache;
mod upstreams;
mod websocket;
