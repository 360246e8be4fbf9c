//! The [`Backend`] trait: what the API server needs from the engine, one method per operation.
//!
//! Conventions for implementors:
//! - `id` arguments are what the client typed: a full id, a unique id prefix or a name (without
//!   the leading `/`). Resolve them, and answer [`ApiError::no_such_container`] otherwise.
//! - Names in [`ContainerSummary::names`] and [`ContainerInspect::name`] carry Docker's leading
//!   `/`.
//! - Return [`ApiError::not_modified`] from start/stop when there is nothing to do (Docker's
//!   304), [`ApiError::conflict`] for name clashes, images in use, killing a stopped container.
//! - Methods that cannot apply to the system engine answer [`ApiError::not_supported`], which is
//!   also the default of every method, so a backend can grow one operation at a time.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::SystemTime;

use super::error::ApiError;
use super::stream::{HijackedIo, StreamKind};
use super::types::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspect, ContainerSummary,
    ExecCreateBody, ExecInspect, ExecStartBody, IdResponse, ImageDeleteItem, ImageInspect,
    ImageSummary, Info, ProgressMessage, Version, WaitResponse,
};

/// Docker list filters: `{"label": ["a=b", "c"], "status": ["running"]}`.
pub type Filters = BTreeMap<String, Vec<String>>;

/// `GET /containers/json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerListOptions {
    /// Include stopped containers.
    pub all: bool,
    /// Only the `limit` most recently created (None = no limit).
    pub limit: Option<usize>,
    /// Filters; [`container_matches`] implements the common ones.
    pub filters: Filters,
}

/// Stop and restart options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOptions {
    /// Seconds to wait after the stop signal before SIGKILL; None = the container's
    /// `StopTimeout` or the engine default; negative = wait forever.
    pub timeout: Option<i64>,
    /// Overrides the container's stop signal.
    pub signal: Option<String>,
}

/// `DELETE /containers/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// Kill a running container first.
    pub force: bool,
    /// Remove its anonymous volumes.
    pub volumes: bool,
}

/// What `POST /containers/{id}/wait` waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitCondition {
    /// Until the container is not running (returns at once if it is not).
    #[default]
    NotRunning,
    /// Until the next exit, even if the container has not started yet (`docker run` registers
    /// this before it starts the container).
    NextExit,
    /// Until the container is removed (`docker run --rm`).
    Removed,
}

/// Blocks until the wait condition holds; answered to the client as `{"StatusCode": N}`.
pub type Waiter = Box<dyn FnOnce() -> Result<WaitResponse, ApiError> + Send>;

/// `GET /containers/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogsOptions {
    /// Keep streaming new output until the container stops (or the client goes away).
    pub follow: bool,
    /// Only the last N lines (None = all).
    pub tail: Option<u64>,
    pub stdout: bool,
    pub stderr: bool,
    /// Prefix each line with an RFC 3339 nano timestamp and a space (the backend does it, as it
    /// knows when each line was written).
    pub timestamps: bool,
    /// Only output written at or after this time.
    pub since: Option<SystemTime>,
    /// Only output written before this time.
    pub until: Option<SystemTime>,
}

/// A chunk of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: StreamKind,
    pub data: Vec<u8>,
}

/// The logs of a container: chunks in order; the iterator blocks while following and ends when
/// the container stops. It is dropped when the client goes away.
pub struct LogStream {
    /// The container has a tty: the server sends chunks raw rather than multiplexed.
    pub tty: bool,
    pub chunks: Box<dyn Iterator<Item = io::Result<LogChunk>> + Send>,
}

/// `POST /containers/{id}/attach`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Stream live output (and input).
    pub stream: bool,
    /// Replay the logs first.
    pub logs: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The key sequence that detaches, e.g. "ctrl-p,ctrl-q" (None = the default).
    pub detach_keys: Option<String>,
}

/// A tty size (`?h=..&w=..`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtySize {
    pub height: u16,
    pub width: u16,
}

