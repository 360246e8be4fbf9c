//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with
//! filesystem storage, anonymous or behind htpasswd basic auth or bearer-token auth. For token
//! auth a small token server runs here too; it signs RS256 JWTs with the `openssl` CLI and
//! puts its certificate in the `x5c` header, which the registry checks against its root bundle.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

/// How the registry authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    /// htpasswd basic auth with this user and password.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from a token server that checks this user and password.
    Token {
        user: String,
        password: String,
    },
}

/// A running registry; killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: PathBuf,
    child: Child,
    /// Kept alive (and stopped on drop) with the registry.
    _token_server: Option<TokenServer>,
    creds: Option<String>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    pub fn start(dir: &Path, auth: Auth) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut token_server = None;
        let creds = match &auth {
            Auth::Anonymous => None,
            Auth::Basic { user, password } | Auth::Token { user, password } => {
                Some(format!("{user}:{password}"))
            }
        };
        let auth_yaml = match &auth {
            Auth::Anonymous => String::new(),
            Auth::Basic { user, password } => {
                let htpasswd = dir.join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("running htpasswd (apt-get install apache2-utils)")?;
                if !out.status.success() {
                    bail!("htpasswd failed");
                }
                std::fs::write(&htpasswd, out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: paddock-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::Token { user, password } => {
                let ts = TokenServer::start(dir, user, password)?;
                let yaml = format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: paddock-test\n    issuer: paddock-test-issuer\n    rootcertbundle: {}\n",
                    ts.addr,
                    ts.cert.display()
                );
                token_server = Some(ts);
                yaml
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let reg = Registry {
            addr,
            dir: dir.to_path_buf(),
            child,
            _token_server: token_server,
            creds,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&reg.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} (see {}/registry.log)",
                    reg.addr,
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// The filesystem path of a blob's data in the registry's storage (to corrupt it).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// skopeo credentials for pushing to this registry.
    pub fn creds(&self) -> Option<String> {
        self.creds.clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TokenServer {
    addr: String,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer> {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=paddock-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()?
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (u, p, k, s) = (
            user.to_owned(),
            password.to_owned(),
            key.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve_token(c, &u, &p, &k, &x5c);
                }
            }
        });
        Ok(TokenServer { addr, cert, stop })
    }
}

fn serve_token(conn: TcpStream, user: &str, password: &str, key: &Path, x5c: &str) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    r.read_line(&mut request_line)?;
    let mut authz = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((_, v)) = line
            .split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            authz = Some(v.trim().to_owned());
        }
    }
    let _ = r.take(0).read_to_end(&mut Vec::new());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let mut w = conn;
    if authz.as_deref() != Some(expected.as_str()) {
        let body = r#"{"details":"wrong or missing credentials"}"#;
        write!(
            w,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    // Grant whatever repository scope was asked for.
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = vec![];
    for pair in query.split('&') {
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = percent_decode(scope);
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if parts.len() == 3 {
                access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
            }
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "paddock-test-issuer", "sub": user, "aud": "paddock-test",
        "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(&claims)?)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(signing_input.as_bytes())?;
    let sig = child.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", b64url(&sig));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
            .flatten();
        if let Some(v) = hex {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
