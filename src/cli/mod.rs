//! The `scopegate` subcommands.