/// A hijacked attach or exec stream. The server answers the upgrade (101) and then calls
/// [`Session::run`] on the connection's thread; when `run` returns the connection is closed.
pub trait Session: Send {
    /// True when output is a raw tty stream; false for the multiplexed frame format.
    fn tty(&self) -> bool;

    /// Pumps the client's stdin to the process and the process output to the client until the
    /// process exits (or, for attach, the client detaches or goes away). For an exec, record the
    /// exit code before returning: the docker CLI asks `GET /exec/{id}/json` right after the
    /// stream ends.
    fn run(self: Box<Self>, io: HijackedIo);
}

/// `GET /images/json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageListOptions {
    /// Include intermediate images.
    pub all: bool,
    pub filters: Filters,
}

/// `POST /images/create?fromImage=..&tag=..`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// The repository. The docker CLI sends it fully qualified and without the tag
    /// (`docker pull alpine:3.19` sends `docker.io/library/alpine` and tag `3.19`); other
    /// clients may send `alpine:3.19` or `alpine@sha256:..` in one piece.
    pub from_image: String,
    /// The tag or digest parameter, if any (the CLI splits `name:tag`).
    pub tag: Option<String>,
    pub platform: Option<String>,
    /// The `X-Registry-Auth` header (base64url JSON), if any.
    pub registry_auth: Option<String>,
}

/// Progress messages of a pull or load. Errors after the response started go in-band as
/// [`ProgressMessage::error`].
pub type ProgressStream = Box<dyn Iterator<Item = ProgressMessage> + Send>;

/// Writes an image tarball (`docker save`); errors abort the transfer.
pub type TarWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// `DELETE /images/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRemoveOptions {
    pub force: bool,
    pub no_prune: bool,
}

