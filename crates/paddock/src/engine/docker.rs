//! The engine as the Docker API sees it: [`api::Backend`] implemented over [`Engine`], and
//! the translation of docker's create body into a [`ContainerSpec`].

use std::io::{Read, Write};
use std::sync::Arc;

use super::api::backend::{
    AttachOptions, Backend, ContainerListOptions, ImageListOptions, ImageRemoveOptions, LogChunk,
    LogStream, LogsOptions, ProgressStream, PullOptions, RemoveOptions, Session, StopOptions,
    TarWriter, TtySize, WaitCondition, Waiter, container_matches, image_matches,
};
use super::api::error::ApiError;
use super::api::stream::{HijackedIo, StreamKind};
use super::api::types::{
    ContainerConfig as ApiConfig, ContainerCreateBody, ContainerCreateResponse, ContainerInspect,
    ContainerState, ContainerSummary, ExecCreateBody, ExecInspect, ExecProcessConfig,
    ExecStartBody, HostConfig, IdResponse, ImageConfig as ApiImageConfig, ImageDeleteItem,
    ImageInspect, ImageSummary, Info, MountPoint as ApiMount, ProgressMessage,
    RestartPolicy as ApiRestart, RootFs, SummaryHostConfig, Version, WaitResponse,
};
use super::daemon::{Container, Engine, EngineError, Status};
use super::exec::ExecRequest;
use super::spec::{ContainerSpec, Device, MountSpec, NsMode, RestartPolicy, Ulimit, parse_bind};
use super::time::parse_rfc3339;
use crate::image::progress::Progress;
use crate::image::reference::familiar;
use crate::image::registry::ClientOptions;

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::NoSuchContainer(id) => ApiError::no_such_container(&id),
            EngineError::NoSuchImage(i) => ApiError::no_such_image(&i),
            EngineError::NoSuchExec(i) => ApiError::no_such_exec(&i),
            EngineError::Conflict(m) => ApiError::conflict(m),
            EngineError::NotModified(_) => ApiError::not_modified(),
            EngineError::Invalid(m) => ApiError::bad_parameter(m),
            EngineError::Internal(m) => ApiError::internal(m),
        }
    }
}

fn ns_mode(what: &str, v: &str, network: bool) -> Result<NsMode, ApiError> {
    match v {
        "host" => Ok(NsMode::Host),
        "" | "private" | "shareable" if !network => Ok(NsMode::Private),
        // The system engine has no bridge: a container without `host` networking gets its own
        // network namespace with only `lo`, as RancherOS's system-docker with `bridge: none`.
        "" | "default" | "none" if network => Ok(NsMode::None),
        other if network => Err(ApiError::bad_parameter(format!(
            "network mode {other:?} is not supported by the system engine (no bridge network for system containers): use host or none"
        ))),
        other => Err(ApiError::bad_parameter(format!(
            "{what} mode {other:?} is not supported by the system engine: use host or leave it empty"
        ))),
    }
}

