//! Where service definitions come from besides `rancher.services`: the names switched on in
//! `rancher.services_include`, each resolved to a compose file.
//!
//! A name is resolved, in order, as:
//! - an `http://` or `https://` URL: fetched;
//! - an absolute path: that file (below `--root`);
//! - `/var/lib/rancher/conf/<name>.yml` when it exists (RancherOS's local services);
//! - `<url>/<first letter>/<name>.yml` of each `rancher.repositories.<repo>.url`, in repository
//!   name order, first hit wins.
//!
//! Fetched files are cached in `/var/lib/rancher/cache/<sha256 of the URL>` and reused until
//! an `--update` (RancherOS cached forever and users hit that; here the refresh is one flag,
//! and a failed refresh falls back to the cache with a warning). URLs are fetched with
//! `rancher.http_load_retries` attempts.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::config::model::Rancher;
use crate::fsutil::write_atomic;
use crate::root::Root;

use super::{Environment, Loaded, Warning, parse_compose_text};

/// Local service files.
pub const LOCAL_DIR: &str = "/var/lib/rancher/conf";
/// Fetched files.
pub const CACHE_DIR: &str = "/var/lib/rancher/cache";

/// Largest service file or index accepted.
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("service {name}: {why}")]
pub struct SourceError {
    pub name: String,
    pub why: String,
}

/// How to resolve names.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub root: Root,
    /// repository name -> base URL.
    pub repositories: BTreeMap<String, String>,
    /// Refetch instead of using the cache.
    pub update: bool,
    pub retries: u32,
}

impl Resolver {
    /// From the config.
    pub fn new(root: Root, rancher: &Rancher, update: bool) -> Resolver {
        Resolver {
            root,
            repositories: rancher
                .repositories
                .iter()
                .filter_map(|(k, r)| r.url.as_ref().map(|u| (k.clone(), u.to_string())))
                .collect(),
            update,
            retries: 3,
        }
    }

    /// The compose text for `name`, and where it came from.
    pub fn resolve(&self, name: &str) -> Result<(String, String), SourceError> {
        let err = |why: String| SourceError {
            name: name.into(),
            why,
        };
        if name.starts_with("http://") || name.starts_with("https://") {
            return self.fetch_cached(name).map(|t| (t, name.to_owned()));
        }
        if name.starts_with('/') {
            return std::fs::read_to_string(self.root.path(name))
                .map(|t| (t, name.to_owned()))
                .map_err(|e| err(format!("reading {name}: {e}")));
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(err("not a service name, url or absolute path".into()));
        }
        let local = format!("{LOCAL_DIR}/{name}.yml");
        if let Ok(t) = std::fs::read_to_string(self.root.path(&local)) {
            return Ok((t, local));
        }
        if self.repositories.is_empty() {
            return Err(err(format!(
                "no file {local} and no rancher.repositories to look in"
            )));
        }
        let mut tried = vec![];
        for url in self.repositories.values() {
            let u = service_url(url, name);
            match self.fetch_cached(&u) {
                Ok(t) => return Ok((t, u)),
                Err(e) => tried.push(e.why),
            }
        }
        Err(err(format!(
            "not in {local} nor any repository ({})",
            tried.join("; ")
        )))
    }

    /// The `services` names of every repository's `index.yml`.
    pub fn available(&self) -> (BTreeMap<String, String>, Vec<Warning>) {
        let mut out = BTreeMap::new();
        let mut warnings = vec![];
        for (repo, url) in &self.repositories {
            let u = format!("{}/index.yml", url.trim_end_matches('/'));
            let text = match self.fetch_cached(&u) {
                Ok(t) => t,
                Err(e) => {
                    warnings.push(Warning::new(format!("rancher.repositories.{repo}"), e.why));
                    continue;
                }
            };
            match crate::config::yaml::parse(&text) {
                Ok(p) => {
                    if let Some(list) = p.value.get("services").and_then(|s| s.as_array()) {
                        for s in list.iter().filter_map(|s| s.as_str()) {
                            out.entry(s.to_owned()).or_insert_with(|| repo.clone());
                        }
                    }
                }
                Err(e) => warnings.push(Warning::new(
                    u.clone(),
                    format!("not valid yaml: {}", e.message),
                )),
            }
        }
        (out, warnings)
    }

    fn cache_path(&self, url: &str) -> std::path::PathBuf {
        let h = Sha256::digest(url.as_bytes());
        self.root
            .path(format!("{CACHE_DIR}/{}", crate::image::digest::to_hex(&h)))
    }

    fn fetch_cached(&self, url: &str) -> Result<String, SourceError> {
        let path = self.cache_path(url);
        let cached = std::fs::read_to_string(&path).ok();
        if let (Some(t), false) = (&cached, self.update) {
            return Ok(t.clone());
        }
        match fetch(url, self.retries) {
            Ok(text) => {
                if let Some(d) = path.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                if let Err(e) = write_atomic(&path, text.as_bytes(), 0o600) {
                    tracing::warn!("caching {url} in {}: {e}", path.display());
                }
                Ok(text)
            }
            Err(why) => match cached {
                Some(t) => {
                    tracing::warn!("{url}: {why}; using the cached copy");
                    Ok(t)
                }
                None => Err(SourceError {
                    name: url.into(),
                    why,
                }),
            },
        }
    }
}

