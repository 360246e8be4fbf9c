//! The Docker API server at the HTTP level: bad input on a kept-alive connection, unsupported
//! routes, version bounds, `/_ping`, streamed answers going out before they end, the socket's
//! mode and stale-socket handling. Unprivileged; no docker CLI needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_api_fake;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api_fake::{Fake, Harness};
use paddock::engine::api::{ApiServer, ServerError};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn connect(h: &Harness) -> BufReader<UnixStream> {
    let s = UnixStream::connect(&h.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn send(conn: &mut BufReader<UnixStream>, raw: &[u8]) {
    conn.get_mut().write_all(raw).unwrap();
}

fn read_head(conn: &mut BufReader<UnixStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        conn.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// Reads one response (length-delimited or chunked) from a kept-alive connection.
fn read_response(conn: &mut BufReader<UnixStream>, head_request: bool) -> Response {
    let (status, headers) = read_head(conn);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 {
    } else if get("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n: usize = get("content-length").unwrap().parse().unwrap();
        body.resize(n, 0);
        conn.read_exact(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
    }
}

fn request(conn: &mut BufReader<UnixStream>, method: &str, path: &str, body: &str) -> Response {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send(conn, raw.as_bytes());
    read_response(conn, method == "HEAD")
}

#[test]
fn bad_input_answers_docker_errors_and_the_connection_keeps_serving() {
    let h = Harness::start();
    let mut c = connect(&h);

    let r = request(
        &mut c,
        "POST",
        "/v1.44/containers/create?name=ok1",
        "{not json",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON"),
        "{:?}",
        r.json()
    );
    let r = request(&mut c, "POST", "/v1.44/containers/create", "");
    assert_eq!(r.status, 400);
    let r = request(
        &mut c,
        "POST",
        "/containers/create?name=a%2Fb",
        r#"{"Image":"busybox"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("Invalid container name")
    );
    let r = request(
        &mut c,
        "POST",
        "/containers/create",
        r#"{"Image":"nosuch"}"#,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "No such image: nosuch:latest");
    let r = request(
        &mut c,
        "POST",
        "/containers/create",
        r#"{"Image":"busybox","HostConfig":{"Memory":"lots"}}"#,
    );
    assert_eq!(r.status, 400);

    let r = request(&mut c, "POST", "/v1.44/containers/x1/stop?t=soon", "");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "invalid value for t: \"soon\"");
    let r = request(
        &mut c,
        "POST",
        "/v1.44/containers/x1/kill?signal=NOT%20A%20SIGNAL",
        "",
    );
    assert_eq!(r.status, 400);
    let r = request(
        &mut c,
        "POST",
        "/v1.44/containers/x1/wait?condition=whenever",
        "",
    );
    assert_eq!(r.status, 400);
    let r = request(&mut c, "GET", "/v1.44/containers/x1/logs", "");
    assert_eq!(r.status, 400);
    let r = request(
        &mut c,
        "GET",
        "/v1.44/containers/json?filters=%7Bbroken",
        "",
    );
    assert_eq!(r.status, 400);
    let r = request(&mut c, "POST", "/v1.44/containers/x1/resize?h=-1&w=80", "");
    assert_eq!(r.status, 400);

    let r = request(&mut c, "GET", "/v1.44/networks", "");
    assert_eq!(r.status, 501);
    assert_eq!(
        r.json()["message"],
        "not supported by the system engine: GET /networks"
    );
    let r = request(&mut c, "POST", "/v1.44/build", "");
    assert_eq!(r.status, 501);

    // Still the same connection, still serving.
    let r = request(
        &mut c,
        "POST",
        "/v1.44/containers/create?name=ok1",
        r#"{"Image":"busybox","Cmd":"echo"}"#,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["Id"].as_str().unwrap().len(), 64);
    let r = request(&mut c, "GET", "/v1.44/containers/json?all=1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["Names"][0], "/ok1");
    assert_eq!(r.header("Api-Version"), Some("1.44"));

    // Garbage that is not HTTP gets a 400 and a close; the server lives on.
    let mut bad = connect(&h);
    send(&mut bad, b"\x00\x01garbage\r\n\r\n");
    let r = read_response(&mut bad, false);
    assert_eq!(r.status, 400);
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let r = request(&mut connect(&h), "GET", "/_ping", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"OK"[..]));
}

#[test]
fn ping_and_version_negotiation() {
    let h = Harness::start();
    let mut c = connect(&h);
    for method in ["GET", "HEAD"] {
        let r = request(&mut c, method, "/_ping", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Api-Version"), Some("1.44"));
        assert_eq!(r.header("Docker-Experimental"), Some("false"));
        assert_eq!(r.header("OSType"), Some("linux"));
        assert_eq!(
            r.header("Cache-Control"),
            Some("no-cache, no-store, must-revalidate")
        );
        assert_eq!(
            r.body,
            if method == "GET" {
                b"OK".to_vec()
            } else {
                Vec::new()
            }
        );
    }
    let r = request(&mut c, "GET", "/v1.50/version", "");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "client version 1.50 is too new. Maximum supported API version is 1.44"
    );
    let r = request(&mut c, "GET", "/v1.23/version", "");
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("too old"));
    for path in ["/v1.24/version", "/v1.44/version", "/version"] {
        let r = request(&mut c, "GET", path, "");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["ApiVersion"], "1.44");
        assert_eq!(r.json()["MinAPIVersion"], "1.24");
    }
}

#[test]
fn wait_headers_go_out_before_the_container_exits() {
    let h = Harness::start();
    let mut c = connect(&h);
    let r = request(
        &mut c,
        "POST",
        "/containers/create?name=w1",
        r#"{"Image":"busybox","Cmd":["sleep"]}"#,
    );
    assert_eq!(r.status, 201);
    send(&mut c, b"POST /v1.44/containers/w1/wait?condition=next-exit HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n");
    // docker run waits for these headers before it starts the container.
    let (status, headers) = read_head(&mut c);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "Transfer-Encoding" && v == "chunked")
    );

    let mut other = connect(&h);
    assert_eq!(
        request(&mut other, "POST", "/containers/w1/start", "").status,
        204
    );
    assert_eq!(
        request(&mut other, "POST", "/containers/w1/start", "").status,
        304
    );
    assert_eq!(
        request(&mut other, "POST", "/containers/w1/kill?signal=SIGTERM", "").status,
        204
    );

    let mut size = String::new();
    c.read_line(&mut size).unwrap();
    let n = usize::from_str_radix(size.trim(), 16).unwrap();
    let mut body = vec![0; n];
    c.read_exact(&mut body).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, serde_json::json!({"StatusCode": 143}));
}

