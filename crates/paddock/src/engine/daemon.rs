//! The engine: container records, their lifecycle, restart policies and re-adoption.
//!
//! Layout below the data root:
//!
//! ```text
//! containers/<id>/config.json   the record (spec, name, status...), rewritten atomically
//! containers/<id>/rootfs/       overlayfs of the image layers + upper/ (mounted while running)
//! containers/<id>/bundle/       the OCI runtime spec
//! containers/<id>/shim.json, state.json, exit.json, container.log*, shim.sock, shim.log
//! volumes/<name>/_data          named and anonymous volumes
//! runtime/                      the OCI runtime's own state
//! ```
//!
//! The daemon never parents a container: each runs under a shim (see `shim.rs`). The daemon
//! learns that a container exited when the shim closes `shim.sock`; the exit code is in
//! `exit.json`. After a daemon restart, [`Engine::open`] reconnects to every live shim
//! (re-adoption) and applies restart policies to containers that exited meanwhile.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bundle::{self, ResolvedMount};
use super::reaper::Reaper;
use super::shim::{self, ExitState, LogRecord, RunState, ShimConfig};
use super::spec::{ContainerSpec, RestartPolicy};
use super::time::now_rfc3339;
use crate::fsutil::write_atomic;
use crate::image::{Digest, Store};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("no such exec instance: {0}")]
    NoSuchExec(String),
    #[error("{0}")]
    Conflict(String),
    #[error("container {0} is already in that state")]
    NotModified(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Restarting,
    Exited,
    Removing,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Removing => "removing",
            Status::Dead => "dead",
        }
    }
}

/// A mount as resolved at create time (host paths), kept for inspect, volumes_from and rm -v.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Volume name, for volumes.
    pub name: String,
    /// Host path (bind, volume); empty for tmpfs.
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    pub propagation: String,
    pub options: String,
    pub anonymous: bool,
}

/// A container record: what `config.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub spec: ContainerSpec,
    pub image_id: Digest,
    pub created: String,
    pub status: Status,
    pub pid: i32,
    pub exit_code: i32,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: u32,
    /// Stopped by a user: restart policies do not apply (and unless-stopped stays stopped).
    pub manually_stopped: bool,
    pub error: String,
    pub mounts: Vec<MountPoint>,
    /// Incremented on every start; a pending delayed restart checks it is still current.
    #[serde(default)]
    pub generation: u64,
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (absolute, on the host).
    pub data_dir: PathBuf,
    /// The `ros` executable, spawned as the shim.
    pub ros_exe: PathBuf,
    /// Seconds between the stop signal and SIGKILL when nothing else is said.
    pub stop_timeout: u32,
    pub log_max_size: u64,
    pub log_max_files: u32,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> EngineConfig {
        EngineConfig {
            data_dir,
            ros_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/ros")),
            stop_timeout: 10,
            log_max_size: 10 << 20,
            log_max_files: 3,
        }
    }
}

struct Inner {
    cfg: EngineConfig,
    store: Store,
    containers: Mutex<BTreeMap<String, Container>>,
    changed: Condvar,
    reaper: Reaper,
    /// Attached clients per container: auto-removal waits for them to read the last output.
    attached: Mutex<BTreeMap<String, usize>>,
    /// Last exit codes of recently removed containers, for waiters that wake after the removal.
    removed: Mutex<std::collections::VecDeque<(String, i32)>>,
    execs: super::exec::ExecTable,
}

/// The system engine. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    crate::image::digest::to_hex(&b)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Generated names, as docker makes them: adjective_surname.
fn generated_name(id: &str) -> String {
    const A: &[&str] = &[
        "brave", "calm", "eager", "keen", "quiet", "swift", "bold", "merry", "tidy", "wise",
    ];
    const B: &[&str] = &[
        "paddock", "rancher", "stallion", "mare", "colt", "filly", "pony", "mustang", "bronco",
        "foal",
    ];
    let n = u64::from_str_radix(&id[..8.min(id.len())], 16).unwrap_or(0);
    format!(
        "{}_{}_{}",
        A[(n % 10) as usize],
        B[((n / 10) % 10) as usize],
        &id[..4.min(id.len())]
    )
}