/// Translates docker's create body into the engine's spec.
pub fn spec_from_create(body: &ContainerCreateBody) -> Result<ContainerSpec, ApiError> {
    let c: &ApiConfig = &body.config;
    let h: &HostConfig = &body.host_config;
    if c.image.is_empty() {
        return Err(ApiError::bad_parameter("no image given"));
    }
    let mut mounts = vec![];
    for b in &h.binds {
        mounts.push(parse_bind(b).map_err(ApiError::bad_parameter)?);
    }
    for m in &h.mounts {
        let kind = match m.kind.as_str() {
            "bind" | "volume" | "tmpfs" => m.kind.clone(),
            other => {
                return Err(ApiError::bad_parameter(format!(
                    "mount type {other:?} is not supported by the system engine"
                )));
            }
        };
        let mut options = String::new();
        if let Some(t) = &m.tmpfs_options {
            let mut o = vec![];
            if t.size_bytes > 0 {
                o.push(format!("size={}", t.size_bytes));
            }
            if t.mode > 0 {
                o.push(format!("mode={:o}", t.mode));
            }
            options = o.join(",");
        }
        mounts.push(MountSpec {
            kind,
            source: m.source.clone(),
            destination: m.target.clone(),
            read_only: m.read_only,
            propagation: m
                .bind_options
                .as_ref()
                .map(|b| b.propagation.clone())
                .unwrap_or_default(),
            options,
        });
    }
    // `-v /path` (no host side): an anonymous volume, unless something else is mounted there.
    for dest in c.volumes.iter().flat_map(|v| v.keys()) {
        if mounts.iter().any(|m| &m.destination == dest) {
            continue;
        }
        mounts.push(MountSpec {
            kind: "volume".into(),
            source: String::new(),
            destination: dest.clone(),
            read_only: false,
            propagation: String::new(),
            options: String::new(),
        });
    }
    for (dest, opts) in &h.tmpfs {
        mounts.push(MountSpec {
            kind: "tmpfs".into(),
            source: String::new(),
            destination: dest.clone(),
            read_only: false,
            propagation: String::new(),
            options: opts.clone(),
        });
    }
    let restart = match h.restart_policy.name.as_str() {
        "on-failure" => RestartPolicy::OnFailure {
            max: h.restart_policy.maximum_retry_count.max(0) as u32,
        },
        other => RestartPolicy::parse(other).map_err(ApiError::bad_parameter)?,
    };
    if restart != RestartPolicy::No && h.auto_remove {
        return Err(ApiError::bad_parameter(
            "can't create 'AutoRemove' container with restart policy",
        ));
    }
    Ok(ContainerSpec {
        image: c.image.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        hostname: c.hostname.clone(),
        labels: c.labels.clone(),
        tty: c.tty,
        open_stdin: c.open_stdin,
        mounts,
        volumes_from: h.volumes_from.clone(),
        privileged: h.privileged,
        cap_add: h.cap_add.clone(),
        cap_drop: h.cap_drop.clone(),
        devices: h
            .devices
            .iter()
            .map(|d| Device {
                host: d.path_on_host.clone(),
                container: if d.path_in_container.is_empty() {
                    d.path_on_host.clone()
                } else {
                    d.path_in_container.clone()
                },
                permissions: d.cgroup_permissions.clone(),
            })
            .collect(),
        network: ns_mode("network", &h.network_mode, true)?,
        pid: ns_mode("pid", &h.pid_mode, false)?,
        ipc: ns_mode("ipc", &h.ipc_mode, false)?,
        uts: ns_mode("uts", &h.uts_mode, false)?,
        read_only: h.readonly_rootfs,
        ulimits: h
            .ulimits
            .iter()
            .map(|u| Ulimit {
                name: u.name.clone(),
                soft: u.soft.max(0) as u64,
                hard: u.hard.max(0) as u64,
            })
            .collect(),
        memory: h.memory,
        nano_cpus: h.nano_cpus,
        cpu_shares: h.cpu_shares,
        pids_limit: h.pids_limit.unwrap_or(0).max(0),
        oom_score_adj: h.oom_score_adj as i32,
        stop_signal: c.stop_signal.clone().unwrap_or_default(),
        stop_timeout: c.stop_timeout.map(|t| t.max(0) as u32),
        restart,
        auto_remove: h.auto_remove,
    })
}

fn mode_str(ns: &NsMode, network: bool) -> String {
    match ns {
        NsMode::Host => "host".into(),
        NsMode::None if network => "none".into(),
        _ => String::new(),
    }
}

