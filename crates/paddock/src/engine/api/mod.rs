//! The Docker Engine API of the system engine (`system-docker`): the subset the stock docker
//! CLI needs for version, info, ps, inspect, create, run, start, stop, restart, kill, rm, logs,
//! wait, exec, rename, images, pull, load, save, tag and rmi.
//!
//! - [`Backend`] is what the engine implements (one method per operation);
//! - [`ApiServer`] serves it on a unix socket: hand-rolled HTTP/1.1 (parsing by `httparse`)
//!   on std threads, so streamed answers (`wait`, `logs -f`, pull progress) go out as they are
//!   produced and `attach`/`exec` can take the connection over;
//! - [`types`] holds the JSON shapes.
//!
//! Anything else answers 501 "not supported by the system engine: ..." in Docker's error shape.

pub mod backend;
pub mod error;
mod http;
mod routes;
pub mod server;
pub mod stream;
pub mod types;

pub use backend::{
    AttachOptions, Backend, ContainerListOptions, Filters, ImageListOptions, ImageRemoveOptions,
    LogChunk, LogStream, LogsOptions, ProgressStream, PullOptions, RemoveOptions, Session,
    StopOptions, TarWriter, TtySize, WaitCondition, Waiter, container_matches, image_matches,
};
pub use error::{ApiError, ServerError};
pub use server::{ApiServer, ServerHandle};
pub use stream::{HijackedIo, HijackedStdin, OutputStream, OutputWriter, StreamKind};

/// The API version served (what docker 25 speaks; the CLI negotiates down to it).
pub const API_VERSION: &str = "1.44";
/// The oldest API version accepted, as dockerd.
pub const MIN_API_VERSION: &str = "1.24";
