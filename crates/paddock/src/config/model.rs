//! The typed cloud-config: every key RancherOS 1.x/BurmillaOS knew (rancher/os
//! `config/types.go`, `pkg/netconf/types.go`), plus `write_files[].append` from cloud-init.
//!
//! The typed model is what the rest of Paddock reads. It is decoded from the generic tree by
//! [`super::de::decode`], which reports unknown keys with their dotted path; the unknown keys
//! themselves stay in the generic tree, which is what `ros config` reads and writes, so nothing
//! a user wrote is lost on a round trip. Maps whose keys are the user's own (services,
//! interfaces, environment, sysctl, ...) are `BTreeMap`s and never warn.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value};

use super::types::{AbsPath, FileMode, Hostname, Line, OneOrMany, Seconds};

/// The whole cloud-config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CloudConfig {
    /// Public keys for the `rancher` and `docker` users of the console.
    pub ssh_authorized_keys: Vec<Line>,
    pub write_files: Vec<WriteFile>,
    /// Beats the hostname from metadata and `rancher.defaults.hostname`.
    pub hostname: Option<Hostname>,
    /// `[device, mountpoint, fstype, options]`, the last two optional.
    pub mounts: Vec<Mount>,
    /// Run in the console before the user docker starts.
    pub runcmd: Vec<Command>,
    /// Run early, before System Docker.
    pub bootcmd: Vec<Command>,
    pub rancher: Rancher,
}

/// A file written at boot.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteFile {
    pub path: AbsPath,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub encoding: Option<Encoding>,
    #[serde(default)]
    pub owner: Option<Line>,
    #[serde(default)]
    pub permissions: Option<FileMode>,
    /// The system container to write the file in; `console` when absent.
    #[serde(default)]
    pub container: Option<Line>,
    /// Append to the file instead of replacing it (cloud-init's key; BurmillaOS documented it
    /// but ignored it).
    #[serde(default)]
    pub append: bool,
}

/// How `write_files[].content` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base64,
    Gzip,
    GzipBase64,
}

impl Encoding {
    pub fn parse(s: &str) -> Result<Encoding, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "b64" | "base64" => Ok(Encoding::Base64),
            "gz" | "gzip" => Ok(Encoding::Gzip),
            "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => Ok(Encoding::GzipBase64),
            other => Err(format!(
                "unknown encoding {other:?} (expected b64, gzip or gzip+base64)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Encoding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Encoding::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// One `mounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: Line,
    pub mountpoint: AbsPath,
    pub fstype: Option<Line>,
    pub options: Option<Line>,
}

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<Line> = Vec::deserialize(d)?;
        if items.len() < 2 || items.len() > 4 {
            return Err(de::Error::custom(format!(
                "a mount is [device, mountpoint, fstype, options] (2 to 4 items), found {} items",
                items.len()
            )));
        }
        let nonempty = |i: usize| items.get(i).filter(|s| !s.is_empty()).cloned();
        Ok(Mount {
            device: items[0].clone(),
            mountpoint: AbsPath::new(items[1].as_str()).map_err(de::Error::custom)?,
            fstype: nonempty(2),
            options: nonempty(3),
        })
    }
}