/// The docker view of a spec, for inspect.
fn host_config(s: &ContainerSpec) -> HostConfig {
    HostConfig {
        binds: s
            .mounts
            .iter()
            .filter(|m| m.kind != "tmpfs")
            .map(|m| {
                let mut b = if m.source.is_empty() {
                    m.destination.clone()
                } else {
                    format!("{}:{}", m.source, m.destination)
                };
                let mut opts = vec![];
                if m.read_only {
                    opts.push("ro".to_owned());
                }
                if !m.propagation.is_empty() {
                    opts.push(m.propagation.clone());
                }
                if !opts.is_empty() {
                    b = format!("{b}:{}", opts.join(","));
                }
                b
            })
            .collect(),
        tmpfs: s
            .mounts
            .iter()
            .filter(|m| m.kind == "tmpfs")
            .map(|m| (m.destination.clone(), m.options.clone()))
            .collect(),
        privileged: s.privileged,
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        network_mode: mode_str(&s.network, true),
        pid_mode: mode_str(&s.pid, false),
        ipc_mode: mode_str(&s.ipc, false),
        uts_mode: mode_str(&s.uts, false),
        readonly_rootfs: s.read_only,
        memory: s.memory,
        nano_cpus: s.nano_cpus,
        cpu_shares: s.cpu_shares,
        pids_limit: (s.pids_limit > 0).then_some(s.pids_limit),
        oom_score_adj: s.oom_score_adj as i64,
        restart_policy: ApiRestart {
            name: s.restart.name().into(),
            maximum_retry_count: match s.restart {
                RestartPolicy::OnFailure { max } => max as i64,
                _ => 0,
            },
        },
        volumes_from: s.volumes_from.clone(),
        auto_remove: s.auto_remove,
        ..HostConfig::default()
    }
}

fn epoch(rfc: &str) -> i64 {
    parse_rfc3339(rfc).map(|s| s as i64).unwrap_or(0)
}

