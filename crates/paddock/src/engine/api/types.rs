//! Docker Engine API JSON types (the subset the system engine serves).
//!
//! Field names follow the Docker Engine API (PascalCase on the wire). Unknown fields in request
//! bodies are ignored by serde, so newer clients can send more than we model; the HostConfig
//! fields the system engine implements are typed so the engine can act on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Accepts `null`, a string or an array of strings (Docker's `strslice`).
fn string_or_list<'de, D>(de: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(de)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// Accepts `null` as the default value (Go clients send `null` for nil slices and maps).
fn null_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// `GET /version`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Version {
    pub platform: Platform,
    pub components: Vec<ComponentVersion>,
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub git_commit: String,
    pub go_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
    pub build_time: String,
    pub experimental: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Platform {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComponentVersion {
    pub name: String,
    pub version: String,
    pub details: BTreeMap<String, String>,
}

impl Version {
    /// A `Version` for the system engine at `version`, with the host's OS/arch filled in. The
    /// server overwrites `ApiVersion`/`MinAPIVersion` with what it actually negotiates.
    pub fn system_engine(version: &str, kernel_version: &str) -> Version {
        let mut details = BTreeMap::new();
        details.insert("ApiVersion".to_string(), super::API_VERSION.to_string());
        details.insert(
            "MinAPIVersion".to_string(),
            super::MIN_API_VERSION.to_string(),
        );
        details.insert("Os".to_string(), std::env::consts::OS.to_string());
        details.insert("Arch".to_string(), go_arch().to_string());
        Version {
            platform: Platform {
                name: "Paddock system engine".to_string(),
            },
            components: vec![ComponentVersion {
                name: "Engine".to_string(),
                version: version.to_string(),
                details,
            }],
            version: version.to_string(),
            api_version: super::API_VERSION.to_string(),
            min_api_version: super::MIN_API_VERSION.to_string(),
            git_commit: String::new(),
            go_version: "rust".to_string(),
            os: std::env::consts::OS.to_string(),
            arch: go_arch().to_string(),
            kernel_version: kernel_version.to_string(),
            build_time: String::new(),
            experimental: false,
        }
    }
}

/// The architecture name as Go (and so Docker) spells it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `GET /info` (the fields the docker CLI renders; the rest are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    #[serde(rename = "ID")]
    pub id: String,
    pub containers: i64,
    pub containers_running: i64,
    pub containers_paused: i64,
    pub containers_stopped: i64,
    pub images: i64,
    pub driver: String,
    pub driver_status: Vec<[String; 2]>,
    pub memory_limit: bool,
    pub swap_limit: bool,
    pub cpu_cfs_period: bool,
    pub cpu_cfs_quota: bool,
    #[serde(rename = "CPUShares")]
    pub cpu_shares: bool,
    pub pids_limit: bool,
    #[serde(rename = "OomKillDisable")]
    pub oom_kill_disable: bool,
    #[serde(rename = "IPv4Forwarding")]
    pub ipv4_forwarding: bool,
    pub debug: bool,
    #[serde(rename = "NFd")]
    pub nfd: i64,
    pub n_goroutines: i64,
    pub system_time: String,
    pub logging_driver: String,
    pub cgroup_driver: String,
    pub cgroup_version: String,
    pub n_events_listener: i64,
    pub kernel_version: String,
    pub operating_system: String,
    #[serde(rename = "OSVersion")]
    pub os_version: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    #[serde(rename = "NCPU")]
    pub ncpu: i64,
    pub mem_total: i64,
    pub docker_root_dir: String,
    pub name: String,
    pub labels: Vec<String>,
    pub experimental_build: bool,
    pub server_version: String,
    pub runtimes: BTreeMap<String, Runtime>,
    pub default_runtime: String,
    pub swarm: SwarmInfo,
    pub live_restore_enabled: bool,
    pub isolation: String,
    pub init_binary: String,
    pub security_options: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Runtime {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInfo {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_addr: String,
    pub local_node_state: String,
    pub control_available: bool,
    pub error: String,
}

impl Default for SwarmInfo {
    fn default() -> Self {
        SwarmInfo {
            node_id: String::new(),
            node_addr: String::new(),
            local_node_state: "inactive".to_string(),
            control_available: false,
            error: String::new(),
        }
    }
}

/// The container `Config` (also the top level of the create body).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(deserialize_with = "string_or_list")]
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub working_dir: String,
    #[serde(deserialize_with = "string_or_list")]
    pub entrypoint: Option<Vec<String>>,
    pub network_disabled: bool,
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    /// Seconds.
    pub stop_timeout: Option<i64>,
    #[serde(deserialize_with = "string_or_list")]
    pub shell: Option<Vec<String>>,
}

/// `HostConfig.RestartPolicy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// "", "no", "always", "on-failure", "unless-stopped".
    pub name: String,
    pub maximum_retry_count: i64,
}