/// A `runcmd`/`bootcmd` entry: a shell string (run with `sh -c`) or an argv list. An empty list
/// does nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command string or a list of arguments")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
                Ok(Command::Shell(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Command, E> {
                Ok(Command::Shell(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Command, E> {
                Ok(Command::Shell(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Command, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<String>()? {
                    out.push(x);
                }
                Ok(Command::Argv(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A compose service definition. Compose has many keys and they belong to the service
/// runner, so only the ones the config layer needs are typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service(pub Map<String, Value>);

impl Service {
    /// The image, if the service names one.
    pub fn image(&self) -> Option<&str> {
        self.0.get("image").and_then(Value::as_str)
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: Option<Map<String, Value>> = Option::deserialize(d)?;
        let m = m.unwrap_or_default();
        if let Some(img) = m.get("image") {
            match img.as_str() {
                Some(s) if !s.trim().is_empty() => {
                    Line::new(s).map_err(|e| de::Error::custom(format!("image: {e}")))?;
                }
                _ => return Err(de::Error::custom("image must be a non-empty string")),
            }
        }
        Ok(Service(m))
    }
}

/// The `rancher:` tree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Rancher {
    /// Console name (`default`, `debian`, ...), URL or local file.
    pub console: Option<Line>,
    /// Environment for service interpolation and `ros env`.
    pub environment: BTreeMap<String, Option<String>>,
    pub services: BTreeMap<String, Service>,
    /// `name | URL | /var/lib/rancher/conf/x.yml` → enabled.
    pub services_include: BTreeMap<String, bool>,
    pub bootstrap: BTreeMap<String, Service>,
    pub cloud_init_services: BTreeMap<String, Service>,
    pub bootstrap_docker: Docker,
    pub system_docker: Docker,
    pub docker: Docker,
    pub cloud_init: CloudInit,
    pub debug: Option<bool>,
    pub log: Option<bool>,
    pub rm_usr: Option<bool>,
    pub no_sharedroot: Option<bool>,
    pub force_console_rebuild: Option<bool>,
    pub recovery: Option<bool>,
    /// `password` and/or `autologin`.
    pub disable: Vec<Line>,
    /// Kernel modules, each optionally followed by parameters (`nbd nbds_max=1024`).
    pub modules: Vec<Line>,
    pub network: Network,
    pub repositories: BTreeMap<String, Repository>,
    pub ssh: Ssh,
    pub state: State,
    pub upgrade: Upgrade,
    pub registry_auths: BTreeMap<String, RegistryAuth>,
    pub defaults: Defaults,
    pub resize_device: Option<Line>,
    /// `a.b.c` → value, written to /proc/sys/a/b/c.
    pub sysctl: BTreeMap<String, Line>,
    pub restart_services: Vec<Line>,
    pub hypervisor_service: Option<bool>,
    pub shutdown_timeout: Option<Seconds>,
    pub http_load_retries: Option<u32>,
    pub preload_wait: Option<bool>,
    /// Usually from the kernel command line only.
    pub password: Option<Line>,
    pub autologin: OneOrMany<Line>,
}

/// A Docker daemon's settings (`bootstrap_docker`, `system_docker`, `docker`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Docker {
    /// os-services engine name (`docker-17.06.1-ce`).
    pub engine: Option<Line>,
    pub image: Option<Line>,
    pub tls: Option<bool>,
    pub tls_args: Vec<Line>,
    pub server_cert: Option<String>,
    pub server_key: Option<String>,
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub args: Vec<Line>,
    pub extra_args: Vec<Line>,
    /// `K=V` for the daemon.
    pub environment: Vec<Line>,
    pub storage_context: Option<Line>,
    pub exec: Option<bool>,
    pub userns_enabled: Option<bool>,
    pub bridge: Option<Line>,
    pub bip: Option<Line>,
    pub config_file: Option<AbsPath>,
    pub containerd: Option<Line>,
    pub debug: Option<bool>,
    pub exec_root: Option<AbsPath>,
    pub group: Option<Line>,
    pub graph: Option<AbsPath>,
    pub data_root: Option<AbsPath>,
    pub host: Vec<Line>,
    pub insecure_registry: Vec<Line>,
    pub live_restore: Option<bool>,
    pub log_driver: Option<Line>,
    pub log_opts: BTreeMap<String, Line>,
    pub pid_file: Option<AbsPath>,
    pub registry_mirror: Option<Line>,
    pub restart: Option<bool>,
    pub selinux_enabled: Option<bool>,
    pub storage_driver: Option<Line>,
    pub userland_proxy: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CloudInit {
    /// `type[:arg]`, e.g. `configdrive:/media/config-2`, `url:https://...`, `ec2`.
    pub datasources: Vec<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Network {
    pub dns: Dns,
    pub dhcp_timeout: Option<Seconds>,
    pub pre_cmds: Vec<String>,
    pub post_cmds: Vec<String>,
    pub http_proxy: Option<Line>,
    pub https_proxy: Option<Line>,
    pub no_proxy: Option<Line>,
    /// By name, glob (`eth*`) or `mac=..`.
    pub interfaces: BTreeMap<String, Interface>,
    pub wifi_networks: BTreeMap<String, WifiNetwork>,
    pub modem_networks: BTreeMap<String, ModemNetwork>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<Line>,
    pub search: Vec<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Interface {
    #[serde(rename = "match")]
    pub match_: Option<Line>,
    pub dhcp: Option<bool>,
    pub dhcp_args: Option<Line>,
    pub address: Option<Line>,
    pub addresses: Vec<Line>,
    pub ipv4ll: Option<bool>,
    pub gateway: Option<Line>,
    pub gateway_ipv6: Option<Line>,
    pub mtu: Option<u32>,
    pub bridge: Option<Bridge>,
    pub bond: Option<Line>,
    pub bond_opts: BTreeMap<String, Line>,
    /// `100` or `100,200:name`.
    pub vlans: Option<Line>,
    pub pre_up: Vec<String>,
    pub post_up: Vec<String>,
    pub wifi_network: Option<Line>,
}

/// `bridge: true` makes the interface a bridge; `bridge: br0` enslaves it to br0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bridge {
    Is(bool),
    MemberOf(Line),
}

impl<'de> Deserialize<'de> for Bridge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bridge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a bridge name")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bridge, E> {
                Ok(Bridge::Is(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bridge, E> {
                match v {
                    "true" => Ok(Bridge::Is(true)),
                    "false" => Ok(Bridge::Is(false)),
                    name => Line::new(name).map(Bridge::MemberOf).map_err(E::custom),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WifiNetwork {
    pub ssid: Option<Line>,
    pub psk: Option<Line>,
    pub scan_ssid: Option<i64>,
    pub priority: Option<i64>,
    pub key_mgmt: Option<Line>,
    pub pairwise: Option<Line>,
    pub group: Option<Line>,
    pub eap: Option<Line>,
    pub identity: Option<Line>,
    pub anonymous_identity: Option<Line>,
    pub password: Option<Line>,
    pub ca_certs: Option<Line>,
    pub client_certs: Option<Line>,
    pub private_keys: Option<Line>,
    pub private_key_passwds: Option<Line>,
    pub phases: Option<Line>,
    pub eapol_flags: Option<Line>,
    pub address: Option<Line>,
    pub gateway: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModemNetwork {
    pub apn: Option<Line>,
    pub extra_args: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Repository {
    pub url: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Ssh {
    /// Persisted host keys by type (`rsa`, `rsa-pub`, ...).
    pub keys: BTreeMap<String, String>,
    pub daemon: Option<bool>,
    pub port: Option<u16>,
    pub listen_address: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct State {
    /// `LABEL=RANCHER_STATE`; `none` disables.
    pub dev: Option<Line>,
    pub fstype: Option<Line>,
    pub directory: Option<Line>,
    pub wait: Option<bool>,
    pub required: Option<bool>,
    pub autoformat: Vec<Line>,
    pub mdadm_scan: Option<bool>,
    pub lvm_scan: Option<bool>,
    pub cryptsetup: Option<bool>,
    pub rngd: Option<bool>,
    pub script: Option<String>,
    pub oem_dev: Option<Line>,
    pub oem_fstype: Option<Line>,
    pub boot_dev: Option<Line>,
    pub boot_fstype: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Upgrade {
    pub url: Option<Line>,
    pub image: Option<Line>,
    pub rollback: Option<Line>,
    pub policy: Option<Line>,
}

/// Docker's AuthConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RegistryAuth {
    /// base64 of `user:password`.
    pub auth: Option<Line>,
    pub username: Option<Line>,
    pub password: Option<Line>,
    pub email: Option<Line>,
    pub serveraddress: Option<Line>,
    pub identitytoken: Option<Line>,
    pub registrytoken: Option<Line>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Defaults {
    pub hostname: Option<Hostname>,
    pub docker: Docker,
    pub network: Network,
    pub system_docker_logs: Option<AbsPath>,
}