#[test]
fn chunked_request_bodies_and_streamed_answers() {
    let h = Harness::start();
    let mut c = connect(&h);
    let tar = "FAKE-IMAGE-TAR loaded/image:7\nrest of the tarball\n";
    let (a, b) = tar.split_at(20);
    let raw = format!(
        "POST /v1.44/images/load?quiet=1 HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    send(&mut c, raw.as_bytes());
    let r = read_response(&mut c, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stream"], "Loaded image: loaded/image:7\n");
    assert_eq!(h.fake.lock().loaded[0], tar.as_bytes());

    // Logs of a stopped non-tty container: multiplexed frames.
    assert_eq!(
        request(
            &mut c,
            "POST",
            "/containers/create?name=l1",
            r#"{"Image":"busybox","Cmd":["fail","2"]}"#
        )
        .status,
        201
    );
    assert_eq!(
        request(&mut c, "POST", "/containers/l1/start", "").status,
        204
    );
    assert!(
        h.fake
            .wait_until(|st| st.containers.values().any(|c| c.exits == 1))
    );
    let r = request(&mut c, "GET", "/containers/l1/logs?stdout=1&stderr=1", "");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/vnd.docker.multiplexed-stream")
    );
    assert_eq!(
        paddock::engine::api::stream::decode_frames(&r.body).unwrap(),
        vec![(2u8, b"failing with 2\n".to_vec())]
    );

    // A save streams many chunks and then the connection is reusable.
    let r = request(&mut c, "GET", "/images/get?names=busybox", "");
    assert_eq!(r.header("Content-Type"), Some("application/x-tar"));
    assert_eq!(
        r.body.len(),
        "FAKE-IMAGE-TAR busybox:latest\n".len() + 20_000 * 21
    );
    assert_eq!(
        request(&mut c, "GET", "/images/get?names=nosuch", "").status,
        404
    );
    assert_eq!(request(&mut c, "GET", "/_ping", "").status, 200);
}

#[test]
fn socket_mode_stale_and_live_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");

    // A stale socket (nobody listening) is replaced.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(UnixStream::connect(&sock).is_err());
    let server = ApiServer::bind(&sock, Arc::new(Fake::new())).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    let handle = server.spawn().unwrap();
    assert!(UnixStream::connect(&sock).is_ok());

    // A live one is not taken over.
    match ApiServer::bind(&sock, Arc::new(Fake::new())) {
        Err(ServerError::InUse(p)) => assert_eq!(p, sock),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("bound over a live socket"),
    }
    // No temporary names are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);

    let t = Instant::now();
    handle.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!sock.exists());

    // A regular file is never removed.
    std::fs::write(&sock, b"data").unwrap();
    assert!(matches!(
        ApiServer::bind(&sock, Arc::new(Fake::new())),
        Err(ServerError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&sock).unwrap(), b"data");
}