/// The engine behind the Docker API. See the module documentation for conventions.
#[allow(unused_variables)]
pub trait Backend: Send + Sync + 'static {
    /// `/_ping`: Ok when the engine can serve.
    fn ping(&self) -> Result<(), ApiError> {
        Ok(())
    }

    /// `GET /version` ([`Version::system_engine`] is a good start; the server sets the API
    /// versions).
    fn version(&self) -> Result<Version, ApiError> {
        Ok(Version::system_engine(env!("CARGO_PKG_VERSION"), ""))
    }

    /// `GET /info`.
    fn info(&self) -> Result<Info, ApiError> {
        Err(ApiError::not_supported("info"))
    }

    /// `GET /containers/json`.
    fn container_list(
        &self,
        opts: &ContainerListOptions,
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        Err(ApiError::not_supported("listing containers"))
    }

    /// `POST /containers/create?name=..` (the server has validated the name and that an image
    /// is given). Answer 404 [`ApiError::no_such_image`] for a missing image: `docker run` then
    /// pulls it and retries.
    fn container_create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, ApiError> {
        Err(ApiError::not_supported("creating containers"))
    }

    /// `GET /containers/{id}/json`.
    fn container_inspect(&self, id: &str) -> Result<ContainerInspect, ApiError> {
        Err(ApiError::no_such_container(id))
    }

    /// `POST /containers/{id}/start`.
    fn container_start(&self, id: &str) -> Result<(), ApiError> {
        Err(ApiError::not_supported("starting containers"))
    }

    /// `POST /containers/{id}/stop`: stop signal, then SIGKILL after the timeout. Returns once
    /// the container has stopped.
    fn container_stop(&self, id: &str, opts: &StopOptions) -> Result<(), ApiError> {
        Err(ApiError::not_supported("stopping containers"))
    }

    /// `POST /containers/{id}/restart`.
    fn container_restart(&self, id: &str, opts: &StopOptions) -> Result<(), ApiError> {
        Err(ApiError::not_supported("restarting containers"))
    }

    /// `POST /containers/{id}/kill?signal=..` (None = SIGKILL). Signals come as names
    /// (`SIGHUP`, `HUP`) or numbers.
    fn container_kill(&self, id: &str, signal: Option<&str>) -> Result<(), ApiError> {
        Err(ApiError::not_supported("killing containers"))
    }

    /// `DELETE /containers/{id}`: 409 for a running container without `force`.
    fn container_remove(&self, id: &str, opts: &RemoveOptions) -> Result<(), ApiError> {
        Err(ApiError::not_supported("removing containers"))
    }

    /// `POST /containers/{id}/wait`: check the container (404) and register the wait now; the
    /// returned [`Waiter`] blocks until the condition holds, after the response headers went
    /// out.
    fn container_wait(&self, id: &str, condition: WaitCondition) -> Result<Waiter, ApiError> {
        Err(ApiError::not_supported("waiting for containers"))
    }

    /// `GET /containers/{id}/logs`.
    fn container_logs(&self, id: &str, opts: &LogsOptions) -> Result<LogStream, ApiError> {
        Err(ApiError::not_supported("container logs"))
    }

    /// `POST /containers/{id}/rename?name=..` (the server has validated the new name).
    fn container_rename(&self, id: &str, new_name: &str) -> Result<(), ApiError> {
        Err(ApiError::not_supported("renaming containers"))
    }

    /// `POST /containers/{id}/attach`: check and prepare; the stream is handed over in
    /// [`Session::run`].
    fn container_attach(
        &self,
        id: &str,
        opts: &AttachOptions,
    ) -> Result<Box<dyn Session>, ApiError> {
        Err(ApiError::not_supported("attaching to containers"))
    }

    /// `POST /containers/{id}/resize?h=..&w=..`.
    fn container_resize(&self, id: &str, size: TtySize) -> Result<(), ApiError> {
        Err(ApiError::not_supported("resizing a container tty"))
    }

    /// `POST /containers/{id}/exec`: 409 if the container is not running.
    fn exec_create(&self, container: &str, body: ExecCreateBody) -> Result<IdResponse, ApiError> {
        Err(ApiError::not_supported("exec"))
    }

    /// `POST /exec/{id}/start`: with `Detach`, start the process and return None; otherwise
    /// return the session, which starts the process in [`Session::run`].
    fn exec_start(
        &self,
        exec_id: &str,
        opts: &ExecStartBody,
    ) -> Result<Option<Box<dyn Session>>, ApiError> {
        Err(ApiError::not_supported("exec"))
    }

    /// `GET /exec/{id}/json`.
    fn exec_inspect(&self, exec_id: &str) -> Result<ExecInspect, ApiError> {
        Err(ApiError::no_such_exec(exec_id))
    }

    /// `POST /exec/{id}/resize?h=..&w=..`.
    fn exec_resize(&self, exec_id: &str, size: TtySize) -> Result<(), ApiError> {
        Err(ApiError::not_supported("resizing an exec tty"))
    }

    /// `GET /images/json`.
    fn image_list(&self, opts: &ImageListOptions) -> Result<Vec<ImageSummary>, ApiError> {
        Err(ApiError::not_supported("listing images"))
    }

    /// `GET /images/{name}/json`.
    fn image_inspect(&self, name: &str) -> Result<ImageInspect, ApiError> {
        Err(ApiError::no_such_image(name))
    }

    /// `POST /images/create?fromImage=..`: fail early (bad reference) with an error, later
    /// failures in-band.
    fn image_pull(&self, opts: &PullOptions) -> Result<ProgressStream, ApiError> {
        Err(ApiError::not_supported("pulling images"))
    }

    /// `POST /images/load`: `tar` is the request body (a `docker save` tarball).
    fn image_load(&self, tar: &mut dyn Read, quiet: bool) -> Result<ProgressStream, ApiError> {
        Err(ApiError::not_supported("loading images"))
    }

    /// `GET /images/get?names=..`: check the names (404) and return the tarball writer.
    fn image_save(&self, names: &[String]) -> Result<TarWriter, ApiError> {
        Err(ApiError::not_supported("saving images"))
    }

    /// `POST /images/{name}/tag?repo=..&tag=..` (tag None = "latest"). The docker CLI sends
    /// `repo` fully qualified (`docker tag busybox base:1` sends `docker.io/library/base`).
    fn image_tag(&self, source: &str, repo: &str, tag: Option<&str>) -> Result<(), ApiError> {
        Err(ApiError::not_supported("tagging images"))
    }

    /// `DELETE /images/{name}`: 409 when a container uses it and not `force`.
    fn image_remove(
        &self,
        name: &str,
        opts: &ImageRemoveOptions,
    ) -> Result<Vec<ImageDeleteItem>, ApiError> {
        Err(ApiError::not_supported("removing images"))
    }
}

