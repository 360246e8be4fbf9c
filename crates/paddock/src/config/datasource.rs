//! Datasources: where user data and metadata come from (`rancher.cloud_init.datasources`).
//!
//! Every kind implements [`Datasource`]. A spec is `type[:arg]`:
//!
//! | spec | reads |
//! |---|---|
//! | `configdrive[:DIR]` | OpenStack config-2 layout: `DIR/openstack/latest/{user_data,meta_data.json}` (default `/media/config-2`) |
//! | `nocloud[:DIR]` | NoCloud `cidata` layout: `DIR/{user-data,meta-data}` (default `/media/cidata`) |
//! | `cmdline` | the URL of `cloud-config-url=` on the kernel command line |
//! | `url:URL` | user data from a URL |
//! | `file:PATH` | user data from a local file |
//! | `ec2` | EC2 instance metadata, IMDSv2 (a session token first) |
//! | `gce` | Google Compute Engine metadata (`Metadata-Flavor: Google`) |
//! | `digitalocean` | DigitalOcean `metadata/v1.json` |
//! | `vmware` | VMware guestinfo through `vmware-rpctool` |
//! | `*` | configdrive, vmware, ec2, digitalocean, gce |
//!
//! Directories and files are below the [`Root`]; mounting the config drive is the boot
//! sequence's job. The cloud services' base URLs are in [`Endpoints`] so tests can point them at
//! a local server. Nothing here retries forever: [`fetch_first`] polls with a backoff until its
//! deadline.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CMDLINE_FILE, ConfigError, METADATA_FILE, cmdline, userdata, yaml};
use crate::fsutil::write_atomic;
use crate::root::Root;

/// What a datasource knows about the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub hostname: Option<String>,
    pub ssh_public_keys: Vec<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub private_ipv6: Option<String>,
    /// The disk the OS is on, if the source says (becomes `rancher.resize_device`).
    pub root_disk: Option<String>,
}

/// What a datasource returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub user_data: Option<Vec<u8>>,
    pub metadata: Metadata,
}

/// Why a datasource gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasourceError {
    /// Not present on this machine (no drive, no metadata server): try the next one.
    #[error("{0}: not available: {1}")]
    Unavailable(String, String),
    /// Present but broken.
    #[error("{0}: {1}")]
    Failed(String, String),
}

/// A place user data and metadata can come from.
pub trait Datasource {
    /// The spec it was made from, for messages.
    fn name(&self) -> String;
    /// Reads the user data and metadata.
    fn fetch(&self) -> Result<Fetched, DatasourceError>;
}

/// Base URLs of the cloud metadata services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ec2: String,
    pub gce: String,
    pub digitalocean: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            ec2: "http://169.254.169.254".into(),
            gce: "http://metadata.google.internal".into(),
            digitalocean: "http://169.254.169.254".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Largest user data or metadata document accepted.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// Builds the datasources a spec names (`*` names several).
pub fn from_spec(
    spec: &str,
    root: &Root,
    ep: &Endpoints,
) -> Result<Vec<Box<dyn Datasource>>, String> {
    let (kind, arg) = match spec.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (spec, None),
    };
    let http = Http::new(ep.timeout);
    let one: Box<dyn Datasource> = match kind {
        "configdrive" => Box::new(ConfigDrive {
            root: root.clone(),
            dir: arg.unwrap_or("/media/config-2").to_string(),
        }),
        "nocloud" => Box::new(NoCloud {
            root: root.clone(),
            dir: arg.unwrap_or("/media/cidata").to_string(),
        }),
        "file" => Box::new(File {
            root: root.clone(),
            path: arg.ok_or("file: needs a path")?.to_string(),
        }),
        "url" => Box::new(Url {
            http,
            url: arg.ok_or("url: needs a URL")?.to_string(),
        }),
        "cmdline" => Box::new(CmdlineUrl {
            root: root.clone(),
            http,
        }),
        "ec2" => Box::new(Ec2 {
            http,
            base: ep.ec2.clone(),
        }),
        "gce" => Box::new(Gce {
            http,
            base: ep.gce.clone(),
        }),
        "digitalocean" => Box::new(DigitalOcean {
            http,
            base: ep.digitalocean.clone(),
        }),
        "vmware" => Box::new(Vmware {
            guestinfo: Box::new(RpcTool),
        }),
        "*" => {
            let mut all = Vec::new();
            for s in ["configdrive", "vmware", "ec2", "digitalocean", "gce"] {
                all.extend(from_spec(s, root, ep)?);
            }
            return Ok(all);
        }
        "tftp" | "packet" | "cloudstack" | "exoscale" | "aliyun" | "azure" | "proxmox" => {
            return Err(format!("datasource {kind} is not supported by Paddock yet"));
        }
        other => return Err(format!("unknown datasource {other:?}")),
    };
    Ok(vec![one])
}

