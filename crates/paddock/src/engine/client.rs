//! A small Docker Engine API client over a unix socket: what `system-docker` and the service
//! manager use to talk to the system engine (and, later, to the user Docker).
//!
//! One request per connection (`Connection: close`), so a response body is read to EOF or
//! decoded from chunks; attach and exec use the HTTP upgrade and the multiplexed stream format.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::types::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspect, ContainerSummary,
    ExecCreateBody, ExecInspect, IdResponse, ImageSummary, ProgressMessage, WaitResponse,
};

/// The API version the client speaks (the server negotiates down to it).
pub const API_VERSION: &str = "1.41";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the engine at {socket}: {source} (is system-dockerd running?)")]
    Connect { socket: PathBuf, source: io::Error },
    #[error("engine at {socket}: {source}")]
    Io { socket: PathBuf, source: io::Error },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("engine at {socket}: bad response: {why}")]
    Protocol { socket: PathBuf, why: String },
}

impl ClientError {
    /// The HTTP status of an API error (404 for an unknown container, ...).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read + Send>,
}

/// A connection handed over after `101 Switching Protocols` (exec and attach streams).
pub struct Upgraded {
    /// Bytes the server sent right after its response head.
    pub reader: Box<dyn Read + Send>,
    pub writer: UnixStream,
}

/// A sent request: status, headers and the connection's read half.
type Sent = (u16, Vec<(String, String)>, BufReader<UnixStream>);

/// A client of one engine socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Credentials sent with pulls (`X-Registry-Auth`), by registry.
    auths: crate::image::registry::RegistryAuths,
}

/// Where clients find the system engine: `-H`, then `SYSTEM_DOCKER_HOST`, then the default.
pub fn system_engine_host(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("SYSTEM_DOCKER_HOST").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("unix://{}", crate::cli::dockerd::DEFAULT_SOCKET))
}

/// Percent-encodes `s`, keeping ASCII letters, digits, `-_.~` and the bytes in `keep`.
fn percent(s: &str, keep: &[u8]) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Percent-encodes a query value or a container name.
pub fn enc(s: &str) -> String {
    percent(s, b"")
}

/// Percent-encodes an image name for a URL path, keeping `/`, `:` and `@` as docker does
/// (`/images/library/busybox:1/json`).
pub fn enc_image(s: &str) -> String {
    percent(s, b"/:@")
}

/// The error an answer with status >= 400 carries: docker's `{"message": ...}`, else the text.
fn api_error(status: u16, body: impl Read) -> ClientError {
    let mut b = Vec::new();
    let _ = body.take(1 << 20).read_to_end(&mut b);
    let message = serde_json::from_slice::<serde_json::Value>(&b)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&b).trim().to_owned());
    ClientError::Api { status, message }
}