impl Engine {
    /// Opens the engine on its data directory, re-adopting running containers.
    pub fn open(cfg: EngineConfig, store: Store) -> Result<Engine, EngineError> {
        for d in ["containers", "volumes", "runtime"] {
            let p = cfg.data_dir.join(d);
            fs::create_dir_all(&p).map_err(|e| internal(p.display(), e))?;
        }
        // The runtime creates each missing level of a cgroup path with create_dir, so two
        // containers starting at once race on the shared parent: make it first (cgroup v2).
        let unified = Path::new("/sys/fs/cgroup");
        if unified.join("cgroup.controllers").exists() {
            let _ = fs::create_dir(unified.join(super::bundle::CGROUP_PARENT));
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                store,
                containers: Mutex::new(BTreeMap::new()),
                changed: Condvar::new(),
                reaper: Reaper::start(),
                attached: Mutex::new(BTreeMap::new()),
                removed: Mutex::new(std::collections::VecDeque::new()),
                execs: super::exec::ExecTable::default(),
            }),
        };
        engine.readopt();
        Ok(engine)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    pub(crate) fn execs(&self) -> &super::exec::ExecTable {
        &self.inner.execs
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.inner.reaper
    }

    pub(crate) fn ros_exe(&self) -> &Path {
        &self.inner.cfg.ros_exe
    }

    pub(crate) fn runtime_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("runtime")
    }

    pub(crate) fn container_dir(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    /// Resizes a running container's tty (through its shim, which holds the pty master).
    pub fn resize(&self, what: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let c = self.get(what)?;
        if !c.spec.tty {
            return Err(EngineError::Conflict(format!(
                "container {} has no tty to resize",
                c.name
            )));
        }
        if c.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                c.name
            )));
        }
        let mut conn = connect(&shim::socket(&self.dir(&c.id), "tty"))?;
        std::io::Write::write_all(&mut conn, format!("{height} {width}\n").as_bytes())
            .map_err(|e| internal(format!("resizing {}", c.name), e))
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.data_dir.join("containers").join(id)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Container>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, c: &Container) {
        let p = self.dir(&c.id).join("config.json");
        match serde_json::to_vec_pretty(c) {
            Ok(b) => {
                if let Err(e) = write_atomic(&p, &b, 0o600) {
                    tracing::error!("saving {}: {e}", p.display());
                }
            }
            Err(e) => tracing::error!("saving container {}: {e}", c.id),
        }
    }

    /// Full id for an id, unique id prefix, or name (with or without a leading `/`).
    pub fn resolve(&self, what: &str) -> Result<String, EngineError> {
        let m = self.lock();
        resolve_in(&m, what)
    }

    pub fn get(&self, what: &str) -> Result<Container, EngineError> {
        let m = self.lock();
        let id = resolve_in(&m, what)?;
        m.get(&id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchContainer(what.into()))
    }

    /// Every container, newest first.
    pub fn list(&self) -> Vec<Container> {
        let mut v: Vec<Container> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| b.created.cmp(&a.created));
        v
    }

    // ------------------------------------------------------------------ create

    /// Creates a container from `spec` (image must be in the store).
    pub fn create(
        &self,
        name: Option<&str>,
        spec: ContainerSpec,
    ) -> Result<Container, EngineError> {
        let image = self
            .inner
            .store
            .find(&spec.image)
            .map_err(|_| EngineError::NoSuchImage(spec.image.clone()))?;
        let id = random_id();
        let name = match name.map(|n| n.trim_start_matches('/')) {
            Some(n) if !n.is_empty() => {
                if !valid_name(n) {
                    return Err(EngineError::Invalid(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n.to_owned()
            }
            _ => generated_name(&id),
        };
        // Check the command now so `create` fails rather than `start`.
        if bundle::command(&spec, &image.config.config).is_empty() {
            return Err(EngineError::Invalid(format!(
                "no command specified for {}: the image has no entrypoint or cmd",
                spec.image
            )));
        }
        let mut m = self.lock();
        if let Some(other) = m.values().find(|c| c.name == name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        let mounts = self.resolve_mounts(&m, &spec, &image.config.config)?;
        let c = Container {
            id: id.clone(),
            name,
            spec,
            image_id: image.id.clone(),
            created: now_rfc3339(),
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            started_at: String::new(),
            finished_at: String::new(),
            restart_count: 0,
            manually_stopped: false,
            error: String::new(),
            mounts,
            generation: 0,
        };
        let dir = self.dir(&id);
        for sub in ["rootfs", "upper", "work", "bundle"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| internal(dir.display(), e))?;
        }
        self.persist(&c);
        m.insert(id, c.clone());
        Ok(c)
    }

    fn resolve_mounts(
        &self,
        m: &BTreeMap<String, Container>,
        spec: &ContainerSpec,
        image: &crate::image::spec::ContainerConfig,
    ) -> Result<Vec<MountPoint>, EngineError> {
        let mut out: Vec<MountPoint> = vec![];
        for from in &spec.volumes_from {
            let (name, mode) = from.split_once(':').unwrap_or((from.as_str(), ""));
            let id = resolve_in(m, name).map_err(|_| {
                EngineError::Invalid(format!("volumes_from: no such container: {name}"))
            })?;
            if let Some(other) = m.get(&id) {
                for mp in &other.mounts {
                    let mut mp = mp.clone();
                    if mode == "ro" {
                        mp.read_only = true;
                    }
                    mp.anonymous = false; // owned by the other container
                    out.retain(|o| o.destination != mp.destination);
                    out.push(mp);
                }
            }
        }
        for ms in &spec.mounts {
            let mut mp = MountPoint {
                kind: ms.kind.clone(),
                name: String::new(),
                source: ms.source.clone(),
                destination: ms.destination.clone(),
                read_only: ms.read_only,
                propagation: ms.propagation.clone(),
                options: ms.options.clone(),
                anonymous: false,
            };
            match ms.kind.as_str() {
                "bind" => {
                    if !Path::new(&ms.source).exists() {
                        fs::create_dir_all(&ms.source).map_err(|e| {
                            EngineError::Invalid(format!("bind source {}: {e}", ms.source))
                        })?;
                    }
                }
                "volume" => {
                    let (name, anonymous) = if ms.source.is_empty() {
                        (random_id(), true)
                    } else {
                        (ms.source.clone(), false)
                    };
                    if !valid_name(&name) {
                        return Err(EngineError::Invalid(format!(
                            "invalid volume name {name:?}"
                        )));
                    }
                    mp.source = self.volume_dir(&name)?.display().to_string();
                    mp.name = name;
                    mp.anonymous = anonymous;
                }
                "tmpfs" => {}
                other => {
                    return Err(EngineError::Invalid(format!(
                        "mount type {other:?} is not supported"
                    )));
                }
            }
            out.retain(|o| o.destination != mp.destination);
            out.push(mp);
        }
        // The image's VOLUMEs get anonymous volumes unless something is mounted there.
        for dest in image.volumes.iter().flat_map(|v| v.keys()) {
            if out.iter().any(|o| &o.destination == dest) {
                continue;
            }
            let name = random_id();
            out.push(MountPoint {
                kind: "volume".into(),
                source: self.volume_dir(&name)?.display().to_string(),
                name,
                destination: dest.clone(),
                read_only: false,
                propagation: String::new(),
                options: String::new(),
                anonymous: true,
            });
        }
        Ok(out)
    }

    fn volume_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        let p = self
            .inner
            .cfg
            .data_dir
            .join("volumes")
            .join(name)
            .join("_data");
        fs::create_dir_all(&p).map_err(|e| internal(p.display(), e))?;
        Ok(p)
    }

    // ------------------------------------------------------------------ start

    /// Starts a created or exited container.
    pub fn start(&self, what: &str) -> Result<(), EngineError> {
        let c = {
            let mut m = self.lock();
            let id = resolve_in(&m, what)?;
            let Some(c) = m.get_mut(&id) else {
                return Err(EngineError::NoSuchContainer(what.into()));
            };
            if c.status == Status::Running {
                return Err(EngineError::NotModified(what.into()));
            }
            if c.status == Status::Removing {
                return Err(EngineError::Conflict(format!(
                    "container {what} is being removed"
                )));
            }
            c.manually_stopped = false;
            c.generation += 1;
            c.error.clear();
            c.clone()
        };
        self.launch(c)
    }

    fn launch(&self, c: Container) -> Result<(), EngineError> {
        let id = c.id.clone();
        let result = self.spawn_shim(&c);
        let mut m = self.lock();
        let Some(rec) = m.get_mut(&id) else {
            return Err(EngineError::NoSuchContainer(id));
        };
        match result {
            Ok((pid, conn)) => {
                rec.status = Status::Running;
                rec.pid = pid;
                rec.started_at = now_rfc3339();
                rec.exit_code = 0;
                rec.error.clear();
                self.persist(rec);
                let generation = rec.generation;
                drop(m);
                self.inner.changed.notify_all();
                self.watch(id, conn, generation);
                Ok(())
            }
            Err(e) => {
                rec.status = if rec.started_at.is_empty() {
                    Status::Created
                } else {
                    Status::Exited
                };
                rec.exit_code = 128;
                rec.error = e.to_string();
                self.persist(rec);
                self.unmount(&id);
                drop(m);
                self.inner.changed.notify_all();
                Err(e)
            }
        }
    }

    fn unmount(&self, id: &str) {
        let rootfs = self.dir(id).join("rootfs");
        if is_mountpoint(&rootfs)
            && let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!("unmounting {}: {e}", rootfs.display());
        }
    }

    /// Mounts the rootfs, writes the bundle and spawns the shim; returns the container's pid
    /// and the connection that stays open while it runs.
    fn spawn_shim(&self, c: &Container) -> Result<(i32, UnixStream), EngineError> {
        let dir = self.dir(&c.id);
        let image = self
            .inner
            .store
            .find(c.image_id.as_str())
            .map_err(|_| EngineError::NoSuchImage(c.spec.image.clone()))?;
        let rootfs = dir.join("rootfs");
        if !is_mountpoint(&rootfs) {
            let mut lowers: Vec<String> = self
                .inner
                .store
                .layer_dirs(&image)
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            lowers.reverse();
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lowers.join(":"),
                dir.join("upper").display(),
                dir.join("work").display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(|e| internal(format!("mounting the rootfs of {}", c.name), e))?;
        }
        let mounts: Vec<ResolvedMount> = c.mounts.iter().map(resolved).collect();
        let spec = bundle::runtime_spec(&c.id, &c.spec, &image.config.config, &rootfs, &mounts)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let b = serde_json::to_vec_pretty(&spec).map_err(|e| internal("bundle", e))?;
        write_atomic(&dir.join("bundle/config.json"), &b, 0o600)
            .map_err(|e| internal("bundle", e))?;
        let shim_cfg = ShimConfig {
            id: c.id.clone(),
            bundle: dir.join("bundle"),
            runtime_root: self.inner.cfg.data_dir.join("runtime"),
            tty: c.spec.tty,
            open_stdin: c.spec.open_stdin,
            log_max_size: self.inner.cfg.log_max_size,
            log_max_files: self.inner.cfg.log_max_files,
        };
        write_atomic(
            &dir.join("shim.json"),
            &serde_json::to_vec(&shim_cfg).map_err(|e| internal("shim", e))?,
            0o600,
        )
        .map_err(|e| internal("shim", e))?;
        let _ = fs::remove_file(dir.join("exit.json"));
        // Fresh each start, so its tail is this start's story.
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join("shim.log"))
            .map_err(|e| internal("shim.log", e))?;
        let mut child = Command::new(&self.inner.cfg.ros_exe)
            .arg("__shim")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log))
            .spawn()
            .map_err(|e| {
                internal(
                    format!("spawning the shim {}", self.inner.cfg.ros_exe.display()),
                    e,
                )
            })?;
        // The reaper collects the shim when it exits; we never wait on `child`.
        let _exit = self.inner.reaper.watch(child.id() as i32);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| internal("shim", "no stdout"))?;
        let pid = shim::read_ready(stdout).map_err(|e| {
            let why = shim::log_tail(&dir.join("shim.log"), 3);
            EngineError::Internal(format!("starting container {}: {e}{why}", c.name))
        })?;
        let conn = connect(&shim::socket(&dir, "shim"))?;
        Ok((pid, conn))
    }

    /// Waits (on a thread) for the shim to close its socket, then records the exit.
    fn watch(&self, id: String, conn: UnixStream, generation: u64) {
        let engine = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("watch-{}", &id[..12.min(id.len())]))
            .spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                engine.exited(&id, generation);
            });
    }

    fn read_exit(&self, id: &str) -> ExitState {
        let p = self.dir(id).join("exit.json");
        // The shim writes exit.json before closing the socket; allow for a slow disk.
        for _ in 0..50 {
            if let Ok(b) = fs::read(&p)
                && let Ok(e) = serde_json::from_slice::<ExitState>(&b)
            {
                return e;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ExitState {
            exit_code: 255,
            finished_at: now_rfc3339(),
            error: Some("the container's monitor died".into()),
        }
    }

    /// Records an exit and applies the restart policy.
    fn exited(&self, id: &str, generation: u64) {
        let exit = self.read_exit(id);
        let mut m = self.lock();
        let Some(c) = m.get_mut(id) else { return };
        if c.generation != generation || c.status != Status::Running {
            return;
        }
        c.status = Status::Exited;
        c.exit_code = exit.exit_code;
        c.finished_at = exit.finished_at;
        c.pid = 0;
        if let Some(e) = exit.error {
            c.error = e;
        }
        let restart = !c.manually_stopped
            && match c.spec.restart {
                RestartPolicy::No => false,
                RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
                RestartPolicy::OnFailure { max } => {
                    c.exit_code != 0 && (max == 0 || c.restart_count < max)
                }
            };
        let ran_long = super::time::parse_rfc3339(&c.finished_at)
            .zip(super::time::parse_rfc3339(&c.started_at))
            .is_some_and(|(f, s)| f - s > 10.0);
        let auto_remove = c.spec.auto_remove && !restart;
        let delay = if restart {
            c.status = Status::Restarting;
            c.restart_count += 1;
            // 100 ms, doubling per consecutive quick failure, at most 10 s.
            let n = if ran_long {
                0
            } else {
                c.restart_count.saturating_sub(1).min(7)
            };
            Some(Duration::from_millis(100u64 << n).min(Duration::from_secs(10)))
        } else {
            None
        };
        c.generation += 1;
        let generation = c.generation;
        self.persist(c);
        if delay.is_none() {
            // Unmount before anyone can see the exit: a `restart` waiting on it would otherwise
            // start on the old mount and lose its rootfs to this unmount.
            self.unmount(id);
        }
        drop(m);
        self.inner.changed.notify_all();
        match delay {
            Some(d) => {
                let engine = self.clone();
                let id = id.to_owned();
                let _ = std::thread::Builder::new()
                    .name("restart".into())
                    .spawn(move || {
                        std::thread::sleep(d);
                        let c = {
                            let m = engine.lock();
                            match m.get(&id) {
                                Some(c)
                                    if c.status == Status::Restarting
                                        && c.generation == generation =>
                                {
                                    c.clone()
                                }
                                _ => return,
                            }
                        };
                        if let Err(e) = engine.launch(c) {
                            tracing::warn!("restarting {id}: {e}");
                        }
                    });
            }
            None => {
                if auto_remove {
                    let engine = self.clone();
                    let id = id.to_owned();
                    std::thread::spawn(move || {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while engine.attached(&id) > 0 && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let _ = engine.remove(&id, true, true);
                    });
                }
            }
        }
    }

    /// Reconnects to live shims after a daemon restart; applies restart policies to containers
    /// that exited while the daemon was away.
    fn readopt(&self) {
        let dir = self.inner.cfg.data_dir.join("containers");
        let Ok(rd) = fs::read_dir(&dir) else { return };
        let mut pending = vec![];
        {
            let mut m = self.lock();
            for e in rd.flatten() {
                let Ok(b) = fs::read(e.path().join("config.json")) else {
                    continue;
                };
                let Ok(mut c) = serde_json::from_slice::<Container>(&b) else {
                    tracing::warn!(
                        "skipping unreadable container record {}",
                        e.path().display()
                    );
                    continue;
                };
                if matches!(c.status, Status::Running | Status::Restarting) {
                    match connect_once(&shim::socket(&e.path(), "shim")) {
                        Some(conn) => {
                            if let Ok(s) = fs::read(e.path().join("state.json"))
                                && let Ok(rs) = serde_json::from_slice::<RunState>(&s)
                            {
                                c.pid = rs.pid;
                            }
                            c.status = Status::Running;
                            pending.push((c.id.clone(), Some(conn), c.generation));
                        }
                        None => {
                            // Exited while we were away.
                            c.status = Status::Running;
                            pending.push((c.id.clone(), None, c.generation));
                        }
                    }
                }
                m.insert(c.id.clone(), c);
            }
        }
        for (id, conn, generation) in pending {
            match conn {
                Some(conn) => self.watch(id, conn, generation),
                None => self.exited(&id, generation),
            }
        }
    }

    // ------------------------------------------------------------------ stop, kill, remove

    /// Sends `signal` (or the container's stop signal), waits `timeout` seconds, then SIGKILL.
    pub fn stop(
        &self,
        what: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let (id, pid, sig, t) = {
            let mut m = self.lock();
            let id = resolve_in(&m, what)?;
            let Some(c) = m.get_mut(&id) else {
                return Err(EngineError::NoSuchContainer(what.into()));
            };
            c.manually_stopped = true;
            if c.status == Status::Restarting {
                c.status = Status::Exited;
                c.generation += 1;
                self.persist(c);
                return Ok(());
            }
            if c.status != Status::Running {
                self.persist(c);
                return Err(EngineError::NotModified(what.into()));
            }
            self.persist(c);
            let sig = signal
                .map(str::to_owned)
                .unwrap_or_else(|| c.spec.stop_signal.clone());
            let t = timeout
                .or(c.spec.stop_timeout.map(i64::from))
                .unwrap_or(self.inner.cfg.stop_timeout as i64);
            (id, c.pid, sig, t)
        };
        let sig = parse_signal(if sig.is_empty() { "SIGTERM" } else { &sig })?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        let deadline = if t < 0 {
            None
        } else {
            Some(Instant::now() + Duration::from_secs(t as u64))
        };
        if !self.wait_until(&id, deadline, |c| c.status != Status::Running) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.wait_until(&id, Some(Instant::now() + Duration::from_secs(30)), |c| {
                c.status != Status::Running
            });
        }
        Ok(())
    }

    pub fn restart(&self, what: &str, timeout: Option<i64>) -> Result<(), EngineError> {
        match self.stop(what, timeout, None) {
            Ok(()) | Err(EngineError::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(what)
    }

    pub fn kill(&self, what: &str, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.get(what)?;
        if c.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "cannot kill container: {what}: container {} is not running",
                c.id
            )));
        }
        let sig = parse_signal(signal.unwrap_or("SIGKILL"))?;
        if sig == nix::sys::signal::Signal::SIGKILL {
            // A killed container is not restarted (docker's rule for `kill` is the same as stop).
            let mut m = self.lock();
            if let Some(rec) = m.get_mut(&c.id) {
                rec.manually_stopped = true;
                self.persist(rec);
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid), sig)
            .map_err(|e| internal(format!("killing {what}"), e))
    }

    /// Removes a container (`force` kills it first; `volumes` removes its anonymous volumes).
    pub fn remove(&self, what: &str, force: bool, volumes: bool) -> Result<(), EngineError> {
        let c = self.get(what)?;
        if matches!(c.status, Status::Running | Status::Restarting) {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.name
                )));
            }
            self.stop(&c.id, Some(0), Some("SIGKILL"))?;
        }
        {
            let mut m = self.lock();
            if let Some(rec) = m.get_mut(&c.id) {
                rec.status = Status::Removing;
            }
        }
        self.unmount(&c.id);
        let dir = self.dir(&c.id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            let mut m = self.lock();
            if let Some(rec) = m.get_mut(&c.id) {
                rec.status = Status::Dead;
                rec.error = format!("removing {}: {e}", dir.display());
                self.persist(rec);
            }
            return Err(internal(format!("removing {}", dir.display()), e));
        }
        if volumes {
            for mp in c.mounts.iter().filter(|m| m.anonymous) {
                let _ = fs::remove_dir_all(self.inner.cfg.data_dir.join("volumes").join(&mp.name));
            }
        }
        {
            let mut m = self.lock();
            if let Some(rec) = m.remove(&c.id) {
                // Recorded while the map is still locked, so a waiter never sees neither.
                let mut removed = self.inner.removed.lock().unwrap_or_else(|p| p.into_inner());
                if removed.len() >= 256 {
                    removed.pop_front();
                }
                removed.push_back((rec.id, rec.exit_code));
            }
        }
        self.inner.execs.forget_container(&c.id);
        self.inner.changed.notify_all();
        Ok(())
    }

    pub fn rename(&self, what: &str, new_name: &str) -> Result<(), EngineError> {
        let new_name = new_name.trim_start_matches('/');
        if !valid_name(new_name) {
            return Err(EngineError::Invalid(format!(
                "invalid container name {new_name:?}"
            )));
        }
        let mut m = self.lock();
        let id = resolve_in(&m, what)?;
        if m.values().any(|c| c.name == new_name && c.id != id) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{new_name}\" is already in use"
            )));
        }
        let Some(c) = m.get_mut(&id) else {
            return Err(EngineError::NoSuchContainer(what.into()));
        };
        c.name = new_name.to_owned();
        self.persist(c);
        Ok(())
    }

    // ------------------------------------------------------------------ waiting

    /// Blocks until `pred` holds for the container (true) or the deadline passes (false). A
    /// removed container counts as holding.
    pub fn wait_until(
        &self,
        id: &str,
        deadline: Option<Instant>,
        pred: impl Fn(&Container) -> bool,
    ) -> bool {
        let mut m = self.lock();
        loop {
            match m.get(id) {
                None => return true,
                Some(c) if pred(c) => return true,
                _ => {}
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    (d - now).min(Duration::from_millis(500))
                }
                None => Duration::from_millis(500),
            };
            m = match self.inner.changed.wait_timeout(m, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Waits until the container is not running; returns its exit code.
    pub fn wait_not_running(&self, what: &str) -> Result<i32, EngineError> {
        let id = self.resolve(what)?;
        self.wait_until(&id, None, |c| {
            matches!(c.status, Status::Created | Status::Exited | Status::Dead)
        });
        Ok(self.get(&id).map(|c| c.exit_code).unwrap_or(0))
    }

    /// Waits for the next exit after now (the container may not have started yet).
    pub fn wait_next_exit(&self, what: &str) -> Result<i32, EngineError> {
        let id = self.resolve(what)?;
        let start_gen = self.get(&id)?.generation;
        self.wait_until(&id, None, |c| {
            c.generation > start_gen
                && matches!(c.status, Status::Exited | Status::Dead | Status::Restarting)
        });
        Ok(self.get(&id).map(|c| c.exit_code).unwrap_or(0))
    }

    /// Waits until the container is removed; returns its last exit code.
    /// A full id removed a moment ago counts as removed, so a client that asks after the fact
    /// still gets the exit code.
    pub fn wait_removed(&self, what: &str) -> Result<i32, EngineError> {
        let id = match self.resolve(what) {
            Ok(id) => id,
            Err(e) => return self.removed_exit_code(what).ok_or(e),
        };
        // A removal that failed leaves the container dead: that ends the wait too.
        self.wait_until(&id, None, |c| c.status == Status::Dead);
        if let Ok(c) = self.get(&id) {
            return Err(EngineError::Conflict(format!(
                "container {what} could not be removed: {}",
                c.error
            )));
        }
        Ok(self.removed_exit_code(&id).unwrap_or(0))
    }

    pub(crate) fn removed_exit_code(&self, id: &str) -> Option<i32> {
        let removed = self.inner.removed.lock().unwrap_or_else(|p| p.into_inner());
        removed
            .iter()
            .rev()
            .find(|(r, _)| r == id)
            .map(|(_, code)| *code)
    }

    // ------------------------------------------------------------------ logs

    /// The container's log records in order, following new ones while it runs if `follow`.
    pub fn logs(
        &self,
        what: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<LogReader, EngineError> {
        let c = self.get(what)?;
        let path = self.dir(&c.id).join("container.log");
        let mut backlog: Vec<LogRecord> = vec![];
        for n in (1..=self.inner.cfg.log_max_files + 1).rev() {
            read_records(&shim::rotated(&path, n), &mut backlog, 0);
        }
        let (pos, ino) = read_records(&path, &mut backlog, 0);
        if let Some(t) = tail {
            let skip = backlog.len().saturating_sub(t as usize);
            backlog.drain(..skip);
        }
        Ok(LogReader {
            engine: self.clone(),
            id: c.id,
            path,
            pos,
            ino,
            follow,
            backlog: backlog.into(),
        })
    }

    /// Notes a client attached to `id` (until [`Engine::attach_end`]).
    pub fn attach_begin(&self, id: &str) {
        if let Ok(mut a) = self.inner.attached.lock() {
            *a.entry(id.to_owned()).or_insert(0) += 1;
        }
    }

    pub fn attach_end(&self, id: &str) {
        if let Ok(mut a) = self.inner.attached.lock()
            && let Some(n) = a.get_mut(id)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn attached(&self, id: &str) -> usize {
        self.inner
            .attached
            .lock()
            .map(|a| a.get(id).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The current end of the container's log (where an attach starts reading).
    pub fn log_end(&self, id: &str) -> u64 {
        fs::metadata(self.dir(id).join("container.log"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Follows the container's log from byte `pos` until it stops running.
    pub fn logs_from(&self, what: &str, pos: u64) -> Result<LogReader, EngineError> {
        let c = self.get(what)?;
        let path = self.dir(&c.id).join("container.log");
        let ino = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        Ok(LogReader {
            engine: self.clone(),
            id: c.id,
            path,
            pos,
            ino,
            follow: true,
            backlog: Default::default(),
        })
    }

    /// The shim socket of a running container (attach: live output frames, stdin).
    pub fn attach_socket(&self, what: &str) -> Result<UnixStream, EngineError> {
        let c = self.get(what)?;
        if c.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {what} is not running"
            )));
        }
        connect(&shim::socket(&self.dir(&c.id), "shim"))
    }
}

fn resolved(m: &MountPoint) -> ResolvedMount {
    if m.kind == "tmpfs" {
        let mut options = vec!["nosuid".to_owned(), "nodev".to_owned(), "noexec".to_owned()];
        options.extend(
            m.options
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        );
        if m.read_only {
            options.push("ro".into());
        }
        return ResolvedMount {
            destination: m.destination.clone(),
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options,
        };
    }
    let mut options = vec!["rbind".to_owned()];
    options.push(if m.read_only {
        "ro".into()
    } else {
        "rw".into()
    });
    options.push(if m.propagation.is_empty() {
        "rprivate".into()
    } else {
        m.propagation.clone()
    });
    ResolvedMount {
        destination: m.destination.clone(),
        kind: "bind".into(),
        source: m.source.clone(),
        options,
    }
}

fn resolve_in(m: &BTreeMap<String, Container>, what: &str) -> Result<String, EngineError> {
    let what_t = what.trim_start_matches('/');
    if m.contains_key(what_t) {
        return Ok(what_t.to_owned());
    }
    if let Some(c) = m.values().find(|c| c.name == what_t) {
        return Ok(c.id.clone());
    }
    if what_t.len() >= 3 && what_t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let found: Vec<&String> = m.keys().filter(|k| k.starts_with(what_t)).collect();
        if found.len() == 1 {
            return Ok(found[0].clone());
        }
        if found.len() > 1 {
            return Err(EngineError::Invalid(format!(
                "multiple containers match the id prefix {what_t}"
            )));
        }
    }
    Err(EngineError::NoSuchContainer(what.into()))
}

fn is_mountpoint(p: &Path) -> bool {
    let (Ok(a), Some(Ok(b))) = (fs::metadata(p), p.parent().map(fs::metadata)) else {
        return false;
    };
    a.dev() != b.dev()
}

fn connect_once(p: &Path) -> Option<UnixStream> {
    UnixStream::connect(p).ok()
}

fn connect(p: &Path) -> Result<UnixStream, EngineError> {
    for _ in 0..100 {
        if let Some(s) = connect_once(p) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(internal(
        p.display(),
        "cannot connect to the container's monitor",
    ))
}

pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, EngineError> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| EngineError::Invalid(format!("invalid signal {s}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map_err(|_| EngineError::Invalid(format!("invalid signal {s}")))
}

/// Appends the records of a json-file log to `out`; returns (end position, inode).
fn read_records(p: &Path, out: &mut Vec<LogRecord>, from: u64) -> (u64, u64) {
    let Ok(mut f) = fs::File::open(p) else {
        return (0, 0);
    };
    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
    if f.seek(io::SeekFrom::Start(from)).is_err() {
        return (from, ino);
    }
    let mut r = io::BufReader::new(f);
    let mut pos = from;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !line.ends_with('\n') {
                    break; // a partial line: read it next time
                }
                pos += n as u64;
                if let Ok(rec) = serde_json::from_str::<LogRecord>(&line) {
                    out.push(rec);
                }
            }
        }
    }
    (pos, ino)
}

/// Log records of one container; blocks for new ones while following.
pub struct LogReader {
    engine: Engine,
    id: String,
    path: PathBuf,
    pos: u64,
    ino: u64,
    follow: bool,
    backlog: std::collections::VecDeque<LogRecord>,
}

impl Iterator for LogReader {
    type Item = LogRecord;

    fn next(&mut self) -> Option<LogRecord> {
        loop {
            if let Some(r) = self.backlog.pop_front() {
                return Some(r);
            }
            if !self.follow {
                return None;
            }
            let running = self
                .engine
                .get(&self.id)
                .is_ok_and(|c| matches!(c.status, Status::Running | Status::Restarting));
            // Rotated: the file we read is now container.log.1; finish it, then start afresh.
            let cur_ino = fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0);
            let mut fresh = vec![];
            if cur_ino != self.ino && self.ino != 0 {
                read_records(&shim::rotated(&self.path, 1), &mut fresh, self.pos);
                self.pos = 0;
            }
            let (pos, ino) = read_records(&self.path, &mut fresh, self.pos);
            self.pos = pos;
            self.ino = ino;
            if !fresh.is_empty() {
                self.backlog.extend(fresh);
                continue;
            }
            if !running {
                return None;
            }
            // Wake at once when the container stops; otherwise poll for new output.
            self.engine.wait_until(
                &self.id,
                Some(Instant::now() + Duration::from_millis(50)),
                |c| !matches!(c.status, Status::Running | Status::Restarting),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_signals() {
        assert!(valid_name("ntp") && valid_name("udev-cold") && valid_name("a.b_c"));
        assert!(!valid_name("") && !valid_name("-x") && !valid_name("a/b") && !valid_name("a b"));
        assert_eq!(
            parse_signal("TERM").ok(),
            Some(nix::sys::signal::Signal::SIGTERM)
        );
        assert_eq!(
            parse_signal("SIGHUP").ok(),
            Some(nix::sys::signal::Signal::SIGHUP)
        );
        assert_eq!(
            parse_signal("9").ok(),
            Some(nix::sys::signal::Signal::SIGKILL)
        );
        assert!(parse_signal("SIGNOPE").is_err());
        let n = generated_name("0123456789abcdef");
        assert!(valid_name(&n), "{n}");
    }
}
