//! `docker exec`: another process in a running container.
//!
//! The daemon never calls the runtime itself (it is multi-threaded, and the runtime forks and
//! joins namespaces). For each exec it writes an OCI `process` JSON next to the container and
//! spawns `ros __exec CONFIG`, a helper that asks the runtime to start that process in the
//! container, waits for it and exits with its exit code, which the daemon's one reaper
//! collects. Without a tty the process inherits the helper's stdio, pipes the daemon pumps to
//! and from the client. With a tty the runtime sends the pty master to a console socket the
//! daemon listens on, so the daemon can pump and resize it; the helper then reports
//! `started <pid>` on its stdout.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::api::stream::{HijackedIo, StreamKind};
use super::daemon::{Engine, EngineError, Status};
use super::runtime::{Libcontainer, Runtime as _, Stdio};
use super::{bundle, shim, tty};
use crate::fsutil::write_atomic;

/// What the creator of an exec asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// `user[:group]`, names or ids; empty = the container's user.
    pub user: String,
    /// Empty = the container's working directory.
    pub working_dir: String,
    pub tty: bool,
    pub privileged: bool,
    pub attach_stdin: bool,
}

/// An exec's state, as `GET /exec/{id}/json` shows it.
#[derive(Debug, Clone)]
pub struct ExecState {
    pub id: String,
    pub container_id: String,
    pub req: ExecRequest,
    pub running: bool,
    /// None until it exits.
    pub exit_code: Option<i32>,
    pub pid: i32,
    started: bool,
}

#[derive(Default)]
struct Entry {
    state: Option<ExecState>,
    /// The pty master while a tty exec runs.
    master: Option<Arc<File>>,
    /// A resize that came before the master.
    pending_size: Option<(u16, u16)>,
}

/// The daemon's execs. Finished ones are kept (the CLI reads the exit code after the stream
/// ends) until their container is removed.
#[derive(Default)]
pub struct ExecTable {
    map: Mutex<BTreeMap<String, Entry>>,
    changed: Condvar,
}

impl ExecTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().get_mut(id) {
            f(e);
        }
        self.changed.notify_all();
    }

    /// Forgets the execs of a removed container.
    pub fn forget_container(&self, container_id: &str) {
        self.lock().retain(|_, e| {
            e.state
                .as_ref()
                .is_some_and(|s| s.container_id != container_id)
        });
    }
}

/// `exec.json`: what the helper is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperConfig {
    pub container_id: String,
    pub runtime_root: PathBuf,
    /// The OCI process JSON.
    pub process: PathBuf,
    /// Set for a tty: the runtime sends the pty master here.
    pub console_socket: Option<PathBuf>,
}

/// `ros __exec CONFIG`: runs the process and exits with its exit code.
pub fn helper_main(cfg_path: &Path) -> i32 {
    shim::clean_signals();
    let cfg: HelperConfig = match fs::read(cfg_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("{}reading {}: {e}", shim::ERROR_PREFIX, cfg_path.display());
            return 126;
        }
    };
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let stdio = match &cfg.console_socket {
        Some(p) => Stdio::Console(p.clone()),
        None => Stdio::Inherit,
    };
    let pid =
        match Libcontainer::new(&cfg.runtime_root).exec(&cfg.container_id, &cfg.process, stdio) {
            Ok(pid) => pid,
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                if cfg.console_socket.is_some() {
                    println!("{}{msg}", shim::ERROR_PREFIX);
                } else {
                    eprintln!("ros: {msg}");
                }
                return if msg.contains("not found") || msg.contains("No such file") {
                    127
                } else {
                    126
                };
            }
        };
    if cfg.console_socket.is_some() {
        println!("{}{pid}", shim::READY_PREFIX);
        let _ = io::stdout().flush();
    }
    let target = Pid::from_raw(pid);
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(p, c)) if p == target => return c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == target => return 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

fn random_exec_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    crate::image::digest::to_hex(&b)
}