/// Docker's human status column: "Up 5 seconds", "Exited (0) 2 minutes ago".
fn human_status(c: &Container) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let ago = |t: &str| {
        let s = (now - parse_rfc3339(t).unwrap_or(now)).max(0.0) as u64;
        match s {
            0 => "Less than a second".to_owned(),
            1..=59 => format!("{s} seconds"),
            60..=3599 => format!("{} minutes", s / 60),
            _ => format!("{} hours", s / 3600),
        }
    };
    match c.status {
        Status::Running => format!("Up {}", ago(&c.started_at)),
        Status::Restarting => format!("Restarting ({}) {} ago", c.exit_code, ago(&c.finished_at)),
        Status::Exited => format!("Exited ({}) {} ago", c.exit_code, ago(&c.finished_at)),
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

fn api_mounts(c: &Container) -> Vec<ApiMount> {
    c.mounts
        .iter()
        .map(|m| ApiMount {
            kind: m.kind.clone(),
            name: m.name.clone(),
            source: m.source.clone(),
            destination: m.destination.clone(),
            driver: if m.kind == "volume" {
                "local".into()
            } else {
                String::new()
            },
            mode: if m.read_only {
                "ro".into()
            } else {
                String::new()
            },
            rw: !m.read_only,
            propagation: m.propagation.clone(),
        })
        .collect()
}

impl Engine {
    fn summary(&self, c: &Container) -> ContainerSummary {
        let img_cfg = self
            .store()
            .find(c.image_id.as_str())
            .map(|i| i.config.config)
            .unwrap_or_default();
        ContainerSummary {
            id: c.id.clone(),
            names: vec![format!("/{}", c.name)],
            image: c.spec.image.clone(),
            image_id: c.image_id.to_string(),
            command: super::bundle::command(&c.spec, &img_cfg).join(" "),
            created: epoch(&c.created),
            ports: vec![],
            labels: c.spec.labels.clone(),
            state: c.status.as_str().into(),
            status: human_status(c),
            host_config: SummaryHostConfig {
                network_mode: mode_str(&c.spec.network, true),
            },
            mounts: api_mounts(c),
        }
    }

    fn inspect_container(&self, c: &Container) -> ContainerInspect {
        let img_cfg = self
            .store()
            .find(c.image_id.as_str())
            .map(|i| i.config.config)
            .unwrap_or_default();
        let args = super::bundle::command(&c.spec, &img_cfg);
        let s = &c.spec;
        ContainerInspect {
            id: c.id.clone(),
            created: c.created.clone(),
            path: args.first().cloned().unwrap_or_default(),
            args: args.iter().skip(1).cloned().collect(),
            state: ContainerState {
                status: c.status.as_str().into(),
                running: c.status == Status::Running,
                restarting: c.status == Status::Restarting,
                dead: c.status == Status::Dead,
                pid: c.pid as i64,
                exit_code: c.exit_code as i64,
                error: c.error.clone(),
                started_at: if c.started_at.is_empty() {
                    "0001-01-01T00:00:00Z".into()
                } else {
                    c.started_at.clone()
                },
                finished_at: if c.finished_at.is_empty() {
                    "0001-01-01T00:00:00Z".into()
                } else {
                    c.finished_at.clone()
                },
                ..ContainerState::default()
            },
            image: c.image_id.to_string(),
            log_path: self
                .data_dir()
                .join("containers")
                .join(&c.id)
                .join("container.log")
                .display()
                .to_string(),
            name: format!("/{}", c.name),
            restart_count: c.restart_count as i64,
            driver: "overlay2".into(),
            platform: "linux".into(),
            host_config: host_config(s),
            mounts: api_mounts(c),
            config: ApiConfig {
                hostname: s.hostname.clone(),
                user: s.user.clone(),
                tty: s.tty,
                open_stdin: s.open_stdin,
                env: s.env.clone(),
                cmd: s.cmd.clone(),
                image: s.image.clone(),
                working_dir: s.working_dir.clone(),
                entrypoint: s.entrypoint.clone(),
                labels: s.labels.clone(),
                stop_signal: (!s.stop_signal.is_empty()).then(|| s.stop_signal.clone()),
                stop_timeout: s.stop_timeout.map(i64::from),
                ..ApiConfig::default()
            },
            ..ContainerInspect::default()
        }
    }

    fn image_summary(&self, img: &crate::image::Image) -> ImageSummary {
        let in_use = self.list().iter().filter(|c| c.image_id == img.id).count() as i64;
        ImageSummary {
            id: img.id.to_string(),
            repo_tags: img
                .names
                .iter()
                .filter(|n| !n.contains('@'))
                .map(|n| familiar(n).to_owned())
                .collect(),
            repo_digests: img
                .names
                .iter()
                .filter_map(|n| {
                    n.split_once('@')
                        .map(|(r, _)| format!("{}@{}", familiar(r), img.manifest_digest))
                })
                .collect(),
            created: img.config.created.as_deref().map(epoch).unwrap_or(0),
            size: img.size as i64,
            labels: img.config.config.labels.clone().unwrap_or_default(),
            containers: in_use,
            ..ImageSummary::default()
        }
    }
}

/// Collects pull progress into Docker's JSON messages.
struct Collect(std::sync::Mutex<Vec<ProgressMessage>>);

impl Progress for Collect {
    fn start(&self, id: &str, _total: Option<u64>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(ProgressMessage::status(Some(id), "Pulling fs layer"));
        }
    }
    fn done(&self, id: &str, status: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(ProgressMessage::status(Some(id), status));
        }
    }
}

fn error_message(msg: String) -> ProgressMessage {
    ProgressMessage {
        error: Some(msg.clone()),
        error_detail: Some(super::api::types::ErrorDetail { message: msg }),
        ..ProgressMessage::default()
    }
}

/// An attach session. Output comes from the container's log from the moment of attaching
/// (so a container that exits before the client reads loses nothing, and `docker run`, which
/// attaches before it starts the container, sees all of it); stdin goes to the shim socket.
struct AttachSession {
    engine: Engine,
    id: String,
    generation: u64,
    log_pos: u64,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

impl Session for AttachSession {
    fn tty(&self) -> bool {
        self.tty
    }

