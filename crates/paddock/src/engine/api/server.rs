//! The listener: a unix socket, one thread per connection, HTTP/1.1 with keep-alive, streamed
//! answers and the attach/exec hijack.

use std::io::{self, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::API_VERSION;
use super::backend::{Backend, Session};
use super::error::{ApiError, ServerError};
use super::http::{
    BodyReader, ChunkedWriter, HeadError, RequestHead, common_headers, read_head, write_head,
};
use super::routes::{self, MUX_STREAM, RAW_STREAM, Reply};
use super::stream::{HijackedIo, HijackedStdin, OutputWriter};

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 512;

/// A bound Docker API socket, not yet serving.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    backend: Arc<dyn Backend>,
    stop: Arc<AtomicBool>,
}

/// A server running on its own thread (see [`ApiServer::spawn`]).
pub struct ServerHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path`: mode 0660, owned by root:root when running as root. A stale socket at
    /// `path` (nobody answering) is replaced; a live one is an error, as is a non-socket.
    ///
    /// The socket is bound under a temporary name in the same directory, given its owner and
    /// mode, and then renamed over `path`, so `path` never exists with looser permissions.
    pub fn bind(
        path: impl AsRef<Path>,
        backend: Arc<dyn Backend>,
    ) -> Result<ApiServer, ServerError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(ServerError::InUse(path));
                }
            }
            Ok(_) => return Err(ServerError::NotASocket { path }),
            Err(_) => {}
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "docker.sock".to_string());
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp).map_err(|source| ServerError::RemoveStale {
                path: tmp.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&tmp).map_err(|source| ServerError::Bind {
            path: tmp.clone(),
            source,
        })?;
        let perms = || -> io::Result<()> {
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::chown(&tmp, Some(0), Some(0))?;
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(source) = perms() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ServerError::Permissions { path, source });
        }
        Ok(ApiServer {
            listener,
            path,
            backend,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts and serves connections, one thread each, until [`ServerHandle::shutdown`].
    pub fn serve(self) {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("docker api: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                let mut s = stream;
                let _ = write_error(&mut s, &ApiError::new(503, "too many connections"));
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let backend = Arc::clone(&self.backend);
            let counter = Arc::clone(&active);
            let spawned = std::thread::Builder::new()
                .name("docker-api".to_string())
                .spawn(move || {
                    if let Err(e) = serve_connection(stream, backend.as_ref()) {
                        tracing::debug!("docker api: connection ended: {e}");
                    }
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("docker api: cannot spawn a connection thread: {e}");
            }
        }
    }

    /// Serves on a new thread.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let path = self.path.clone();
        let stop = Arc::clone(&self.stop);
        let thread = std::thread::Builder::new()
            .name("docker-api-accept".to_string())
            .spawn(move || self.serve())
            .map_err(ServerError::Spawn)?;
        Ok(ServerHandle {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, removes the socket and waits for the accept thread. Connections being
    /// served finish on their own threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept call. If the socket file is gone nothing can wake it: leave the
        // thread blocked rather than hang here.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take()
            && woke
        {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_now();
        }
    }
}

fn write_error(w: &mut dyn Write, e: &ApiError) -> io::Result<()> {
    let body = e.body();
    let mut headers = common_headers(API_VERSION).to_vec();
    headers.push(("Content-Type", "application/json".to_string()));
    headers.push(("Content-Length", body.len().to_string()));
    headers.push(("Connection", "close".to_string()));
    write_head(w, e.status, &headers)?;
    w.write_all(&body)?;
    w.flush()
}

/// Serves requests on one connection until it closes, fails or is hijacked.
fn serve_connection(stream: UnixStream, backend: &dyn Backend) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(HeadError::Io(e)) => return Err(e),
            Err(HeadError::Bad(e)) => return write_error(&mut out, &e),
        };
        let mut body = match BodyReader::new(&mut reader, &head) {
            Ok(b) => b,
            Err(e) => return write_error(&mut out, &e),
        };
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let reply = routes::dispatch(backend, &head, &mut body);
        tracing::debug!(
            "docker api: {} {} -> {}",
            head.method,
            head.path,
            reply.status()
        );
        match reply {
            Reply::Hijack { session, upgrade } => {
                if !body.finish() {
                    return write_error(&mut out, &ApiError::bad_parameter("unreadable body"));
                }
                return hijack(reader, out, session, upgrade);
            }
            reply => {
                let keep_alive = head.keep_alive();
                write_reply(&mut out, &head, reply, keep_alive)?;
                // The next request starts after this one's body.
                if !keep_alive || !body.finish() {
                    let _ = out.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
    }
}

fn write_reply(
    out: &mut UnixStream,
    head: &RequestHead,
    reply: Reply,
    keep_alive: bool,
) -> io::Result<()> {
    let mut headers = common_headers(API_VERSION).to_vec();
    if !keep_alive {
        headers.push(("Connection", "close".to_string()));
    }
    let is_head = head.method == "HEAD";
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => {
            if status == 304 || status == 204 {
                write_head(out, status, &headers)?;
                return Ok(());
            }
            if head.path.ends_with("/_ping") {
                headers.push((
                    "Cache-Control",
                    "no-cache, no-store, must-revalidate".into(),
                ));
                headers.push(("Pragma", "no-cache".into()));
            }
            headers.push(("Content-Type", content_type.to_string()));
            headers.push(("Content-Length", body.len().to_string()));
            write_head(out, status, &headers)?;
            if !is_head {
                out.write_all(&body)?;
            }
            out.flush()
        }
        Reply::Stream {
            status,
            content_type,
            body,
        } => {
            headers.push(("Content-Type", content_type.to_string()));
            headers.push(("Transfer-Encoding", "chunked".to_string()));
            write_head(out, status, &headers)?;
            let mut chunked = ChunkedWriter::new(out);
            body(&mut chunked)?;
            chunked.finish()
        }
        // Handled by the caller.
        Reply::Hijack { .. } => Err(io::Error::other("hijack outside the connection loop")),
    }
}

/// Answers the upgrade and hands the raw connection to the session.
fn hijack(
    reader: BufReader<UnixStream>,
    mut out: UnixStream,
    session: Box<dyn Session>,
    upgrade: bool,
) -> io::Result<()> {
    let tty = session.tty();
    let content_type = if tty { RAW_STREAM } else { MUX_STREAM };
    let mut headers = common_headers(API_VERSION).to_vec();
    headers.push(("Content-Type", content_type.to_string()));
    let status = if upgrade {
        headers.push(("Connection", "Upgrade".to_string()));
        headers.push(("Upgrade", "tcp".to_string()));
        101
    } else {
        200
    };
    write_head(&mut out, status, &headers)?;
    let pending = reader.buffer().to_vec();
    let input = reader.into_inner();
    let closer = out.try_clone()?;
    session.run(HijackedIo {
        stdin: HijackedStdin::new(pending, input),
        output: OutputWriter::new(out, tty),
    });
    // Ends the client's copy loops and unblocks any reader still on the stdin half.
    let _ = closer.shutdown(Shutdown::Both);
    Ok(())
}