impl Engine {
    /// `POST /containers/{id}/exec`.
    pub fn exec_create(&self, container: &str, req: ExecRequest) -> Result<String, EngineError> {
        let c = self.get(container)?;
        if c.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                c.name
            )));
        }
        if req.cmd.is_empty() {
            return Err(EngineError::Invalid("no exec command specified".into()));
        }
        let id = random_exec_id();
        let state = ExecState {
            id: id.clone(),
            container_id: c.id,
            req,
            running: false,
            exit_code: None,
            pid: 0,
            started: false,
        };
        self.execs().lock().insert(
            id.clone(),
            Entry {
                state: Some(state),
                ..Entry::default()
            },
        );
        Ok(id)
    }

    /// `GET /exec/{id}/json`.
    pub fn exec_state(&self, id: &str) -> Result<ExecState, EngineError> {
        self.execs()
            .lock()
            .get(id)
            .and_then(|e| e.state.clone())
            .ok_or_else(|| EngineError::NoSuchExec(id.into()))
    }

    /// `POST /exec/{id}/resize`.
    pub fn exec_resize(&self, id: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let mut map = self.execs().lock();
        let e = map
            .get_mut(id)
            .ok_or_else(|| EngineError::NoSuchExec(id.into()))?;
        match &e.master {
            Some(m) => tty::resize(m.as_ref(), height, width)
                .map_err(|err| EngineError::Internal(format!("resizing exec {id}: {err}"))),
            None => {
                e.pending_size = Some((height, width));
                Ok(())
            }
        }
    }

    /// Marks the exec started (an exec runs once) and writes the helper's files.
    fn exec_prepare(&self, id: &str) -> Result<(ExecState, PathBuf), EngineError> {
        let state = {
            let mut map = self.execs().lock();
            let e = map
                .get_mut(id)
                .and_then(|e| e.state.as_mut())
                .ok_or_else(|| EngineError::NoSuchExec(id.into()))?;
            if e.started {
                return Err(EngineError::Conflict(format!("exec {id} has already run")));
            }
            e.started = true;
            e.clone()
        };
        let c = self.get(&state.container_id)?;
        if c.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                c.name
            )));
        }
        let cdir = self.container_dir(&c.id);
        let dir = cdir.join("execs");
        fs::create_dir_all(&dir)
            .map_err(|e| EngineError::Internal(format!("{}: {e}", dir.display())))?;
        let process = process_json(&cdir, &state.req)?;
        let process_path = dir.join(format!("{id}.process.json"));
        write_atomic(&process_path, &process, 0o600)
            .map_err(|e| EngineError::Internal(format!("{}: {e}", process_path.display())))?;
        let cfg = HelperConfig {
            container_id: c.id.clone(),
            runtime_root: self.runtime_root(),
            process: process_path,
            console_socket: state.req.tty.then(|| self.exec_console_socket(id)),
        };
        let cfg_path = dir.join(format!("{id}.json"));
        let b = serde_json::to_vec(&cfg).map_err(|e| EngineError::Internal(e.to_string()))?;
        write_atomic(&cfg_path, &b, 0o600)
            .map_err(|e| EngineError::Internal(format!("{}: {e}", cfg_path.display())))?;
        Ok((state, cfg_path))
    }

    /// Where a tty exec's runtime sends the pty master. Not below the container directory:
    /// that path is too long for a socket address.
    fn exec_console_socket(&self, id: &str) -> PathBuf {
        shim::socket(&self.container_dir(id), "exec")
    }

    fn exec_command(&self, cfg_path: &Path) -> Command {
        let mut cmd = Command::new(self.ros_exe());
        cmd.arg("__exec").arg(cfg_path);
        cmd
    }

    /// Records the exit and wakes waiters.
    fn exec_finished(&self, id: &str, code: i32) {
        self.execs().update(id, |e| {
            if let Some(s) = &mut e.state {
                s.running = false;
                s.exit_code = Some(code);
            }
            e.master = None;
        });
    }

    fn exec_running(&self, id: &str, pid: i32) {
        self.execs().update(id, |e| {
            if let Some(s) = &mut e.state {
                s.running = true;
                s.pid = pid;
            }
        });
    }

    /// `POST /exec/{id}/start` with `Detach`: runs with no stdio and returns at once.
    pub fn exec_start_detached(&self, id: &str) -> Result<(), EngineError> {
        let (_, cfg) = self.exec_prepare(id)?;
        let child = self
            .exec_command(&cfg)
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::null())
            .spawn()
            .map_err(|e| EngineError::Internal(format!("spawning the exec helper: {e}")))?;
        let rx = self.reaper().watch(child.id() as i32);
        self.exec_running(id, child.id() as i32);
        let (engine, id) = (self.clone(), id.to_owned());
        std::thread::spawn(move || {
            let code = rx.recv().unwrap_or(255);
            engine.exec_finished(&id, code);
        });
        Ok(())
    }

    /// Checks an exec can start, for `POST /exec/{id}/start` before it answers 101.
    pub fn exec_check(&self, id: &str) -> Result<bool, EngineError> {
        let s = self.exec_state(id)?;
        if s.started {
            return Err(EngineError::Conflict(format!("exec {id} has already run")));
        }
        Ok(s.req.tty)
    }

    /// Runs an attached exec on a hijacked connection; returns when it has exited and its
    /// exit code is recorded.
    pub fn exec_run(&self, id: &str, io: HijackedIo) {
        let code = match self.exec_prepare(id) {
            Ok((state, cfg)) if state.req.tty => self.exec_run_tty(id, &state, &cfg, io),
            Ok((state, cfg)) => self.exec_run_pipes(id, &state, &cfg, io),
            Err(e) => {
                let _ = io
                    .output
                    .write_output(StreamKind::Stderr, format!("{e}\n").as_bytes());
                let _ = io.output.close();
                126
            }
        };
        self.exec_finished(id, code);
    }

    fn exec_run_pipes(&self, id: &str, state: &ExecState, cfg: &Path, io: HijackedIo) -> i32 {
        let HijackedIo { mut stdin, output } = io;
        let spawned = self
            .exec_command(cfg)
            .stdin(if state.req.attach_stdin {
                ProcStdio::piped()
            } else {
                ProcStdio::null()
            })
            .stdout(ProcStdio::piped())
            .stderr(ProcStdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = output.write_output(
                    StreamKind::Stderr,
                    format!("spawning the exec helper: {e}\n").as_bytes(),
                );
                let _ = output.close();
                return 126;
            }
        };
        let rx = self.reaper().watch(child.id() as i32);
        self.exec_running(id, child.id() as i32);
        if let Some(mut w) = child.stdin.take() {
            std::thread::spawn(move || {
                let _ = io::copy(&mut stdin, &mut w);
            });
        }
        let mut pumps = vec![];
        let outs: [(Option<Box<dyn Read + Send>>, StreamKind); 2] = [
            (
                child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn Read + Send>),
                StreamKind::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|r| Box::new(r) as Box<dyn Read + Send>),
                StreamKind::Stderr,
            ),
        ];
        for (src, kind) in outs {
            let Some(mut src) = src else { continue };
            let out = output.clone();
            pumps.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match src.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write_output(kind, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        let code = rx.recv().unwrap_or(255);
        drain(pumps);
        // Record the code before the client sees the end of the stream: it asks right after.
        self.exec_finished(id, code);
        let _ = output.close();
        code
    }

    fn exec_run_tty(&self, id: &str, state: &ExecState, cfg: &Path, io: HijackedIo) -> i32 {
        let HijackedIo { mut stdin, output } = io;
        let fail = |msg: String| {
            let _ = output.write_output(StreamKind::Stdout, format!("{msg}\r\n").as_bytes());
            let _ = output.close();
            126
        };
        let sock = self.exec_console_socket(id);
        let _ = fs::remove_file(&sock);
        let listener = match UnixListener::bind(&sock) {
            Ok(l) => l,
            Err(e) => return fail(format!("console socket {}: {e}", sock.display())),
        };
        let spawned = self
            .exec_command(cfg)
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::piped())
            .stderr(ProcStdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return fail(format!("spawning the exec helper: {e}")),
        };
        let rx = self.reaper().watch(child.id() as i32);
        self.exec_running(id, child.id() as i32);
        let ready = child
            .stdout
            .take()
            .map(shim::read_ready)
            .unwrap_or_else(|| Err("no helper stdout".into()));
        if let Err(e) = ready {
            let _ = fs::remove_file(&sock);
            let _ = rx.recv();
            return fail(format!("exec failed: {e}"));
        }
        let master = tty::receive_master(&listener, Duration::from_secs(10));
        let _ = fs::remove_file(&sock);
        let master = match master {
            Ok(m) => Arc::new(File::from(m)),
            Err(e) => {
                let code = rx.recv().unwrap_or(255);
                let _ = fail(format!("exec {id}: receiving its terminal: {e}"));
                return code;
            }
        };
        self.execs().update(id, |e| {
            if let Some((h, w)) = e.pending_size.take() {
                let _ = tty::resize(master.as_ref(), h, w);
            }
            e.master = Some(master.clone());
        });
        if state.req.attach_stdin {
            let w = master.clone();
            std::thread::spawn(move || {
                let _ = io::copy(&mut stdin, &mut w.as_ref());
            });
        }
        let pump = {
            let (m, out) = (master.clone(), output.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match m.as_ref().read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write_output(StreamKind::Stdout, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        };
        let code = rx.recv().unwrap_or(255);
        drain(vec![pump]);
        self.exec_finished(id, code);
        let _ = output.close();
        code
    }
}

/// Waits a little for output pumps to finish: a daemonised grandchild may hold a pipe open.
fn drain(pumps: Vec<std::thread::JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for p in pumps {
        while !p.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The exec's OCI process: the container's, with the request's command, environment, user,
/// working directory, terminal and (for `--privileged`) every capability.
fn process_json(container_dir: &Path, req: &ExecRequest) -> Result<Vec<u8>, EngineError> {
    let bad = |e: String| EngineError::Internal(format!("exec: {e}"));
    let config = container_dir.join("bundle/config.json");
    let spec: serde_json::Value = fs::read(&config)
        .map_err(|e| bad(format!("{}: {e}", config.display())))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| bad(e.to_string())))?;
    let mut p = spec.get("process").cloned().unwrap_or_default();
    let obj = p
        .as_object_mut()
        .ok_or_else(|| bad("the bundle has no process".into()))?;
    obj.insert("args".into(), serde_json::json!(req.cmd));
    obj.insert("terminal".into(), serde_json::json!(req.tty));
    let mut env: Vec<String> = obj
        .get("env")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    obj.insert("env".into(), serde_json::json!(env));
    if !req.working_dir.is_empty() {
        obj.insert("cwd".into(), serde_json::json!(req.working_dir));
    }
    if !req.user.is_empty() {
        let (uid, gid, extra) = bundle::resolve_user(&container_dir.join("rootfs"), &req.user)
            .map_err(|e| EngineError::Invalid(format!("exec user {:?}: {e}", req.user)))?;
        obj.insert(
            "user".into(),
            serde_json::json!({"uid": uid, "gid": gid, "additionalGids": extra}),
        );
    }
    if req.privileged {
        let all = bundle::all_caps();
        obj.insert(
            "capabilities".into(),
            serde_json::json!({
                "bounding": all, "effective": all, "permitted": all,
            }),
        );
    }
    serde_json::to_vec_pretty(&p).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn process_json_overrides_the_containers_process() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("bundle")).unwrap();
        fs::write(
            d.path().join("bundle/config.json"),
            serde_json::to_vec(&serde_json::json!({"process": {
                "args": ["sleep", "1"], "cwd": "/", "env": ["PATH=/bin", "A=1"],
                "user": {"uid": 0, "gid": 0}, "terminal": false
            }}))
            .unwrap(),
        )
        .unwrap();
        let req = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec!["A=2".into(), "B=3".into()],
            working_dir: "/tmp".into(),
            tty: true,
            privileged: true,
            ..ExecRequest::default()
        };
        let p: serde_json::Value =
            serde_json::from_slice(&process_json(d.path(), &req).unwrap()).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], true);
        assert_eq!(
            p["env"],
            serde_json::json!(["PATH=/bin", "A=2", "B=3", "TERM=xterm"])
        );
        let caps = p["capabilities"]["effective"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
    }

    #[test]
    fn a_missing_bundle_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = process_json(d.path(), &ExecRequest::default()).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }
}