/// Polls `sources` in order until one returns data or `deadline` passes, backing off from
/// 100 ms to at most 30 s between rounds. A source that is present but broken is not retried.
/// Returns the winner's name and data, and what went wrong with the others.
pub fn fetch_first(
    sources: &[Box<dyn Datasource>],
    timeout: Duration,
) -> (Option<(String, Fetched)>, Vec<DatasourceError>) {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    let mut failed: Vec<DatasourceError> = Vec::new();
    let mut broken = vec![false; sources.len()];
    loop {
        let mut last: Vec<DatasourceError> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            if broken[i] {
                continue;
            }
            match s.fetch() {
                Ok(f) => return (Some((s.name(), f)), failed),
                Err(e @ DatasourceError::Failed(..)) => {
                    broken[i] = true;
                    failed.push(e);
                }
                Err(e) => last.push(e),
            }
        }
        let now = Instant::now();
        if now >= deadline || broken.iter().all(|b| *b) {
            failed.extend(last);
            return (None, failed);
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Saves what a datasource returned: the user data (see [`userdata::save`]) and the metadata
/// (JSON in [`METADATA_FILE`]). Returns the user data's warnings.
pub fn save(root: &Root, fetched: &Fetched) -> Result<Vec<String>, ConfigError> {
    let md = serde_json::to_vec_pretty(&fetched.metadata).unwrap_or_default();
    let p = root.path(METADATA_FILE);
    write_atomic(&p, &md, 0o600).map_err(|source| ConfigError::Io { path: p, source })?;
    match &fetched.user_data {
        Some(ud) => Ok(userdata::save(root, ud)?.warnings),
        None => Ok(Vec::new()),
    }
}

// ---- local sources ----

struct ConfigDrive {
    root: Root,
    dir: String,
}

impl Datasource for ConfigDrive {
    fn name(&self) -> String {
        format!("configdrive:{}", self.dir)
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let base = self.root.path(&self.dir).join("openstack/latest");
        let md_path = base.join("meta_data.json");
        let ud_path = base.join("user_data");
        if !md_path.exists() && !ud_path.exists() {
            return Err(DatasourceError::Unavailable(
                self.name(),
                format!("no {}", "openstack/latest/meta_data.json"),
            ));
        }
        let user_data =
            read_limited(&ud_path).map_err(|e| DatasourceError::Failed(self.name(), e))?;
        let mut metadata = Metadata::default();
        if let Some(bytes) =
            read_limited(&md_path).map_err(|e| DatasourceError::Failed(self.name(), e))?
        {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                DatasourceError::Failed(self.name(), format!("meta_data.json: {e}"))
            })?;
            metadata.hostname = str_at(&v, &["hostname"]).or_else(|| str_at(&v, &["name"]));
            if let Some(keys) = v.get("public_keys").and_then(Value::as_object) {
                metadata.ssh_public_keys = keys
                    .values()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect();
            }
        }
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

struct NoCloud {
    root: Root,
    dir: String,
}

impl Datasource for NoCloud {
    fn name(&self) -> String {
        format!("nocloud:{}", self.dir)
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let base = self.root.path(&self.dir);
        let md_path = base.join("meta-data");
        let ud_path = base.join("user-data");
        if !md_path.exists() && !ud_path.exists() {
            return Err(DatasourceError::Unavailable(
                self.name(),
                "no meta-data or user-data".into(),
            ));
        }
        let user_data =
            read_limited(&ud_path).map_err(|e| DatasourceError::Failed(self.name(), e))?;
        let mut metadata = Metadata::default();
        if let Some(bytes) =
            read_limited(&md_path).map_err(|e| DatasourceError::Failed(self.name(), e))?
        {
            let text = String::from_utf8_lossy(&bytes);
            let v = yaml::parse(&text)
                .map_err(|e| DatasourceError::Failed(self.name(), format!("meta-data: {e}")))?
                .value;
            metadata.hostname =
                str_at(&v, &["local-hostname"]).or_else(|| str_at(&v, &["hostname"]));
            metadata.ssh_public_keys = match v.get("public-keys") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                _ => Vec::new(),
            };
        }
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

struct File {
    root: Root,
    path: String,
}

impl Datasource for File {
    fn name(&self) -> String {
        format!("file:{}", self.path)
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        match read_limited(&self.root.path(&self.path)) {
            Ok(Some(b)) => Ok(Fetched {
                user_data: Some(b),
                metadata: Metadata::default(),
            }),
            Ok(None) => Err(DatasourceError::Unavailable(
                self.name(),
                "no such file".into(),
            )),
            Err(e) => Err(DatasourceError::Failed(self.name(), e)),
        }
    }
}

fn read_limited(p: &std::path::Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::File::open(p) {
        Ok(f) => {
            let mut out = Vec::new();
            f.take(MAX_BODY + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if out.len() as u64 > MAX_BODY {
                return Err(format!("{}: larger than {MAX_BODY} bytes", p.display()));
            }
            Ok(Some(out))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

// ---- HTTP ----

/// A small blocking HTTP client: no proxy, a timeout, bodies capped at [`MAX_BODY`].
#[derive(Clone)]
struct Http {
    agent: ureq::Agent,
}

/// An HTTP answer, or why there was none.
enum Reply {
    Ok(Vec<u8>),
    Status(u16),
}

impl Http {
    fn new(timeout: Duration) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(5)
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn request(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let result = if method == "PUT" {
            let mut r = self.agent.put(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send_empty()
        } else {
            let mut r = self.agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        };
        let mut resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Ok(Reply::Status(status));
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map(Reply::Ok)
            .map_err(|e| e.to_string())
    }

    /// GET: `Ok(None)` on 404.
    fn get(
        &self,
        name: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Vec<u8>>, DatasourceError> {
        match self.request("GET", url, headers) {
            Ok(Reply::Ok(b)) => Ok(Some(b)),
            Ok(Reply::Status(404)) => Ok(None),
            Ok(Reply::Status(s)) => Err(DatasourceError::Failed(
                name.into(),
                format!("{url}: HTTP status {s}"),
            )),
            Err(e) => Err(DatasourceError::Unavailable(
                name.into(),
                format!("{url}: {e}"),
            )),
        }
    }

    fn get_text(
        &self,
        name: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, DatasourceError> {
        Ok(self
            .get(name, url, headers)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty()))
    }
}

struct Url {
    http: Http,
    url: String,
}

impl Datasource for Url {
    fn name(&self) -> String {
        format!("url:{}", self.url)
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        match self.http.get(&self.name(), &self.url, &[])? {
            Some(b) => Ok(Fetched {
                user_data: Some(b),
                metadata: Metadata::default(),
            }),
            None => Err(DatasourceError::Failed(
                self.name(),
                "HTTP status 404".into(),
            )),
        }
    }
}

struct CmdlineUrl {
    root: Root,
    http: Http,
}

impl Datasource for CmdlineUrl {
    fn name(&self) -> String {
        "cmdline".into()
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let text = std::fs::read_to_string(self.root.path(CMDLINE_FILE)).map_err(|e| {
            DatasourceError::Unavailable(self.name(), format!("{CMDLINE_FILE}: {e}"))
        })?;
        let Some(url) = cmdline::parse(&text).cloud_config_url else {
            return Err(DatasourceError::Unavailable(
                self.name(),
                "no cloud-config-url= on the kernel command line".into(),
            ));
        };
        Url {
            http: self.http.clone(),
            url,
        }
        .fetch()
        .map_err(|e| match e {
            DatasourceError::Unavailable(_, m) => DatasourceError::Unavailable(self.name(), m),
            DatasourceError::Failed(_, m) => DatasourceError::Failed(self.name(), m),
        })
    }
}

// ---- clouds ----

struct Ec2 {
    http: Http,
    base: String,
}

impl Datasource for Ec2 {
    fn name(&self) -> String {
        "ec2".into()
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let n = self.name();
        let token = match self.http.request(
            "PUT",
            &format!("{}/latest/api/token", self.base),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        ) {
            Ok(Reply::Ok(t)) => String::from_utf8_lossy(&t).trim().to_string(),
            Ok(Reply::Status(s)) => {
                return Err(DatasourceError::Failed(
                    n,
                    format!("IMDSv2 token: HTTP status {s}"),
                ));
            }
            Err(e) => return Err(DatasourceError::Unavailable(n, e)),
        };
        let h = [("X-aws-ec2-metadata-token", token.as_str())];
        let md = |p: &str| {
            self.http
                .get_text(&n, &format!("{}/latest/meta-data/{p}", self.base), &h)
        };
        let mut metadata = Metadata {
            hostname: md("local-hostname")?,
            public_ipv4: md("public-ipv4")?,
            private_ipv4: md("local-ipv4")?,
            public_ipv6: md("ipv6")?,
            ..Default::default()
        };
        if let Some(list) = md("public-keys/")? {
            for line in list.lines() {
                let idx = line.split('=').next().unwrap_or("").trim();
                if idx.is_empty() || !idx.chars().all(|c| c.is_ascii_digit()) {
                    continue;
                }
                if let Some(k) = md(&format!("public-keys/{idx}/openssh-key"))? {
                    metadata.ssh_public_keys.push(k);
                }
            }
        }
        let user_data = self
            .http
            .get(&n, &format!("{}/latest/user-data", self.base), &h)?;
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

struct Gce {
    http: Http,
    base: String,
}

impl Datasource for Gce {
    fn name(&self) -> String {
        "gce".into()
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let n = self.name();
        let h = [("Metadata-Flavor", "Google")];
        let get = |p: &str| {
            self.http
                .get_text(&n, &format!("{}/computeMetadata/v1/{p}", self.base), &h)
        };
        let mut metadata = Metadata {
            hostname: get("instance/hostname")?,
            private_ipv4: get("instance/network-interfaces/0/ip")?,
            public_ipv4: get("instance/network-interfaces/0/access-configs/0/external-ip")?,
            ..Default::default()
        };
        for p in [
            "project/attributes/ssh-keys",
            "instance/attributes/ssh-keys",
        ] {
            if let Some(keys) = get(p)? {
                for line in keys.lines() {
                    // `user:ssh-rsa AAAA... comment`
                    let key = match line.split_once(':') {
                        Some((user, k)) if !user.contains(' ') => k,
                        _ => line,
                    };
                    if !key.trim().is_empty() {
                        metadata.ssh_public_keys.push(key.trim().to_string());
                    }
                }
            }
        }
        let user_data = self.http.get(
            &n,
            &format!(
                "{}/computeMetadata/v1/instance/attributes/user-data",
                self.base
            ),
            &h,
        )?;
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

struct DigitalOcean {
    http: Http,
    base: String,
}

impl Datasource for DigitalOcean {
    fn name(&self) -> String {
        "digitalocean".into()
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let n = self.name();
        let Some(body) = self
            .http
            .get(&n, &format!("{}/metadata/v1.json", self.base), &[])?
        else {
            return Err(DatasourceError::Unavailable(
                n,
                "no metadata/v1.json".into(),
            ));
        };
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| DatasourceError::Failed(n.clone(), format!("v1.json: {e}")))?;
        let ip = |kind: &str, fam: &str| {
            v.get("interfaces")
                .and_then(|i| i.get(kind))
                .and_then(|l| l.get(0))
                .and_then(|i| i.get(fam))
                .and_then(|a| a.get("ip_address"))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let metadata = Metadata {
            hostname: str_at(&v, &["hostname"]),
            ssh_public_keys: v
                .get("public_keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            public_ipv4: ip("public", "ipv4"),
            private_ipv4: ip("private", "ipv4"),
            public_ipv6: ip("public", "ipv6"),
            private_ipv6: None,
            root_disk: None,
        };
        let user_data = v
            .get("user_data")
            .and_then(Value::as_str)
            .map(|s| s.as_bytes().to_vec());
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

// ---- VMware ----

/// Reads VMware guestinfo keys (`guestinfo.` is added by the implementation).
pub trait GuestInfo {
    /// `Err` when guestinfo cannot be reached at all.
    fn get(&self, key: &str) -> Result<Option<String>, String>;
}

/// guestinfo through `vmware-rpctool` (open-vm-tools), found on `PATH`.
pub struct RpcTool;

impl GuestInfo for RpcTool {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        let out = std::process::Command::new("vmware-rpctool")
            .arg(format!("info-get guestinfo.{key}"))
            .output()
            .map_err(|e| format!("needs vmware-rpctool from open-vm-tools: {e}"))?;
        if !out.status.success() {
            return Ok(None);
        }
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((!s.is_empty()).then_some(s))
    }
}

/// The VMware datasource over any [`GuestInfo`] (tests use a map).
pub struct Vmware {
    pub guestinfo: Box<dyn GuestInfo>,
}

impl Datasource for Vmware {
    fn name(&self) -> String {
        "vmware".into()
    }

    fn fetch(&self) -> Result<Fetched, DatasourceError> {
        let n = self.name();
        let get = |k: &str| {
            self.guestinfo
                .get(k)
                .map_err(|e| DatasourceError::Unavailable(n.clone(), e))
        };
        let data = get("cloud-init.config.data")?;
        let url = get("cloud-init.config.url")?;
        let user_data = match (data, url) {
            (Some(d), _) => {
                let enc = get("cloud-init.data.encoding")?.unwrap_or_default();
                let bytes = match enc.as_str() {
                    "" => d.into_bytes(),
                    "base64" | "b64" => {
                        super::decode_content(&d, Some(super::model::Encoding::Base64))
                            .map_err(|e| DatasourceError::Failed(n.clone(), e))?
                    }
                    "gzip+base64" | "gz+b64" | "gz+base64" | "gzip+b64" => {
                        super::decode_content(&d, Some(super::model::Encoding::GzipBase64))
                            .map_err(|e| DatasourceError::Failed(n.clone(), e))?
                    }
                    other => {
                        return Err(DatasourceError::Failed(
                            n,
                            format!("unknown cloud-init.data.encoding {other:?}"),
                        ));
                    }
                };
                Some(bytes)
            }
            (None, Some(u)) => {
                Url {
                    http: Http::new(Duration::from_secs(10)),
                    url: u,
                }
                .fetch()?
                .user_data
            }
            (None, None) => None,
        };
        let metadata = Metadata {
            hostname: get("hostname")?,
            ..Default::default()
        };
        if user_data.is_none() && metadata.hostname.is_none() {
            return Err(DatasourceError::Unavailable(
                n,
                "no cloud-init guestinfo".into(),
            ));
        }
        Ok(Fetched {
            user_data,
            metadata,
        })
    }
}

/// An in-memory [`GuestInfo`].
impl GuestInfo for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}