/// `<url>/<first letter>/<name>.yml`, as RancherOS's repositories lay services out.
pub fn service_url(base: &str, name: &str) -> String {
    let first = name.chars().next().unwrap_or('_');
    format!("{}/{first}/{name}.yml", base.trim_end_matches('/'))
}

fn fetch(url: &str, retries: u32) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut last = String::new();
    for attempt in 0..retries.max(1) {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
        }
        match agent.get(url).call() {
            Ok(resp) if resp.status() == 404 => return Err(format!("{url}: not found (404)")),
            Ok(resp) if !resp.status().is_success() => {
                last = format!("{url}: http status {}", resp.status());
            }
            Ok(resp) => {
                let mut body = String::new();
                return resp
                    .into_body()
                    .into_reader()
                    .take(MAX_FILE)
                    .read_to_string(&mut body)
                    .map(|_| body)
                    .map_err(|e| format!("{url}: {e}"));
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

/// Every service the config asks for: `rancher.services` plus each enabled
/// `services_include` entry, resolved and parsed. Problems with one include are errors of
/// that include; the rest still load.
pub fn collect(rancher: &Rancher, resolver: &Resolver, env: &Environment) -> Loaded {
    let mut loaded = super::load_services("rancher.services", &rancher.services, env);
    for (name, on) in &rancher.services_include {
        if !on {
            continue;
        }
        let result = resolver
            .resolve(name)
            .map_err(|e| e.to_string())
            .and_then(|(text, from)| {
                parse_compose_text(&from, &text, env).map_err(|e| e.to_string())
            });
        match result {
            Ok(l) => {
                for (svc, def) in l.services {
                    loaded.services.entry(svc).or_insert(def);
                }
                loaded.errors.extend(l.errors);
                loaded.warnings.extend(l.warnings);
            }
            Err(why) => loaded.errors.push(super::ServiceError {
                service: name.clone(),
                path: format!("rancher.services_include.{name}"),
                message: why,
            }),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;

    /// A tiny HTTP server on 127.0.0.1 serving `files` (path -> body), counting requests.
    fn serve(
        files: BTreeMap<String, String>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (code, body) = match files.get(&path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", String::new()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{addr}"), hits)
    }

    #[test]
    fn names_resolve_locally_then_through_repositories_with_a_cache() {
        let mut files = BTreeMap::new();
        files.insert(
            "/index.yml".to_string(),
            "services: [zfs, open-vm-tools]\nconsoles: [debian]\n".to_string(),
        );
        files.insert(
            "/z/zfs.yml".to_string(),
            "zfs:\n  image: example/zfs:1\n  labels:\n    io.rancher.os.scope: system\n"
                .to_string(),
        );
        let (url, hits) = serve(files);
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        std::fs::create_dir_all(root.path(LOCAL_DIR)).unwrap();
        std::fs::write(
            root.path(format!("{LOCAL_DIR}/mine.yml")),
            "mine:\n  image: local/mine\n",
        )
        .unwrap();
        let mut r = Resolver {
            root: root.clone(),
            repositories: BTreeMap::from([("core".to_string(), url.clone())]),
            update: false,
            retries: 1,
        };
        let (text, from) = r.resolve("mine").unwrap();
        assert!(text.contains("local/mine"));
        assert_eq!(from, "/var/lib/rancher/conf/mine.yml");
        let (text, from) = r.resolve("zfs").unwrap();
        assert!(text.contains("example/zfs:1"));
        assert_eq!(from, format!("{url}/z/zfs.yml"));
        let n = hits.load(std::sync::atomic::Ordering::SeqCst);
        r.resolve("zfs").unwrap();
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            n,
            "the cache was not used"
        );
        r.update = true;
        r.resolve("zfs").unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), n + 1);
        let e = r.resolve("nosuch").unwrap_err().to_string();
        assert!(e.contains("nosuch") && e.contains("404"), "{e}");
        assert!(r.resolve("../etc/passwd").is_err());
        let (avail, warns) = r.available();
        assert!(warns.is_empty(), "{warns:?}");
        assert_eq!(
            avail.keys().collect::<Vec<_>>(),
            vec!["open-vm-tools", "zfs"]
        );

        // collect: rancher.services plus enabled includes; a broken include is its own error.
        let cfg: crate::config::CloudConfig = crate::config::de::decode(
            &crate::config::yaml::parse(
                "rancher:\n  services:\n    a:\n      image: x/a\n  services_include:\n    zfs: true\n    mine: false\n    gone: true\n",
            )
            .unwrap()
            .value,
        )
        .unwrap()
        .value;
        let l = collect(&cfg.rancher, &r, &Environment::default());
        assert_eq!(l.services.keys().collect::<Vec<_>>(), vec!["a", "zfs"]);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(l.errors[0].service, "gone");
    }

    #[test]
    fn urls_are_laid_out_by_first_letter() {
        assert_eq!(service_url("http://h/r/", "zfs"), "http://h/r/z/zfs.yml");
    }
}