/// `HostConfig.LogConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(deserialize_with = "null_default")]
    pub config: BTreeMap<String, String>,
}

/// `HostConfig.Devices[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

/// `HostConfig.Ulimits[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// `HostConfig.Mounts[]` (the `--mount` form).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    /// "bind", "volume", "tmpfs".
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub consistency: String,
    pub bind_options: Option<BindOptions>,
    pub volume_options: Option<VolumeOptions>,
    pub tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    /// "private", "rprivate", "shared", "rshared", "slave", "rslave".
    pub propagation: String,
    pub non_recursive: bool,
    pub create_mountpoint: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeOptions {
    pub no_copy: bool,
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    pub subpath: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TmpfsOptions {
    pub size_bytes: i64,
    pub mode: u32,
}

/// `HostConfig` of create and inspect.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// `src:dst[:opts]` with opts among ro, rw, shared, rshared, slave, rslave, private,
    /// rprivate, z, Z, nocopy.
    #[serde(deserialize_with = "null_default")]
    pub binds: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub mounts: Vec<Mount>,
    pub privileged: bool,
    #[serde(deserialize_with = "null_default")]
    pub cap_add: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub cap_drop: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub devices: Vec<DeviceMapping>,
    /// "host", "none"; "" and "default" mean the engine default.
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    pub readonly_rootfs: bool,
    /// Mount point -> mount options.
    #[serde(deserialize_with = "null_default")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub ulimits: Vec<Ulimit>,
    /// Bytes; 0 = unlimited.
    pub memory: i64,
    pub memory_swap: i64,
    pub memory_reservation: i64,
    /// CPU quota in units of 1e-9 CPUs; 0 = unlimited.
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpuset_cpus: String,
    /// None or <= 0 = unlimited.
    pub pids_limit: Option<i64>,
    pub oom_score_adj: i64,
    pub oom_kill_disable: Option<bool>,
    pub restart_policy: RestartPolicy,
    #[serde(deserialize_with = "null_default")]
    pub volumes_from: Vec<String>,
    pub auto_remove: bool,
    pub log_config: LogConfig,
    pub init: Option<bool>,
    #[serde(deserialize_with = "null_default")]
    pub group_add: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub security_opt: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub dns: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub extra_hosts: Vec<String>,
    pub shm_size: i64,
    /// `[height, width]` of the initial tty.
    pub console_size: Option<[u32; 2]>,
    /// Port publishing needs a bridge network, which the system engine does not have; the
    /// engine should reject a non-empty value.
    pub port_bindings: Option<BTreeMap<String, serde_json::Value>>,
    pub publish_all_ports: bool,
}

/// The body of `POST /containers/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateBody {
    #[serde(flatten)]
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub networking_config: Option<serde_json::Value>,
}

/// The answer of create calls: `{"Id": ..., "Warnings": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateResponse {
    pub id: String,
    pub warnings: Vec<String>,
}

/// `{"Id": ...}` (exec create).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct IdResponse {
    pub id: String,
}

/// A port in `ContainerSummary.Ports`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Port {
    #[serde(rename = "IP")]
    pub ip: String,
    pub private_port: u16,
    pub public_port: u16,
    #[serde(rename = "Type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SummaryHostConfig {
    pub network_mode: String,
}

/// A mount as inspect and list show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    #[serde(rename = "Type")]
    pub kind: String,
    pub name: String,
    pub source: String,
    pub destination: String,
    pub driver: String,
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    pub propagation: String,
}

/// An entry of `GET /containers/json`. Names carry a leading `/` as in Docker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    pub ports: Vec<Port>,
    pub labels: BTreeMap<String, String>,
    /// "created", "running", "paused", "restarting", "removing", "exited", "dead".
    pub state: String,
    /// Human text, e.g. "Up 5 minutes", "Exited (0) 3 seconds ago".
    pub status: String,
    pub host_config: SummaryHostConfig,
    pub mounts: Vec<MountPoint>,
}

/// `ContainerInspect.State`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    /// RFC 3339 with nanoseconds; "0001-01-01T00:00:00Z" when never.
    pub started_at: String,
    pub finished_at: String,
}

/// `GET /containers/{id}/json`. `Name` carries a leading `/` as in Docker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: String,
    /// RFC 3339.
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub image: String,
    pub resolv_conf_path: String,
    pub hostname_path: String,
    pub hosts_path: String,
    pub log_path: String,
    pub name: String,
    pub restart_count: i64,
    pub driver: String,
    pub platform: String,
    pub mount_label: String,
    pub process_label: String,
    pub app_armor_profile: String,
    #[serde(rename = "ExecIDs")]
    pub exec_ids: Option<Vec<String>>,
    pub host_config: HostConfig,
    pub mounts: Vec<MountPoint>,
    pub config: ContainerConfig,
    pub network_settings: NetworkSettings,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    pub networks: BTreeMap<String, serde_json::Value>,
}