    fn run(self: Box<Self>, io: HijackedIo) {
        let HijackedIo { mut stdin, output } = io;
        let (g0, id) = (self.generation, self.id.clone());
        // Wait for the container to run (attach may come before start).
        self.engine.wait_until(&id, None, |c| {
            // Running, or a start after attaching has finished (ran and exited, or failed).
            // Not merely begun: the log does not exist before the shim runs.
            c.status == Status::Running
                || (c.generation > g0 && (c.status != Status::Created || !c.error.is_empty()))
        });
        if self.stdin
            && let Ok(conn) = self.engine.attach_socket(&id)
        {
            if let Ok(mut w) = conn.try_clone() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut stdin, &mut w);
                    let _ = w.shutdown(std::net::Shutdown::Write);
                });
            }
            // The shim also sends output frames on this connection: drain them.
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            });
        }
        if let Ok(reader) = self.engine.logs_from(&id, self.log_pos) {
            for r in reader {
                let (kind, wanted) = if r.stream == "stderr" {
                    (StreamKind::Stderr, self.stderr)
                } else {
                    (StreamKind::Stdout, self.stdout)
                };
                if wanted && output.write_output(kind, r.log.as_bytes()).is_err() {
                    break;
                }
            }
        }
        let _ = output.close();
        self.engine.attach_end(&id);
    }
}

/// An attached exec: the process starts when the connection is hijacked.
struct ExecSession {
    engine: Engine,
    id: String,
    tty: bool,
}

impl Session for ExecSession {
    fn tty(&self) -> bool {
        self.tty
    }

    fn run(self: Box<Self>, io: HijackedIo) {
        self.engine.exec_run(&self.id, io);
    }
}

