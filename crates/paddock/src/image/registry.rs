//! A blocking client for the Docker Registry HTTP API v2 / OCI distribution spec: anonymous,
//! bearer-token and basic auth, manifests by tag or digest, streamed blobs.
//!
//! Transport security: registries are reached over https. Plain http is used only for
//! loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) and for hosts the caller marks insecure,
//! for which https is tried first (as docker does).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::reference::Reference;
use super::spec::MANIFEST_ACCEPT;

/// Credentials for one registry, in the shape of docker's config.json `auths` entries and of
/// RancherOS's `rancher.registry_auths.<registry>`: either `auth` (base64 `user:password`) or
/// `username` and `password`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "identityToken"
    )]
    pub identitytoken: Option<String>,
}

impl AuthConfig {
    /// `(user, password)`, decoding `auth` when that is what was given.
    pub fn credentials(&self) -> Option<(String, String)> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Some((u.clone(), p.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    }
}

/// Credentials by registry, keyed as users write them (`host:port`, `https://host/v1/`, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryAuths(pub BTreeMap<String, AuthConfig>);

impl RegistryAuths {
    /// The entry for `domain`, matching keys with or without scheme and path, and docker hub's
    /// historical names.
    pub fn lookup(&self, domain: &str) -> Option<&AuthConfig> {
        let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        self.0.iter().find_map(|(k, v)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let host = k.split('/').next().unwrap_or(k);
            let same = host == domain || (hub.contains(&host) && hub.contains(&domain));
            same.then_some(v)
        })
    }

    /// `rancher.registry_auths` of the cloud-config.
    pub fn from_config(
        auths: &BTreeMap<String, crate::config::model::RegistryAuth>,
    ) -> RegistryAuths {
        let s = |l: &Option<crate::config::types::Line>| l.as_ref().map(|l| l.to_string());
        RegistryAuths(
            auths
                .iter()
                .map(|(k, a)| {
                    (
                        k.clone(),
                        AuthConfig {
                            auth: s(&a.auth),
                            username: s(&a.username),
                            password: s(&a.password),
                            identitytoken: s(&a.identitytoken),
                        },
                    )
                })
                .collect(),
        )
    }

    /// Reads docker's config.json shape (`{"auths": {...}}`) or a bare map of registries.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct DockerConfig {
            auths: BTreeMap<String, AuthConfig>,
        }
        if let Ok(c) = serde_json::from_slice::<DockerConfig>(bytes) {
            return Ok(RegistryAuths(c.auths));
        }
        serde_json::from_slice(bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {err}")]
    Transport { url: String, err: Box<ureq::Error> },
    #[error("{url}: http {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("registry {registry}: authentication failed: {why}")]
    Auth { registry: String, why: String },
    #[error("{reference}: not found in registry ({message})")]
    NotFound { reference: String, message: String },
    #[error("{url}: reading response: {err}")]
    Body { url: String, err: Box<ureq::Error> },
}

/// Options shared by every registry session.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub auths: RegistryAuths,
    /// Hosts (`host` or `host:port`) allowed to fall back to plain http.
    pub insecure: Vec<String>,
}