/// Whether a container passes Docker's list filters `id`, `name`, `label` (`key` or
/// `key=value`), `status` and `ancestor` (image name as listed). Unknown filter keys do not
/// match anything (the server rejects them before calling the backend).
pub fn container_matches(c: &ContainerSummary, filters: &Filters) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || match key.as_str() {
                "id" => values.iter().any(|v| c.id.starts_with(v.as_str())),
                "name" => values.iter().any(|v| {
                    c.names.iter().any(|n| {
                        n.trim_start_matches('/')
                            .contains(v.trim_start_matches('/'))
                    })
                }),
                // Every label filter must match (as in Docker).
                "label" => values.iter().all(|v| match v.split_once('=') {
                    Some((k, val)) => c.labels.get(k).is_some_and(|x| x == val),
                    None => c.labels.contains_key(v.as_str()),
                }),
                "status" => values.contains(&c.state),
                "ancestor" => values.iter().any(|v| *v == c.image || *v == c.image_id),
                _ => false,
            }
    })
}

/// The container filter keys [`container_matches`] understands.
pub const CONTAINER_FILTERS: &[&str] = &["id", "name", "label", "status", "ancestor"];

/// The image filter keys the server accepts; [`image_matches`] implements them.
pub const IMAGE_FILTERS: &[&str] = &["label", "reference", "dangling"];

/// Whether an image passes the `label`, `reference` (exact or `name` without tag) and
/// `dangling` filters.
pub fn image_matches(i: &ImageSummary, filters: &Filters) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || match key.as_str() {
                "label" => values.iter().all(|v| match v.split_once('=') {
                    Some((k, val)) => i.labels.get(k).is_some_and(|x| x == val),
                    None => i.labels.contains_key(v.as_str()),
                }),
                "reference" => values.iter().any(|v| {
                    i.repo_tags
                        .iter()
                        .any(|t| t == v || t.rsplit_once(':').is_some_and(|(n, _)| n == v))
                }),
                "dangling" => values.iter().any(|v| {
                    let dangling = i.repo_tags.is_empty();
                    (v == "true" || v == "1") == dangling
                }),
                _ => false,
            }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn label_and_status_filters() {
        let mut c = ContainerSummary {
            id: "abcdef".into(),
            names: vec!["/ntp".into()],
            state: "running".into(),
            ..ContainerSummary::default()
        };
        c.labels
            .insert("io.rancher.os.scope".into(), "system".into());
        let mut f = Filters::new();
        f.insert("label".into(), vec!["io.rancher.os.scope=system".into()]);
        assert!(container_matches(&c, &f));
        f.insert("status".into(), vec!["exited".into()]);
        assert!(!container_matches(&c, &f));
        f.insert("status".into(), vec!["running".into()]);
        f.insert("label".into(), vec!["io.rancher.os.scope=user".into()]);
        assert!(!container_matches(&c, &f));
        let mut f = Filters::new();
        f.insert("name".into(), vec!["nt".into()]);
        f.insert("id".into(), vec!["abc".into()]);
        assert!(container_matches(&c, &f));
    }
}