/// The body of `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecCreateBody {
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub detach_keys: String,
    pub tty: bool,
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    pub privileged: bool,
    pub user: String,
    pub working_dir: String,
    pub console_size: Option<[u32; 2]>,
}

/// The body of `POST /exec/{id}/start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecStartBody {
    pub detach: bool,
    pub tty: bool,
    pub console_size: Option<[u32; 2]>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecProcessConfig {
    pub arguments: Vec<String>,
    pub entrypoint: String,
    pub privileged: bool,
    pub tty: bool,
    pub user: String,
}

/// `GET /exec/{id}/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub running: bool,
    /// None while it has not exited.
    pub exit_code: Option<i64>,
    pub process_config: ExecProcessConfig,
    pub open_stdin: bool,
    pub open_stderr: bool,
    pub open_stdout: bool,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub pid: i64,
}

/// The JSON the wait endpoint streams once the condition is met.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct WaitResponse {
    pub status_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<WaitError>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct WaitError {
    pub message: String,
}

/// An entry of `GET /images/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: i64,
    pub shared_size: i64,
    pub labels: BTreeMap<String, String>,
    pub containers: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

/// The image config as inspect shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// `GET /images/{name}/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    /// RFC 3339.
    pub created: String,
    pub author: String,
    pub config: ImageConfig,
    pub architecture: String,
    pub variant: String,
    pub os: String,
    pub size: i64,
    pub root_fs: RootFs,
}

/// An entry of the `DELETE /images/{name}` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDeleteItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

/// A JSON message of the pull/load progress streams (Docker's `jsonmessage`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProgressMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<ProgressDetail>,
    /// Plain text output (what `docker load` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "errorDetail", skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProgressDetail {
    pub current: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ErrorDetail {
    pub message: String,
}

impl ProgressMessage {
    /// `{"status": status, "id": id}`.
    pub fn status(id: Option<&str>, status: &str) -> ProgressMessage {
        ProgressMessage {
            status: Some(status.to_string()),
            id: id.map(str::to_string),
            ..ProgressMessage::default()
        }
    }

    /// `{"stream": text}`.
    pub fn stream(text: &str) -> ProgressMessage {
        ProgressMessage {
            stream: Some(text.to_string()),
            ..ProgressMessage::default()
        }
    }

    /// An in-band error: the CLI prints it and exits non-zero.
    pub fn error(message: &str) -> ProgressMessage {
        ProgressMessage {
            error: Some(message.to_string()),
            error_detail: Some(ErrorDetail {
                message: message.to_string(),
            }),
            ..ProgressMessage::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn create_body_from_the_cli_shape() {
        let body = r#"{"Hostname":"","Env":null,"Cmd":["sh","-c","exit 3"],"Image":"busybox",
            "Entrypoint":"/init","Labels":{"a":"b"},"Unknown":{"x":1},
            "HostConfig":{"Binds":["/a:/b:rshared"],"CapAdd":null,"CapDrop":["ALL"],
              "UTSMode":"host","NanoCpus":500000000,"PidsLimit":null,
              "RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3},
              "Tmpfs":{"/run":"size=1m"},"Ulimits":[{"Name":"nofile","Soft":10,"Hard":20}],
              "Mounts":[{"Type":"bind","Source":"/x","Target":"/y","BindOptions":{"Propagation":"shared"}}]}}"#;
        let parsed: ContainerCreateBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.config.image, "busybox");
        assert_eq!(
            parsed.config.cmd,
            Some(vec!["sh".into(), "-c".into(), "exit 3".into()])
        );
        assert_eq!(parsed.config.entrypoint, Some(vec!["/init".into()]));
        assert!(parsed.config.env.is_empty());
        assert_eq!(parsed.host_config.binds, vec!["/a:/b:rshared".to_string()]);
        assert_eq!(parsed.host_config.cap_drop, vec!["ALL".to_string()]);
        assert_eq!(parsed.host_config.uts_mode, "host");
        assert_eq!(parsed.host_config.nano_cpus, 500_000_000);
        assert_eq!(parsed.host_config.pids_limit, None);
        assert_eq!(parsed.host_config.restart_policy.maximum_retry_count, 3);
        assert_eq!(parsed.host_config.ulimits[0].hard, 20);
        assert_eq!(
            parsed.host_config.mounts[0]
                .bind_options
                .as_ref()
                .map(|b| b.propagation.as_str()),
            Some("shared")
        );
    }

    #[test]
    fn inspect_uses_docker_field_names() {
        let mut inspect = ContainerInspect::default();
        inspect.state.oom_killed = true;
        inspect.host_config.uts_mode = "host".into();
        let json = serde_json::to_value(&inspect).unwrap();
        assert_eq!(json["State"]["OOMKilled"], true);
        assert_eq!(json["HostConfig"]["UTSMode"], "host");
        assert!(json.get("ExecIDs").is_some());
    }
}