impl Backend for Engine {
    fn info(&self) -> Result<Info, ApiError> {
        let list = self.list();
        let running = list.iter().filter(|c| c.status == Status::Running).count() as i64;
        let images = self.store().list().map(|l| l.len() as i64).unwrap_or(0);
        let mut info = Info {
            id: "paddock-system-engine".into(),
            containers: list.len() as i64,
            containers_running: running,
            containers_stopped: list.len() as i64 - running,
            images,
            driver: "overlay2".into(),
            logging_driver: "json-file".into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_version: if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                "2".into()
            } else {
                "1".into()
            },
            docker_root_dir: self.data_dir().display().to_string(),
            operating_system: "Paddock".into(),
            os_type: "linux".into(),
            architecture: "x86_64".into(),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
            name: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            memory_limit: true,
            pids_limit: true,
            cpu_shares: true,
            cpu_cfs_quota: true,
            cpu_cfs_period: true,
            ..Info::default()
        };
        info.kernel_version = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(info)
    }

    fn version(&self) -> Result<Version, ApiError> {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Version::system_engine(env!("CARGO_PKG_VERSION"), &kernel))
    }

    fn container_list(
        &self,
        opts: &ContainerListOptions,
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        let mut out: Vec<ContainerSummary> = self
            .list()
            .iter()
            .filter(|c| opts.all || c.status == Status::Running)
            .map(|c| self.summary(c))
            .filter(|s| container_matches(s, &opts.filters))
            .collect();
        if let Some(n) = opts.limit {
            out.truncate(n);
        }
        Ok(out)
    }

    fn container_create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, ApiError> {
        let spec = spec_from_create(&body)?;
        let c = self.create(name, spec)?;
        Ok(ContainerCreateResponse {
            id: c.id,
            warnings: vec![],
        })
    }

    fn container_inspect(&self, id: &str) -> Result<ContainerInspect, ApiError> {
        let c = self.get(id)?;
        Ok(self.inspect_container(&c))
    }

    fn container_start(&self, id: &str) -> Result<(), ApiError> {
        Ok(self.start(id)?)
    }

    fn container_stop(&self, id: &str, opts: &StopOptions) -> Result<(), ApiError> {
        Ok(self.stop(id, opts.timeout, opts.signal.as_deref())?)
    }

    fn container_restart(&self, id: &str, opts: &StopOptions) -> Result<(), ApiError> {
        Ok(self.restart(id, opts.timeout)?)
    }

    fn container_kill(&self, id: &str, signal: Option<&str>) -> Result<(), ApiError> {
        Ok(self.kill(id, signal)?)
    }

    fn container_remove(&self, id: &str, opts: &RemoveOptions) -> Result<(), ApiError> {
        Ok(self.remove(id, opts.force, opts.volumes)?)
    }

    fn container_wait(&self, id: &str, condition: WaitCondition) -> Result<Waiter, ApiError> {
        let id = match condition {
            // A container removed a moment ago is still answered, with its exit code.
            WaitCondition::Removed => match self.resolve(id) {
                Ok(id) => id,
                Err(_) if self.removed_exit_code(id).is_some() => id.to_owned(),
                Err(e) => return Err(e.into()),
            },
            _ => self.resolve(id)?,
        };
        let engine = self.clone();
        Ok(Box::new(move || {
            let code = match condition {
                WaitCondition::NotRunning => engine.wait_not_running(&id),
                WaitCondition::NextExit => engine.wait_next_exit(&id),
                WaitCondition::Removed => engine.wait_removed(&id),
            }?;
            Ok(WaitResponse {
                status_code: code as i64,
                error: None,
            })
        }))
    }

    fn container_logs(&self, id: &str, opts: &LogsOptions) -> Result<LogStream, ApiError> {
        let c = self.get(id)?;
        let reader = self.logs(id, opts.follow, opts.tail)?;
        let (want_out, want_err, ts) = (opts.stdout, opts.stderr, opts.timestamps);
        let since = opts
            .since
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        let until = opts
            .until
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        let chunks = reader
            .filter(move |r| {
                let t = parse_rfc3339(&r.time).unwrap_or(0.0);
                (r.stream == "stderr" && want_err || r.stream != "stderr" && want_out)
                    && since.is_none_or(|s| t >= s)
                    && until.is_none_or(|u| t < u)
            })
            .map(move |r| {
                let stream = if r.stream == "stderr" {
                    StreamKind::Stderr
                } else {
                    StreamKind::Stdout
                };
                let mut data = Vec::new();
                if ts {
                    data.extend_from_slice(r.time.as_bytes());
                    data.push(b' ');
                }
                data.extend_from_slice(r.log.as_bytes());
                Ok(LogChunk { stream, data })
            });
        Ok(LogStream {
            tty: c.spec.tty,
            chunks: Box::new(chunks),
        })
    }

    fn container_rename(&self, id: &str, new_name: &str) -> Result<(), ApiError> {
        Ok(self.rename(id, new_name)?)
    }

    fn container_attach(
        &self,
        id: &str,
        opts: &AttachOptions,
    ) -> Result<Box<dyn Session>, ApiError> {
        let c = self.get(id)?;
        self.attach_begin(&c.id);
        Ok(Box::new(AttachSession {
            engine: self.clone(),
            log_pos: self.log_end(&c.id),
            id: c.id,
            generation: c.generation,
            tty: c.spec.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        }))
    }

    fn container_resize(&self, id: &str, size: TtySize) -> Result<(), ApiError> {
        Ok(self.resize(id, size.height, size.width)?)
    }

    fn exec_create(&self, container: &str, body: ExecCreateBody) -> Result<IdResponse, ApiError> {
        let req = ExecRequest {
            cmd: body.cmd,
            env: body.env,
            user: body.user,
            working_dir: body.working_dir,
            tty: body.tty,
            privileged: body.privileged,
            attach_stdin: body.attach_stdin,
        };
        let id = Engine::exec_create(self, container, req)?;
        if let Some([h, w]) = body.console_size {
            let _ = Engine::exec_resize(self, &id, h as u16, w as u16);
        }
        Ok(IdResponse { id })
    }

    fn exec_start(
        &self,
        exec_id: &str,
        opts: &ExecStartBody,
    ) -> Result<Option<Box<dyn Session>>, ApiError> {
        if opts.detach {
            self.exec_start_detached(exec_id)?;
            return Ok(None);
        }
        let tty = self.exec_check(exec_id)?;
        Ok(Some(Box::new(ExecSession {
            engine: self.clone(),
            id: exec_id.to_owned(),
            tty,
        })))
    }

    fn exec_inspect(&self, exec_id: &str) -> Result<ExecInspect, ApiError> {
        let s = self.exec_state(exec_id)?;
        let mut args = s.req.cmd.clone();
        let entrypoint = if args.is_empty() {
            String::new()
        } else {
            args.remove(0)
        };
        Ok(ExecInspect {
            id: s.id,
            running: s.running,
            exit_code: s.exit_code.map(i64::from),
            process_config: ExecProcessConfig {
                arguments: args,
                entrypoint,
                privileged: s.req.privileged,
                tty: s.req.tty,
                user: s.req.user.clone(),
            },
            open_stdin: s.req.attach_stdin,
            open_stdout: true,
            open_stderr: true,
            container_id: s.container_id,
            pid: i64::from(s.pid),
        })
    }

    fn exec_resize(&self, exec_id: &str, size: TtySize) -> Result<(), ApiError> {
        Ok(Engine::exec_resize(self, exec_id, size.height, size.width)?)
    }

    fn image_list(&self, opts: &ImageListOptions) -> Result<Vec<ImageSummary>, ApiError> {
        let list = self
            .store()
            .list()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(list
            .iter()
            .map(|i| self.image_summary(i))
            .filter(|s| image_matches(s, &opts.filters))
            .collect())
    }

    fn image_inspect(&self, name: &str) -> Result<ImageInspect, ApiError> {
        let img = self
            .store()
            .find(name)
            .map_err(|_| ApiError::no_such_image(name))?;
        let s = self.image_summary(&img);
        let c = &img.config.config;
        Ok(ImageInspect {
            id: s.id,
            repo_tags: s.repo_tags,
            repo_digests: s.repo_digests,
            created: img.config.created.clone().unwrap_or_default(),
            config: ApiImageConfig {
                user: c.user.clone().unwrap_or_default(),
                env: c.env.clone().unwrap_or_default(),
                cmd: c.cmd.clone(),
                entrypoint: c.entrypoint.clone(),
                working_dir: c.working_dir.clone().unwrap_or_default(),
                labels: c.labels.clone().unwrap_or_default(),
                stop_signal: c.stop_signal.clone().unwrap_or_default(),
                exposed_ports: c.exposed_ports.clone(),
                volumes: c.volumes.clone(),
            },
            architecture: img.config.architecture.clone(),
            os: img.config.os.clone(),
            size: img.size as i64,
            root_fs: RootFs {
                kind: "layers".into(),
                layers: img
                    .config
                    .rootfs
                    .diff_ids
                    .iter()
                    .map(|d| d.to_string())
                    .collect(),
            },
            ..ImageInspect::default()
        })
    }

    fn image_pull(&self, opts: &PullOptions) -> Result<ProgressStream, ApiError> {
        let reference = match &opts.tag {
            Some(t) if t.starts_with("sha256:") => format!("{}@{t}", opts.from_image),
            Some(t) if !t.is_empty() => format!("{}:{t}", opts.from_image),
            _ => opts.from_image.clone(),
        };
        let mut copts = ClientOptions::default();
        if let Some(auth) = opts.registry_auth.as_deref().and_then(decode_registry_auth)
            && let Ok(r) = reference.parse::<crate::image::Reference>()
        {
            copts.auths.0.insert(r.domain, auth);
        }
        let collect = Collect(std::sync::Mutex::new(vec![ProgressMessage::status(
            None,
            &format!("Pulling from {}", opts.from_image),
        )]));
        let result = self.store().pull(&reference, &copts, &collect);
        let mut msgs = collect.0.into_inner().unwrap_or_default();
        match result {
            Ok(img) => {
                msgs.push(ProgressMessage::status(
                    None,
                    &format!("Digest: {}", img.manifest_digest),
                ));
                msgs.push(ProgressMessage::status(
                    None,
                    &format!(
                        "Status: Downloaded newer image for {}",
                        familiar(&reference)
                    ),
                ));
            }
            Err(e) => msgs.push(error_message(format!("{e}"))),
        }
        Ok(Box::new(msgs.into_iter()))
    }

    fn image_load(&self, tar: &mut dyn Read, _quiet: bool) -> Result<ProgressStream, ApiError> {
        let msgs = match crate::image::archive::load_reader(
            self.store(),
            tar,
            None,
            &crate::image::progress::Silent,
        ) {
            Ok(images) => images
                .iter()
                .flat_map(|i| {
                    if i.names.is_empty() {
                        vec![format!("Loaded image ID: {}\n", i.id)]
                    } else {
                        i.names
                            .iter()
                            .map(|n| format!("Loaded image: {}\n", familiar(n)))
                            .collect()
                    }
                })
                .map(|s| ProgressMessage {
                    stream: Some(s),
                    ..ProgressMessage::default()
                })
                .collect(),
            Err(e) => vec![error_message(format!("{e}"))],
        };
        Ok(Box::new(msgs.into_iter()))
    }

    fn image_save(&self, names: &[String]) -> Result<TarWriter, ApiError> {
        for n in names {
            self.store()
                .find(n)
                .map_err(|_| ApiError::no_such_image(n))?;
        }
        let store = self.store().clone();
        let names = names.to_vec();
        Ok(Box::new(move |w: &mut dyn Write| {
            crate::image::archive::save(
                &store,
                &names,
                crate::image::archive::Format::DockerArchive,
                w,
            )
            .map_err(std::io::Error::other)
        }))
    }

    fn image_tag(&self, source: &str, repo: &str, tag: Option<&str>) -> Result<(), ApiError> {
        let target = match tag {
            Some(t) if !t.is_empty() => format!("{repo}:{t}"),
            _ => repo.to_owned(),
        };
        self.store()
            .tag(source, &target)
            .map(|_| ())
            .map_err(|e| match e {
                crate::image::StoreError::NoSuchImage(_) => ApiError::no_such_image(source),
                other => ApiError::bad_parameter(other.to_string()),
            })
    }

    fn image_remove(
        &self,
        name: &str,
        opts: &ImageRemoveOptions,
    ) -> Result<Vec<ImageDeleteItem>, ApiError> {
        let img = self
            .store()
            .find(name)
            .map_err(|_| ApiError::no_such_image(name))?;
        let users: Vec<Container> = self
            .list()
            .into_iter()
            .filter(|c| c.image_id == img.id)
            .collect();
        let last_name =
            img.names.len() <= 1 || !img.names.iter().any(|n| familiar(n) == name || n == name);
        if let Some(user) = users.first().filter(|_| last_name) {
            // Even when forced: a container's rootfs stacks the image's layers, so the image
            // goes only after its containers.
            let hint = if opts.force {
                "remove the container first"
            } else {
                "must be forced"
            };
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {name} ({hint}) - image is being used by container {}",
                &user.id[..12]
            )));
        }
        let (untagged, deleted) = self
            .store()
            .remove(name)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut out: Vec<ImageDeleteItem> = untagged
            .iter()
            .map(|n| ImageDeleteItem {
                untagged: Some(familiar(n).to_owned()),
                deleted: None,
            })
            .collect();
        if let Some(d) = deleted {
            out.push(ImageDeleteItem {
                untagged: None,
                deleted: Some(d.to_string()),
            });
        }
        Ok(out)
    }
}

/// `X-Registry-Auth`: base64url JSON `{"username","password","serveraddress"}`.
fn decode_registry_auth(h: &str) -> Option<crate::image::registry::AuthConfig> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(h.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h.trim()))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(h.trim()))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct A {
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        auth: String,
    }
    let a: A = serde_json::from_slice(&raw).ok()?;
    if !a.username.is_empty() {
        return Some(crate::image::registry::AuthConfig {
            username: Some(a.username),
            password: Some(a.password),
            ..Default::default()
        });
    }
    (!a.auth.is_empty()).then(|| crate::image::registry::AuthConfig {
        auth: Some(a.auth),
        ..Default::default()
    })
}

/// Starts the API server for `engine` on `socket`.
pub fn serve(
    engine: Engine,
    socket: &std::path::Path,
) -> Result<super::api::server::ServerHandle, String> {
    let server =
        super::api::server::ApiServer::bind(socket, Arc::new(engine)).map_err(|e| e.to_string())?;
    server.spawn().map_err(|e| e.to_string())
}
