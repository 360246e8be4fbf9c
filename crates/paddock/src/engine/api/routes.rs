//! Request routing: Docker API paths to [`Backend`] calls.

use std::io::{self, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{
    AttachOptions, Backend, CONTAINER_FILTERS, ContainerListOptions, Filters, IMAGE_FILTERS,
    ImageListOptions, ImageRemoveOptions, LogsOptions, PullOptions, RemoveOptions, Session,
    StopOptions, TtySize, WaitCondition,
};
use super::error::ApiError;
use super::http::{BodyReader, MAX_JSON_BODY, Query, RequestHead};
use super::stream::{StreamKind, encode_output};
use super::types::{ContainerCreateBody, ExecCreateBody, ExecStartBody, WaitError, WaitResponse};
use super::{API_VERSION, MIN_API_VERSION};

pub(crate) const JSON: &str = "application/json";
pub(crate) const RAW_STREAM: &str = "application/vnd.docker.raw-stream";
pub(crate) const MUX_STREAM: &str = "application/vnd.docker.multiplexed-stream";

/// Writes a streamed body (chunked; every write is sent at once).
pub(crate) type StreamBody = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()>>;

/// What a request is answered with.
pub(crate) enum Reply {
    /// A complete body.
    Full {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Headers now, body as it comes.
    Stream {
        status: u16,
        content_type: &'static str,
        body: StreamBody,
    },
    /// Take over the connection.
    Hijack {
        session: Box<dyn Session>,
        upgrade: bool,
    },
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply::Full {
                    status,
                    content_type: JSON,
                    body,
                }
            }
            Err(e) => Reply::from(ApiError::internal(format!("cannot encode answer: {e}"))),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply::Full {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
        }
    }

    pub(crate) fn status(&self) -> u16 {
        match self {
            Reply::Full { status, .. } | Reply::Stream { status, .. } => *status,
            Reply::Hijack { upgrade: true, .. } => 101,
            Reply::Hijack { upgrade: false, .. } => 200,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        if e.status == 304 {
            return Reply::empty(304);
        }
        Reply::Full {
            status: e.status,
            content_type: JSON,
            body: e.body(),
        }
    }
}

/// Parses the `/vX.Y` prefix: the API version asked for and the rest of the path.
/// A requested API version, `(major, minor)`.
pub(crate) type ApiVersion = (u32, u32);

pub(crate) fn split_version(path: &str) -> Result<(Option<ApiVersion>, &str), ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok((None, path));
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let Some((major, minor)) = ver.split_once('.') else {
        return Ok((None, path));
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Ok((None, path));
    };
    let v = (major, minor);
    if v > parse_version(API_VERSION) {
        return Err(ApiError::bad_parameter(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if v < parse_version(MIN_API_VERSION) {
        return Err(ApiError::bad_parameter(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, \
             please upgrade your client to a newer version"
        )));
    }
    Ok((Some(v), tail))
}

fn parse_version(v: &str) -> (u32, u32) {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Routes one request. `body` is positioned at the request body.
pub(crate) fn dispatch(backend: &dyn Backend, head: &RequestHead, body: &mut BodyReader) -> Reply {
    match route(backend, head, body) {
        Ok(reply) => reply,
        Err(e) => Reply::from(e),
    }
}

fn route(
    backend: &dyn Backend,
    head: &RequestHead,
    body: &mut BodyReader,
) -> Result<Reply, ApiError> {
    let (_version, path) = split_version(&head.path)?;
    let q = &head.query;
    let method = head.method.as_str();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => {
            backend.ping()?;
            Ok(Reply::Full {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: b"OK".to_vec(),
            })
        }
        ("GET", ["version"]) => {
            let mut v = backend.version()?;
            v.api_version = API_VERSION.to_string();
            v.min_api_version = MIN_API_VERSION.to_string();
            Ok(Reply::json(200, &v))
        }
        ("GET", ["info"]) => Ok(Reply::json(200, &backend.info()?)),

        ("GET", ["containers", "json"]) => {
            let filters = filters(q, CONTAINER_FILTERS)?;
            let opts = ContainerListOptions {
                all: q.bool("all", false),
                limit: q.int::<i64>("limit")?.and_then(|l| usize::try_from(l).ok()),
                filters,
            };
            Ok(Reply::json(200, &backend.container_list(&opts)?))
        }
        ("POST", ["containers", "create"]) => {
            let name = match q.get("name") {
                None | Some("") => None,
                Some(n) => Some(valid_name(n)?),
            };
            let raw = body.read_limited(MAX_JSON_BODY)?;
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::bad_parameter(
                    "config cannot be empty in order to create a container",
                ));
            }
            let create: ContainerCreateBody = parse_json(&raw)?;
            if create.config.image.is_empty() {
                return Err(ApiError::bad_parameter("no image specified"));
            }
            Ok(Reply::json(201, &backend.container_create(name, create)?))
        }
        ("GET", ["containers", id, "json"]) => {
            Ok(Reply::json(200, &backend.container_inspect(id)?))
        }
        ("POST", ["containers", id, "start"]) => {
            if q.get("checkpoint").is_some_and(|c| !c.is_empty()) {
                return Err(ApiError::not_supported("checkpoints"));
            }
            backend.container_start(id)?;
            Ok(Reply::empty(204))
        }
        ("POST", ["containers", id, "stop"]) => {
            backend.container_stop(id, &stop_options(q)?)?;
            Ok(Reply::empty(204))
        }
        ("POST", ["containers", id, "restart"]) => {
            backend.container_restart(id, &stop_options(q)?)?;
            Ok(Reply::empty(204))
        }
        ("POST", ["containers", id, "kill"]) => {
            let signal = q.get("signal").filter(|s| !s.is_empty());
            if let Some(s) = signal {
                valid_signal(s)?;
            }
            backend.container_kill(id, signal)?;
            Ok(Reply::empty(204))
        }
        ("DELETE", ["containers", id]) => {
            if q.bool("link", false) {
                return Err(ApiError::not_supported("container links"));
            }
            let opts = RemoveOptions {
                force: q.bool("force", false),
                volumes: q.bool("v", false),
            };
            backend.container_remove(id, &opts)?;
            Ok(Reply::empty(204))
        }
        ("POST", ["containers", id, "wait"]) => {
            let condition = match q.get("condition").unwrap_or("") {
                "" | "not-running" => WaitCondition::NotRunning,
                "next-exit" => WaitCondition::NextExit,
                "removed" => WaitCondition::Removed,
                other => {
                    return Err(ApiError::bad_parameter(format!(
                        "invalid condition: {other:?}"
                    )));
                }
            };
            let waiter = backend.container_wait(id, condition)?;
            Ok(Reply::Stream {
                status: 200,
                content_type: JSON,
                body: Box::new(move |w: &mut dyn Write| {
                    let answer = waiter().unwrap_or_else(|e| WaitResponse {
                        status_code: -1,
                        error: Some(WaitError { message: e.message }),
                    });
                    let mut bytes = serde_json::to_vec(&answer).map_err(io::Error::other)?;
                    bytes.push(b'\n');
                    w.write_all(&bytes)
                }),
            })
        }
        ("GET", ["containers", id, "logs"]) => {
            let opts = LogsOptions {
                follow: q.bool("follow", false),
                tail: match q.get("tail") {
                    None | Some("") | Some("all") => None,
                    // Docker treats a negative tail as "all".
                    Some(t) if t.starts_with('-') => None,
                    Some(_) => q.int::<u64>("tail")?,
                },
                stdout: q.bool("stdout", false),
                stderr: q.bool("stderr", false),
                timestamps: q.bool("timestamps", false),
                since: timestamp(q, "since")?,
                until: timestamp(q, "until")?,
            };
            if !opts.stdout && !opts.stderr {
                return Err(ApiError::bad_parameter(
                    "Bad parameters: you must choose at least one stream",
                ));
            }
            let logs = backend.container_logs(id, &opts)?;
            let tty = logs.tty;
            let mut chunks = logs.chunks;
            Ok(Reply::Stream {
                status: 200,
                content_type: if tty { RAW_STREAM } else { MUX_STREAM },
                body: Box::new(move |w: &mut dyn Write| {
                    for chunk in chunks.by_ref() {
                        let chunk = chunk?;
                        let wanted = match chunk.stream {
                            StreamKind::Stdout => opts.stdout,
                            StreamKind::Stderr => opts.stderr,
                            StreamKind::Stdin => false,
                        };
                        if wanted && !chunk.data.is_empty() {
                            w.write_all(&encode_output(tty, chunk.stream, &chunk.data))?;
                        }
                    }
                    Ok(())
                }),
            })
        }
        ("POST", ["containers", id, "rename"]) => {
            let name = q
                .get("name")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_parameter("missing name"))?;
            backend.container_rename(id, valid_name(name)?)?;
            Ok(Reply::empty(204))
        }
        ("POST", ["containers", id, "attach"]) => {
            let opts = AttachOptions {
                stream: q.bool("stream", false),
                logs: q.bool("logs", false),
                stdin: q.bool("stdin", false),
                stdout: q.bool("stdout", false),
                stderr: q.bool("stderr", false),
                detach_keys: q
                    .get("detachKeys")
                    .filter(|k| !k.is_empty())
                    .map(String::from),
            };
            let session = backend.container_attach(id, &opts)?;
            Ok(Reply::Hijack {
                session,
                upgrade: head.wants_upgrade(),
            })
        }
        ("POST", ["containers", id, "resize"]) => {
            backend.container_resize(id, tty_size(q)?)?;
            Ok(Reply::empty(200))
        }
        ("POST", ["containers", id, "exec"]) => {
            let raw = body.read_limited(MAX_JSON_BODY)?;
            let exec: ExecCreateBody = parse_json(&raw)?;
            if exec.cmd.is_empty() {
                return Err(ApiError::bad_parameter("No exec command specified"));
            }
            Ok(Reply::json(201, &backend.exec_create(id, exec)?))
        }
        ("POST", ["exec", id, "start"]) => {
            let raw = body.read_limited(MAX_JSON_BODY)?;
            let start: ExecStartBody = if raw.iter().all(u8::is_ascii_whitespace) {
                ExecStartBody::default()
            } else {
                parse_json(&raw)?
            };
            match backend.exec_start(id, &start)? {
                None => Ok(Reply::empty(200)),
                Some(session) => Ok(Reply::Hijack {
                    session,
                    upgrade: head.wants_upgrade(),
                }),
            }
        }
        ("GET", ["exec", id, "json"]) => Ok(Reply::json(200, &backend.exec_inspect(id)?)),
        ("POST", ["exec", id, "resize"]) => {
            backend.exec_resize(id, tty_size(q)?)?;
            Ok(Reply::empty(200))
        }

        ("GET", ["images", "json"]) => {
            let mut filters = filters(q, IMAGE_FILTERS)?;
            // The pre-1.25 `filter=name` parameter.
            if let Some(f) = q.get("filter").filter(|f| !f.is_empty()) {
                filters
                    .entry("reference".to_string())
                    .or_default()
                    .push(f.to_string());
            }
            let opts = ImageListOptions {
                all: q.bool("all", false),
                filters,
            };
            Ok(Reply::json(200, &backend.image_list(&opts)?))
        }
        ("POST", ["images", "create"]) => {
            if q.get("fromSrc").is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::not_supported("importing images (docker import)"));
            }
            let from_image = q
                .get("fromImage")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::bad_parameter("missing fromImage"))?;
            let opts = PullOptions {
                from_image: from_image.to_string(),
                tag: q.get("tag").filter(|t| !t.is_empty()).map(String::from),
                platform: q
                    .get("platform")
                    .filter(|p| !p.is_empty())
                    .map(String::from),
                registry_auth: head.header("x-registry-auth").map(String::from),
            };
            progress(backend.image_pull(&opts)?)
        }
        ("POST", ["images", "load"]) => {
            let quiet = q.bool("quiet", false);
            let messages = backend.image_load(body, quiet)?;
            progress(messages)
        }
        ("GET", ["images", "get"]) => save(backend, &q.get_all("names")),
        ("GET", ["images", rest @ .., "get"]) if !rest.is_empty() => {
            save(backend, &[rest.join("/")])
        }
        ("GET", ["images", rest @ .., "json"]) if !rest.is_empty() => {
            Ok(Reply::json(200, &backend.image_inspect(&rest.join("/"))?))
        }
        ("POST", ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            let repo = q.get("repo").filter(|r| !r.is_empty()).ok_or_else(|| {
                ApiError::bad_parameter("repository name must have at least one component")
            })?;
            let tag = q.get("tag").filter(|t| !t.is_empty());
            backend.image_tag(&rest.join("/"), repo, tag)?;
            Ok(Reply::empty(201))
        }
        ("DELETE", ["images", rest @ ..])
            if !rest.is_empty() && rest.iter().all(|s| !s.is_empty()) =>
        {
            let opts = ImageRemoveOptions {
                force: q.bool("force", false),
                no_prune: q.bool("noprune", false),
            };
            Ok(Reply::json(
                200,
                &backend.image_remove(&rest.join("/"), &opts)?,
            ))
        }
        _ => Err(ApiError::not_supported(format!("{method} {path}"))),
    }
}

fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::bad_parameter(format!("invalid JSON: {e}")))
}

fn progress(messages: super::backend::ProgressStream) -> Result<Reply, ApiError> {
    Ok(Reply::Stream {
        status: 200,
        content_type: JSON,
        body: Box::new(move |w: &mut dyn Write| {
            for m in messages {
                let mut bytes = serde_json::to_vec(&m).map_err(io::Error::other)?;
                bytes.extend_from_slice(b"\r\n");
                w.write_all(&bytes)?;
            }
            Ok(())
        }),
    })
}

fn save(backend: &dyn Backend, names: &[String]) -> Result<Reply, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_parameter("no image names given"));
    }
    let writer = backend.image_save(names)?;
    Ok(Reply::Stream {
        status: 200,
        content_type: "application/x-tar",
        body: Box::new(move |w: &mut dyn Write| writer(w)),
    })
}

/// Docker's list filters: `{"key": {"value": true}}` or the older `{"key": ["value"]}`. Keys
/// outside `known` answer 501 (Docker has them; we do not).
fn filters(q: &Query, known: &[&str]) -> Result<Filters, ApiError> {
    let Some(raw) = q.get("filters").filter(|f| !f.is_empty()) else {
        return Ok(Filters::new());
    };
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::bad_parameter(format!("invalid filter: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::bad_parameter("invalid filter: not an object"));
    };
    let mut out = Filters::new();
    for (key, values) in map {
        let list: Vec<String> = match values {
            serde_json::Value::Object(m) => m
                .into_iter()
                .filter(|(_, on)| on.as_bool().unwrap_or(false))
                .map(|(k, _)| k)
                .collect(),
            serde_json::Value::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(ApiError::bad_parameter(format!("invalid filter '{key}'"))),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(ApiError::bad_parameter(format!("invalid filter '{key}'"))),
        };
        if !known.contains(&key.as_str()) {
            return Err(ApiError::not_supported(format!("the filter '{key}'")));
        }
        out.insert(key, list);
    }
    Ok(out)
}

fn stop_options(q: &Query) -> Result<StopOptions, ApiError> {
    let signal = q.get("signal").filter(|s| !s.is_empty());
    if let Some(s) = signal {
        valid_signal(s)?;
    }
    Ok(StopOptions {
        timeout: q.int::<i64>("t")?,
        signal: signal.map(String::from),
    })
}

/// Signals are names (`SIGTERM`, `TERM`, `sigterm`) or numbers 1..=64; anything else is 400.
fn valid_signal(s: &str) -> Result<(), ApiError> {
    let ok = match s.parse::<u32>() {
        Ok(n) => (1..=64).contains(&n),
        Err(_) => {
            let upper = s.to_ascii_uppercase();
            let name = upper.strip_prefix("SIG").unwrap_or(&upper);
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_parameter(format!("invalid signal: {s}")))
    }
}

/// Docker's container name rule `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`; returns it without the `/`.
pub(crate) fn valid_name(name: &str) -> Result<&str, ApiError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && bare.len() >= 2 {
        Ok(bare)
    } else {
        Err(ApiError::bad_parameter(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

fn tty_size(q: &Query) -> Result<TtySize, ApiError> {
    Ok(TtySize {
        height: q.int::<u16>("h")?.unwrap_or(0),
        width: q.int::<u16>("w")?.unwrap_or(0),
    })
}

/// `since`/`until`: unix seconds with an optional `.nanoseconds` part (what the CLI sends);
/// 0 or absent = none.
fn timestamp(q: &Query, name: &str) -> Result<Option<std::time::SystemTime>, ApiError> {
    let Some(raw) = q.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_parameter(format!("invalid value for {name}: {raw:?}"));
    let (secs, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else if frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if secs == 0 && nanos == 0 {
        return Ok(None);
    }
    Ok(Some(
        std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix() {
        assert_eq!(
            split_version("/v1.44/containers/json").unwrap(),
            (Some((1, 44)), "/containers/json")
        );
        assert_eq!(split_version("/version").unwrap(), (None, "/version"));
        assert_eq!(split_version("/_ping").unwrap(), (None, "/_ping"));
        let too_new = split_version("/v1.50/info").unwrap_err();
        assert_eq!(too_new.status, 400);
        assert!(too_new.message.contains("too new"), "{}", too_new.message);
        assert!(
            split_version("/v1.12/info")
                .unwrap_err()
                .message
                .contains("too old")
        );
    }

    #[test]
    fn names_signals_filters_times() {
        assert_eq!(valid_name("/ntp").unwrap(), "ntp");
        assert!(valid_name("a").is_err());
        assert!(valid_name("bad/name").is_err());
        assert!(valid_name("-x").is_err());
        assert!(valid_signal("SIGHUP").is_ok());
        assert!(valid_signal("9").is_ok());
        assert!(valid_signal("99").is_err());
        assert!(valid_signal("SIG HUP").is_err());
        let q = Query::parse(r#"filters=%7B%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%7D"#).unwrap();
        let f = filters(&q, CONTAINER_FILTERS).unwrap();
        assert_eq!(f["label"], vec!["a=b".to_string()]);
        let q = Query::parse(r#"filters={"network":["x"]}"#).unwrap();
        assert_eq!(filters(&q, CONTAINER_FILTERS).unwrap_err().status, 501);
        let q = Query::parse("filters={bad").unwrap();
        assert_eq!(filters(&q, CONTAINER_FILTERS).unwrap_err().status, 400);
        let q = Query::parse("since=1700000000.5&until=x").unwrap();
        let since = timestamp(&q, "since").unwrap().unwrap();
        assert_eq!(
            since
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_700_000_000_500
        );
        assert_eq!(timestamp(&q, "until").unwrap_err().status, 400);
    }
}