/// A connection to one repository of one registry, holding its token once obtained.
#[derive(Clone)]
pub struct Session {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repo: String,
    creds: Option<AuthConfig>,
    authorization: Option<String>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Session {
    /// Opens a session for `r`'s repository and finds out which scheme the registry speaks.
    pub fn open(r: &Reference, opts: &ClientOptions) -> Result<Session, RegistryError> {
        let loopback = is_loopback(r.hostname());
        let insecure = opts
            .insecure
            .iter()
            .any(|h| h == &r.domain || h == r.hostname());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("paddock-ros/", env!("CARGO_PKG_VERSION")))
            .proxy(if loopback {
                None
            } else {
                ureq::Proxy::try_from_env()
            })
            .build()
            .into();
        let mut s = Session {
            agent,
            base: String::new(),
            registry: r.domain.clone(),
            repo: r.path.clone(),
            creds: opts.auths.lookup(&r.domain).cloned(),
            authorization: None,
        };
        let schemes: &[&str] = if loopback {
            &["http", "https"]
        } else if insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last = None;
        for scheme in schemes {
            s.base = format!("{scheme}://{}", r.api_host());
            let url = format!("{}/v2/", s.base);
            match s.agent.get(&url).call() {
                Ok(_) => return Ok(s), // any http answer (200, 401) means the scheme works
                Err(e) => {
                    last = Some(RegistryError::Transport {
                        url,
                        err: Box::new(e),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Status {
            url: r.domain.clone(),
            status: 0,
            message: "no scheme".into(),
        }))
    }

    /// GET with the session's authorization, authenticating once on a 401 challenge.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut authed_once = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = &self.authorization {
                req = req.header("Authorization", auth);
            }
            let resp = req.call().map_err(|e| RegistryError::Transport {
                url: url.into(),
                err: Box::new(e),
            })?;
            if resp.status().as_u16() != 401 || authed_once {
                if resp.status().as_u16() == 401 {
                    return Err(RegistryError::Auth {
                        registry: self.registry.clone(),
                        why: "credentials were refused (check rancher.registry_auths or --creds)"
                            .into(),
                    });
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            self.authenticate(&challenge)?;
            authed_once = true;
        }
    }

    fn authenticate(&mut self, challenge: &str) -> Result<(), RegistryError> {
        let auth_err = |why: String| RegistryError::Auth {
            registry: self.registry.clone(),
            why,
        };
        let (scheme, params) = parse_challenge(challenge);
        let basic = self
            .creds
            .as_ref()
            .and_then(AuthConfig::credentials)
            .map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            });
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                self.authorization = Some(basic.ok_or_else(|| {
                    auth_err("the registry requires credentials and none are configured".into())
                })?);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
                let mut req = self.agent.get(realm).query("scope", &scope);
                if let Some(service) = params.get("service") {
                    req = req.query("service", service);
                }
                if let Some(b) = &basic {
                    req = req.header("Authorization", b);
                }
                let mut resp = req.call().map_err(|e| RegistryError::Transport {
                    url: realm.clone(),
                    err: Box::new(e),
                })?;
                let status = resp.status().as_u16();
                let body = small_body(&mut resp);
                if status != 200 {
                    return Err(auth_err(format!(
                        "token server {realm} answered http {status}: {}",
                        error_message(&body)
                    )));
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| {
                    auth_err(format!("token server {realm}: malformed answer: {e}"))
                })?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| auth_err(format!("token server {realm} sent no token")))?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            other => Err(auth_err(format!("unsupported auth challenge {other:?}"))),
        }
    }

    /// Fetches a manifest or index by tag or digest: `(bytes, content type)`.
    pub fn manifest(
        &mut self,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repo);
        let mut resp = self.get(&url, Some(MANIFEST_ACCEPT))?;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::Body {
                url: url.clone(),
                err: Box::new(e),
            })?;
        match status {
            200 => Ok((body, ct)),
            404 => Err(RegistryError::NotFound {
                reference: format!("{}/{}:{reference}", self.registry, self.repo),
                message: error_message(&body),
            }),
            _ => Err(RegistryError::Status {
                url,
                status,
                message: error_message(&body),
            }),
        }
    }

    /// Opens a blob for streaming. The caller verifies digest and size while reading.
    pub fn blob(
        &mut self,
        digest: &Digest,
    ) -> Result<(Box<dyn Read + Send>, Option<u64>), RegistryError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repo);
        let mut resp = self.get(&url, None)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = small_body(&mut resp);
            return Err(RegistryError::Status {
                url,
                status,
                message: error_message(&body),
            });
        }
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        Ok((Box::new(reader), len))
    }
}

/// Reads at most 1 MiB of a response body (token answers, error bodies); empty on failure.
fn small_body(resp: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
    resp.body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_or_default()
}

/// Splits `Bearer realm="a",service="b"` into the scheme and its parameters.
fn parse_challenge(h: &str) -> (String, BTreeMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (v, remain) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_owned(), &q[end + 1..]),
                None => (q.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].to_owned(), &after[end..]),
                None => (after.to_owned(), ""),
            }
        };
        params.insert(k, v);
        rest = remain.trim_start_matches([',', ' ']);
    }
    (scheme.to_owned(), params)
}

/// The `message` of a registry error body (`{"errors":[{"code":..,"message":..}]}`), or the
/// start of the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|i| format!("{}: {}", i.code, i.message))
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let s = String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_owned();
    if s.is_empty() { "empty body".into() } else { s }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn auths_match_hosts_and_decode() {
        let a = RegistryAuths::from_json(br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5000":{"username":"a","password":"b:c"}}}"#).unwrap();
        assert_eq!(
            a.lookup("docker.io").unwrap().credentials(),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(
            a.lookup("127.0.0.1:5000").unwrap().credentials(),
            Some(("a".into(), "b:c".into()))
        );
        assert!(a.lookup("quay.io").is_none());
    }

    #[test]
    fn registry_errors_are_readable() {
        assert_eq!(
            error_message(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            ),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(error_message(b""), "empty body");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("::1"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("registry.example"));
    }
}