impl Client {
    /// A client for `unix:///path` (or a bare absolute path).
    pub fn new(host: &str) -> Result<Client, ClientError> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if !path.starts_with('/') {
            return Err(ClientError::Protocol {
                socket: PathBuf::from(host),
                why: format!("{host}: only unix:///PATH hosts are supported"),
            });
        }
        Ok(Client {
            socket: PathBuf::from(path),
            auths: Default::default(),
        })
    }

    /// Sends these credentials with pulls from their registries.
    pub fn with_registry_auths(mut self, auths: crate::image::registry::RegistryAuths) -> Client {
        self.auths = auths;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn send_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&mut dyn Read>,
        extra: &[(&str, String)],
    ) -> Result<Sent, ClientError> {
        let stream = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let mut w = stream.try_clone().map_err(|e| self.io(e))?;
        let mut head = format!(
            "{method} /v{API_VERSION}{path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match body {
            Some(b) => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                w.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = b.read(&mut buf).map_err(|e| self.io(e))?;
                    if n == 0 {
                        break;
                    }
                    w.write_all(format!("{n:x}\r\n").as_bytes())
                        .and_then(|_| w.write_all(&buf[..n]))
                        .and_then(|_| w.write_all(b"\r\n"))
                        .map_err(|e| self.io(e))?;
                }
                w.write_all(b"0\r\n\r\n").map_err(|e| self.io(e))?;
            }
            None => {
                head.push_str("Content-Length: 0\r\n\r\n");
                w.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
            }
        }
        let mut r = BufReader::new(stream);
        let (status, headers) = read_head(&mut r).map_err(|why| ClientError::Protocol {
            socket: self.socket.clone(),
            why,
        })?;
        Ok((status, headers, r))
    }

    /// Sends a request; API errors (status >= 400) become [`ClientError::Api`] with the
    /// server's message.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&mut dyn Read>,
    ) -> Result<Response, ClientError> {
        self.request_with(method, path, content_type, body, &[])
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&mut dyn Read>,
        extra: &[(&str, String)],
    ) -> Result<Response, ClientError> {
        let (status, headers, r) = self.send_with(method, path, content_type, body, extra)?;
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        let body: Box<dyn Read + Send> = if chunked {
            Box::new(Chunked::new(r))
        } else if let Some(n) = length {
            Box::new(r.take(n))
        } else {
            Box::new(r)
        };
        let resp = Response {
            status,
            headers,
            body,
        };
        if status >= 400 {
            return Err(api_error(status, resp.body));
        }
        Ok(resp)
    }

    /// A request with a JSON body (or none) whose answer is read whole.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, ClientError> {
        let json = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol {
                socket: self.socket.clone(),
                why: e.to_string(),
            })?),
            None => None,
        };
        let mut cursor = json.as_deref().map(io::Cursor::new);
        let resp = self.request(
            method,
            path,
            json.as_ref().map(|_| "application/json"),
            cursor.as_mut().map(|c| c as &mut dyn Read),
        )?;
        let mut out = Vec::new();
        let mut body = resp.body;
        body.read_to_end(&mut out).map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// A request whose answer is JSON.
    pub fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let b = self.call(method, path, body)?;
        serde_json::from_slice(&b).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            why: format!("{method} {path}: {e}"),
        })
    }

    /// Starts an upgraded (hijacked) stream: exec start and attach.
    pub fn upgrade(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(bool, Upgraded), ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            why: e.to_string(),
        })?;
        let stream = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let mut w = stream.try_clone().map_err(|e| self.io(e))?;
        let head = format!(
            "POST /v{API_VERSION}{path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            json.len()
        );
        w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&json))
            .map_err(|e| self.io(e))?;
        let mut r = BufReader::new(stream);
        let (status, headers) = read_head(&mut r).map_err(|why| ClientError::Protocol {
            socket: self.socket.clone(),
            why,
        })?;
        if status >= 400 {
            return Err(api_error(status, r));
        }
        let raw = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.contains("raw-stream"));
        Ok((
            raw,
            Upgraded {
                reader: Box::new(r),
                writer: w,
            },
        ))
    }

    // The verbs.

    pub fn ping(&self) -> Result<(), ClientError> {
        self.call("GET", "/_ping", None::<&()>).map(|_| ())
    }

    pub fn containers(
        &self,
        all: bool,
        filters: &[(String, String)],
    ) -> Result<Vec<ContainerSummary>, ClientError> {
        let mut map: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (k, v) in filters {
            map.entry(k).or_default().push(v);
        }
        let f = serde_json::to_string(&map).unwrap_or_default();
        self.json(
            "GET",
            &format!("/containers/json?all={}&filters={}", all as u8, enc(&f)),
            None::<&()>,
        )
    }

    pub fn inspect(&self, id: &str) -> Result<ContainerInspect, ClientError> {
        self.json("GET", &format!("/containers/{}/json", enc(id)), None::<&()>)
    }

    /// The raw JSON of `inspect`, for printing.
    pub fn inspect_raw(&self, kind: &str, id: &str) -> Result<serde_json::Value, ClientError> {
        let path = match kind {
            "image" => format!("/images/{}/json", enc_image(id)),
            _ => format!("/containers/{}/json", enc(id)),
        };
        self.json("GET", &path, None::<&()>)
    }

    pub fn create(
        &self,
        name: Option<&str>,
        body: &ContainerCreateBody,
    ) -> Result<String, ClientError> {
        let path = match name {
            Some(n) => format!("/containers/create?name={}", enc(n)),
            None => "/containers/create".into(),
        };
        let r: ContainerCreateResponse = self.json("POST", &path, Some(body))?;
        Ok(r.id)
    }

    /// A container verb without a body: start, stop, restart, kill, ... A 304 (already in
    /// that state) is not an error.
    pub fn verb(&self, id: &str, verb: &str, query: &str) -> Result<(), ClientError> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.call(
            "POST",
            &format!("/containers/{}/{verb}{q}", enc(id)),
            None::<&()>,
        )
        .map(|_| ())
    }

    pub fn remove(&self, id: &str, force: bool) -> Result<(), ClientError> {
        self.call(
            "DELETE",
            &format!("/containers/{}?force={}&v=1", enc(id), force as u8),
            None::<&()>,
        )
        .map(|_| ())
    }

    pub fn wait(&self, id: &str) -> Result<i64, ClientError> {
        self.wait_for(id, "not-running")
    }

    /// Waits for `condition`: `not-running`, `next-exit` or `removed`.
    pub fn wait_for(&self, id: &str, condition: &str) -> Result<i64, ClientError> {
        let r: WaitResponse = self.json(
            "POST",
            &format!("/containers/{}/wait?condition={condition}", enc(id)),
            None::<&()>,
        )?;
        Ok(r.status_code)
    }

    /// Log output, demultiplexed into (is_stderr, bytes) pieces.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<&str>,
        mut each: impl FnMut(bool, &[u8]) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        let c = self.inspect(id)?;
        let path = format!(
            "/containers/{}/logs?stdout=1&stderr=1&follow={}&tail={}",
            enc(id),
            follow as u8,
            enc(tail.unwrap_or("all"))
        );
        let resp = self.request("GET", &path, None, None)?;
        let raw = c.config.tty;
        demux(resp.body, raw, &mut each).map_err(|e| self.io(e))
    }

    pub fn images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.json("GET", "/images/json", None::<&()>)
    }

    /// Pulls `reference`, reporting each progress message.
    pub fn pull(
        &self,
        reference: &str,
        mut progress: impl FnMut(&ProgressMessage),
    ) -> Result<(), ClientError> {
        let auth = reference
            .parse::<crate::image::Reference>()
            .ok()
            .and_then(|r| self.auths.lookup(&r.domain).cloned())
            .and_then(|a| registry_auth_header(&a));
        let extra: Vec<(&str, String)> = auth.into_iter().map(|h| ("X-Registry-Auth", h)).collect();
        let resp = self.request_with(
            "POST",
            &format!("/images/create?fromImage={}", enc(reference)),
            None,
            None,
            &extra,
        )?;
        for line in BufReader::new(resp.body).lines() {
            let line = line.map_err(|e| self.io(e))?;
            if line.trim().is_empty() {
                continue;
            }
            if let Ok(m) = serde_json::from_str::<ProgressMessage>(&line) {
                if let Some(e) = &m.error {
                    return Err(ClientError::Api {
                        status: 500,
                        message: e.clone(),
                    });
                }
                progress(&m);
            }
        }
        Ok(())
    }

    /// The id of an image, or None when the engine does not have it.
    pub fn image_id(&self, reference: &str) -> Result<Option<String>, ClientError> {
        match self.inspect_raw("image", reference) {
            Ok(v) => Ok(v.get("Id").and_then(|i| i.as_str()).map(str::to_owned)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn exec_create(&self, id: &str, body: &ExecCreateBody) -> Result<String, ClientError> {
        let r: IdResponse =
            self.json("POST", &format!("/containers/{}/exec", enc(id)), Some(body))?;
        Ok(r.id)
    }

    pub fn exec_inspect(&self, exec: &str) -> Result<ExecInspect, ClientError> {
        self.json("GET", &format!("/exec/{exec}/json"), None::<&()>)
    }
}

/// Splits a log or attach stream into (is_stderr, bytes): raw when the container has a tty,
/// the 8-byte-header frame format otherwise.
pub fn demux(
    mut r: impl Read,
    raw: bool,
    each: &mut impl FnMut(bool, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    if raw {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            each(false, &buf[..n])?;
        }
    }
    loop {
        let mut h = [0u8; 8];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut left = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        while left > 0 {
            let want = left.min(buf.len());
            r.read_exact(&mut buf[..want])?;
            each(h[0] == 2, &buf[..want])?;
            left -= want;
        }
    }
}

fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), String> {
    let mut status_line = String::new();
    r.read_line(&mut status_line).map_err(|e| e.to_string())?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {:?}", status_line.trim_end()))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if n == 0 || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// A `Transfer-Encoding: chunked` body.
struct Chunked<R> {
    r: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(r: R) -> Self {
        Chunked {
            r,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = self.left.min(buf.len());
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "response ended inside a chunk",
            ));
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.r.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// docker's `X-Registry-Auth`: URL-safe base64 of the credentials as JSON.
fn registry_auth_header(a: &crate::image::registry::AuthConfig) -> Option<String> {
    use base64::Engine as _;
    let json = match (a.credentials(), &a.identitytoken) {
        (Some((username, password)), _) => {
            serde_json::json!({"username": username, "password": password})
        }
        (None, Some(token)) => serde_json::json!({"identitytoken": token}),
        (None, None) => return None,
    };
    Some(base64::engine::general_purpose::URL_SAFE.encode(json.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn registry_auth_headers_carry_credentials_or_nothing() {
        use crate::image::registry::AuthConfig;
        use base64::Engine as _;
        let decode = |h: String| -> serde_json::Value {
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE.decode(h).unwrap())
                .unwrap()
        };
        let basic = AuthConfig {
            auth: Some("dTpwOnc=".into()), // u:p:w
            ..Default::default()
        };
        let h = decode(registry_auth_header(&basic).unwrap());
        assert_eq!(h["username"], "u");
        assert_eq!(h["password"], "p:w");
        let token = AuthConfig {
            identitytoken: Some("tok".into()),
            ..Default::default()
        };
        assert_eq!(
            decode(registry_auth_header(&token).unwrap())["identitytoken"],
            "tok"
        );
        assert_eq!(registry_auth_header(&AuthConfig::default()), None);
    }

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked::new(&raw[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
        let bad = b"zz\r\nhello\r\n";
        assert!(Chunked::new(&bad[..]).read_to_string(&mut out).is_err());
    }

    #[test]
    fn frames_demux_by_stream() {
        let mut data = vec![];
        super::super::api::stream::encode_frames(
            super::super::api::stream::StreamKind::Stdout,
            b"out",
            &mut data,
        );
        super::super::api::stream::encode_frames(
            super::super::api::stream::StreamKind::Stderr,
            b"err",
            &mut data,
        );
        let mut got = vec![];
        demux(&data[..], false, &mut |e, b| {
            got.push((e, b.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(false, b"out".to_vec()), (true, b"err".to_vec())]);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            Client::new("unix:///run/x.sock").unwrap().socket(),
            Path::new("/run/x.sock")
        );
        assert!(Client::new("tcp://1.2.3.4:2375").is_err());
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
