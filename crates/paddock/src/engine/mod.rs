//! The system engine: containers from the image store, run through an OCI runtime, each
//! watched by its own monitor process (the shim), driven by the daemon.

pub mod api;
pub mod bundle;
pub mod client;
pub mod daemon;
pub mod docker;
pub mod exec;
pub mod reaper;
pub mod runtime;
pub mod shim;
pub mod spec;
pub mod time;
pub mod tty;
