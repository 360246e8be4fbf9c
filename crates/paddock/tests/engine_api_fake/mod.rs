//! An in-memory [`Backend`] for the Docker API tests: containers "run" tiny scripted programs
//! on threads, so the real docker CLI can be driven against the server without privileges.
//!
//! Programs (entrypoint + cmd): `echo ARGS..` (stdout, exit 0), `fail N` (stderr, exit N),
//! `lines N MS` (N lines MS ms apart, exit 0), `sleep` (until stopped or killed), `cat` (stdin
//! to stdout until EOF), `upper` (like cat, upper-cased).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use paddock::engine::api::types::{
    ContainerConfig, ContainerCreateBody, ContainerCreateResponse, ContainerInspect,
    ContainerState, ContainerSummary, ExecCreateBody, ExecInspect, ExecStartBody, IdResponse,
    ImageDeleteItem, ImageInspect, ImageSummary, Info, ProgressMessage, SummaryHostConfig, Version,
    WaitResponse,
};
use paddock::engine::api::{
    ApiError, AttachOptions, Backend, ContainerListOptions, HijackedIo, ImageListOptions,
    ImageRemoveOptions, LogChunk, LogStream, LogsOptions, ProgressStream, PullOptions,
    RemoveOptions, Session, StopOptions, StreamKind, TarWriter, TtySize, WaitCondition, Waiter,
    container_matches,
};

#[derive(Default)]
pub struct State {
    pub containers: BTreeMap<String, Ctr>,
    /// Exit codes of removed containers (for `wait --condition removed`).
    pub removed: HashMap<String, i64>,
    /// Output of removed containers, for attach streams still draining it.
    pub graveyard: HashMap<String, Vec<LogChunk>>,
    pub images: Vec<Img>,
    pub execs: HashMap<String, Exec>,
    pub next_id: u64,
    /// Every create body received, by name.
    pub created: Vec<ContainerCreateBody>,
    pub resizes: Vec<(String, TtySize)>,
    pub loaded: Vec<Vec<u8>>,
}

pub struct Ctr {
    pub id: String,
    pub name: String,
    pub body: ContainerCreateBody,
    pub status: &'static str,
    pub exit_code: i64,
    pub output: Vec<LogChunk>,
    /// How many times it exited.
    pub exits: u64,
    pub pid: i64,
    stdin: Sender<Vec<u8>>,
    /// Taken by the program while it runs (input sent before the start waits here).
    stdin_rx: Option<Receiver<Vec<u8>>>,
    stop: Option<Sender<i64>>,
}

#[derive(Clone)]
pub struct Img {
    pub id: String,
    pub tags: Vec<String>,
}

pub struct Exec {
    pub container: String,
    pub body: ExecCreateBody,
    pub running: bool,
    pub exit_code: Option<i64>,
}

#[derive(Default)]
pub struct Shared {
    pub state: Mutex<State>,
    pub cv: Condvar,
}

#[derive(Clone, Default)]
pub struct Fake {
    pub shared: Arc<Shared>,
}

fn normalize(image: &str) -> String {
    let image = image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn hex_id(n: u64) -> String {
    let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    format!("{mixed:016x}").repeat(4)
}

impl Fake {
    pub fn new() -> Fake {
        let fake = Fake::default();
        fake.lock().images.push(Img {
            id: format!("sha256:{}", "b".repeat(64)),
            tags: vec!["busybox:latest".to_string()],
        });
        fake
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    fn resolve(st: &State, id: &str) -> Result<String, ApiError> {
        if st.containers.contains_key(id) {
            return Ok(id.to_string());
        }
        if let Some(c) = st.containers.values().find(|c| c.name == id) {
            return Ok(c.id.clone());
        }
        let hits: Vec<&String> = st
            .containers
            .keys()
            .filter(|k| !id.is_empty() && k.starts_with(id))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(ApiError::no_such_container(id)),
        }
    }

    fn find_image<'a>(st: &'a State, name: &str) -> Option<&'a Img> {
        let want = normalize(name);
        st.images.iter().find(|i| {
            i.tags.contains(&want)
                || i.id == name
                || i.id.trim_start_matches("sha256:").starts_with(name)
        })
    }

    /// Waits (up to 10 s) until `f` holds for the state.
    pub fn wait_until(&self, f: impl Fn(&State) -> bool) -> bool {
        let mut st = self.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f(&st) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    fn emit(&self, id: &str, stream: StreamKind, data: &[u8]) {
        let mut st = self.lock();
        if let Some(c) = st.containers.get_mut(id) {
            c.output.push(LogChunk {
                stream,
                data: data.to_vec(),
            });
        }
        self.shared.cv.notify_all();
    }

    fn exited(&self, id: &str, code: i64) {
        let mut st = self.lock();
        let auto_remove = match st.containers.get_mut(id) {
            Some(c) => {
                c.status = "exited";
                c.exit_code = code;
                c.exits += 1;
                c.pid = 0;
                c.stop = None;
                c.body.host_config.auto_remove
            }
            None => false,
        };
        if auto_remove && let Some(c) = st.containers.remove(id) {
            st.removed.insert(id.to_string(), code);
            st.graveyard.insert(id.to_string(), c.output);
        }
        self.shared.cv.notify_all();
    }

    fn start_program(&self, id: &str) -> Result<(), ApiError> {
        let (argv, stdin_rx, stop_rx) = {
            let mut st = self.lock();
            let c = st
                .containers
                .get_mut(id)
                .ok_or_else(|| ApiError::no_such_container(id))?;
            if c.status == "running" {
                return Err(ApiError::not_modified());
            }
            let mut argv = c.body.config.entrypoint.clone().unwrap_or_default();
            argv.extend(c.body.config.cmd.clone().unwrap_or_default());
            let stdin_rx = match c.stdin_rx.take() {
                Some(rx) => rx,
                None => {
                    let (tx, rx) = channel();
                    c.stdin = tx;
                    rx
                }
            };
            let (stop_tx, stop_rx) = channel();
            c.stop = Some(stop_tx);
            c.status = "running";
            c.pid = 4242;
            self.shared.cv.notify_all();
            (argv, stdin_rx, stop_rx)
        };
        let fake = self.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let code = fake.program(&id, &argv, &stdin_rx, &stop_rx);
            fake.exited(&id, code);
        });
        Ok(())
    }

    fn program(
        &self,
        id: &str,
        argv: &[String],
        stdin: &Receiver<Vec<u8>>,
        stop: &Receiver<i64>,
    ) -> i64 {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["echo", rest @ ..] => {
                self.emit(
                    id,
                    StreamKind::Stdout,
                    format!("{}\n", rest.join(" ")).as_bytes(),
                );
                0
            }
            ["fail", n] => {
                self.emit(
                    id,
                    StreamKind::Stderr,
                    format!("failing with {n}\n").as_bytes(),
                );
                n.parse().unwrap_or(1)
            }
            ["lines", n, ms] => {
                let n: u32 = n.parse().unwrap_or(1);
                let ms: u64 = ms.parse().unwrap_or(10);
                for i in 1..=n {
                    if let Ok(code) = stop.recv_timeout(Duration::from_millis(ms)) {
                        return code;
                    }
                    self.emit(id, StreamKind::Stdout, format!("line {i}\n").as_bytes());
                }
                0
            }
            ["sleep", ..] => stop.recv().unwrap_or(137),
            // Upper-cases stdin until a 'q' (for tty tests, where there is no EOF).
            ["untilq"] => loop {
                match stdin.recv_timeout(Duration::from_millis(20)) {
                    Ok(data) if data.is_empty() => return 0,
                    Ok(data) => {
                        let end = data.iter().position(|b| *b == b'q');
                        let upto = end.unwrap_or(data.len());
                        self.emit(id, StreamKind::Stdout, &data[..upto].to_ascii_uppercase());
                        if end.is_some() {
                            return 0;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Ok(code) = stop.try_recv() {
                            return code;
                        }
                    }
                    Err(_) => return 0,
                }
            },
            ["cat"] | ["upper"] => loop {
                if let Ok(code) = stop.try_recv() {
                    return code;
                }
                match stdin.recv_timeout(Duration::from_millis(20)) {
                    Ok(data) if data.is_empty() => return 0,
                    Ok(data) => {
                        let data = if args[0] == "upper" {
                            data.to_ascii_uppercase()
                        } else {
                            data
                        };
                        self.emit(id, StreamKind::Stdout, &data);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(_) => return 0,
                }
            },
            _ => {
                self.emit(id, StreamKind::Stderr, b"fake: unknown program\n");
                127
            }
        }
    }

    /// Signals a running container's program and waits for it to exit.
    fn terminate(&self, id: &str, code: i64) -> Result<(), ApiError> {
        let exits = {
            let st = self.lock();
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| ApiError::no_such_container(id))?;
            if c.status != "running" {
                return Ok(());
            }
            if let Some(stop) = &c.stop {
                let _ = stop.send(code);
            }
            c.exits
        };
        let id = id.to_string();
        self.wait_until(|st| st.containers.get(&id).is_none_or(|c| c.exits > exits));
        Ok(())
    }

    fn summary(c: &Ctr) -> ContainerSummary {
        let mut argv = c.body.config.entrypoint.clone().unwrap_or_default();
        argv.extend(c.body.config.cmd.clone().unwrap_or_default());
        ContainerSummary {
            id: c.id.clone(),
            names: vec![format!("/{}", c.name)],
            image: c.body.config.image.clone(),
            image_id: format!("sha256:{}", "b".repeat(64)),
            command: argv.join(" "),
            created: 1_700_000_000,
            labels: c.body.config.labels.clone(),
            state: c.status.to_string(),
            status: match c.status {
                "running" => "Up Less than a second".to_string(),
                "exited" => format!("Exited ({}) Less than a second ago", c.exit_code),
                _ => "Created".to_string(),
            },
            host_config: SummaryHostConfig {
                network_mode: c.body.host_config.network_mode.clone(),
            },
            ..ContainerSummary::default()
        }
    }
}

struct OutputFollower {
    fake: Fake,
    id: String,
    next: usize,
    /// End once the container has exited more than this many times (None = do not follow).
    until_exits: Option<u64>,
    stdout: bool,
    stderr: bool,
}

impl Iterator for OutputFollower {
    type Item = std::io::Result<LogChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut st = self.fake.lock();
        loop {
            let (output, exits) = match st.containers.get(&self.id) {
                Some(c) => (&c.output, c.exits),
                None => (st.graveyard.get(&self.id)?, u64::MAX),
            };
            if let Some(chunk) = output.get(self.next) {
                self.next += 1;
                let wanted = match chunk.stream {
                    StreamKind::Stdout => self.stdout,
                    StreamKind::Stderr => self.stderr,
                    StreamKind::Stdin => false,
                };
                if wanted {
                    return Some(Ok(chunk.clone()));
                }
                continue;
            }
            match self.until_exits {
                None => return None,
                Some(n) if exits > n => return None,
                Some(_) => {}
            }
            st = self.fake.shared.cv.wait(st).ok()?;
        }
    }
}

struct AttachSession {
    fake: Fake,
    id: String,
    tty: bool,
    opts: AttachOptions,
    follower: OutputFollower,
}

impl Session for AttachSession {
    fn tty(&self) -> bool {
        self.tty
    }

    fn run(self: Box<Self>, io: HijackedIo) {
        let HijackedIo { mut stdin, output } = io;
        if self.opts.stdin {
            let fake = self.fake.clone();
            let id = self.id.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = stdin.read(&mut buf).unwrap_or(0);
                    let tx = fake.lock().containers.get(&id).map(|c| c.stdin.clone());
                    if let Some(tx) = tx {
                        // An empty message is the end of input.
                        let _ = tx.send(buf[..n].to_vec());
                    }
                    if n == 0 {
                        return;
                    }
                }
            });
        }
        for chunk in self.follower {
            let Ok(chunk) = chunk else { return };
            if output.write_output(chunk.stream, &chunk.data).is_err() {
                return;
            }
        }
    }
}

struct ExecSession {
    fake: Fake,
    exec_id: String,
    body: ExecCreateBody,
}

impl Session for ExecSession {
    fn tty(&self) -> bool {
        self.body.tty
    }

    fn run(self: Box<Self>, io: HijackedIo) {
        let HijackedIo { mut stdin, output } = io;
        let args: Vec<&str> = self.body.cmd.iter().map(String::as_str).collect();
        let code = match args.as_slice() {
            ["cat"] | ["upper"] => {
                let mut input = Vec::new();
                if self.body.attach_stdin {
                    let _ = stdin.read_to_end(&mut input);
                }
                if args[0] == "upper" {
                    input.make_ascii_uppercase();
                }
                let _ = output.write_output(StreamKind::Stdout, &input);
                let _ = output.write_output(StreamKind::Stderr, b"done\n");
                0
            }
            ["echo", rest @ ..] => {
                let _ = output.write_output(
                    StreamKind::Stdout,
                    format!("{}\n", rest.join(" ")).as_bytes(),
                );
                0
            }
            ["fail", n] => n.parse().unwrap_or(1),
            _ => 127,
        };
        let mut st = self.fake.lock();
        if let Some(e) = st.execs.get_mut(&self.exec_id) {
            e.running = false;
            e.exit_code = Some(code);
        }
        self.fake.shared.cv.notify_all();
    }
}

impl Backend for Fake {
    fn version(&self) -> Result<Version, ApiError> {
        Ok(Version::system_engine("0.0.0-fake", "6.1.0-fake"))
    }

    fn info(&self) -> Result<Info, ApiError> {
        let st = self.lock();
        let running = st
            .containers
            .values()
            .filter(|c| c.status == "running")
            .count() as i64;
        Ok(Info {
            id: "FAKE".into(),
            containers: st.containers.len() as i64,
            containers_running: running,
            containers_stopped: st.containers.len() as i64 - running,
            images: st.images.len() as i64,
            name: "fakehost".into(),
            server_version: "0.0.0-fake".into(),
            operating_system: "Paddock".into(),
            os_type: "linux".into(),
            ..Info::default()
        })
    }

    fn container_list(
        &self,
        opts: &ContainerListOptions,
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        let st = self.lock();
        Ok(st
            .containers
            .values()
            .filter(|c| opts.all || c.status == "running")
            .map(Fake::summary)
            .filter(|s| container_matches(s, &opts.filters))
            .collect())
    }

    fn container_create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, ApiError> {
        let mut st = self.lock();
        if Fake::find_image(&st, &body.config.image).is_none() {
            return Err(ApiError::no_such_image(&normalize(&body.config.image)));
        }
        st.next_id += 1;
        let id = hex_id(st.next_id);
        let name = name
            .map(String::from)
            .unwrap_or_else(|| format!("fake_{}", st.next_id));
        if let Some(other) = st.containers.values().find(|c| c.name == name) {
            return Err(ApiError::conflict(format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{}\". \
                 You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        st.created.push(body.clone());
        let (stdin, stdin_rx) = channel();
        st.containers.insert(
            id.clone(),
            Ctr {
                id: id.clone(),
                name,
                body,
                status: "created",
                exit_code: 0,
                output: Vec::new(),
                exits: 0,
                pid: 0,
                stdin,
                stdin_rx: Some(stdin_rx),
                stop: None,
            },
        );
        Ok(ContainerCreateResponse {
            id,
            warnings: Vec::new(),
        })
    }

    fn container_inspect(&self, id: &str) -> Result<ContainerInspect, ApiError> {
        let st = self.lock();
        let id = Fake::resolve(&st, id)?;
        let c = &st.containers[&id];
        let mut argv = c.body.config.entrypoint.clone().unwrap_or_default();
        argv.extend(c.body.config.cmd.clone().unwrap_or_default());
        Ok(ContainerInspect {
            id: c.id.clone(),
            created: "2023-11-14T22:13:20Z".into(),
            path: argv.first().cloned().unwrap_or_default(),
            args: argv.iter().skip(1).cloned().collect(),
            state: ContainerState {
                status: c.status.to_string(),
                running: c.status == "running",
                pid: c.pid,
                exit_code: c.exit_code,
                started_at: "2023-11-14T22:13:21Z".into(),
                finished_at: "0001-01-01T00:00:00Z".into(),
                ..ContainerState::default()
            },
            image: format!("sha256:{}", "b".repeat(64)),
            name: format!("/{}", c.name),
            driver: "overlay".into(),
            platform: "linux".into(),
            host_config: c.body.host_config.clone(),
            config: ContainerConfig {
                ..c.body.config.clone()
            },
            ..ContainerInspect::default()
        })
    }

    fn container_start(&self, id: &str) -> Result<(), ApiError> {
        let id = Fake::resolve(&self.lock(), id)?;
        self.start_program(&id)
    }

    fn container_stop(&self, id: &str, _opts: &StopOptions) -> Result<(), ApiError> {
        let id = Fake::resolve(&self.lock(), id)?;
        if self.lock().containers[&id].status != "running" {
            return Err(ApiError::not_modified());
        }
        self.terminate(&id, 143)
    }

    fn container_restart(&self, id: &str, _opts: &StopOptions) -> Result<(), ApiError> {
        let id = Fake::resolve(&self.lock(), id)?;
        self.terminate(&id, 143)?;
        self.start_program(&id)
    }

    fn container_kill(&self, id: &str, signal: Option<&str>) -> Result<(), ApiError> {
        let id = Fake::resolve(&self.lock(), id)?;
        if self.lock().containers[&id].status != "running" {
            return Err(ApiError::conflict(format!("Container {id} is not running")));
        }
        let code = match signal.map(|s| s.trim_start_matches("SIG")) {
            None | Some("KILL") | Some("9") => 137,
            Some("HUP") | Some("1") => 129,
            Some("TERM") | Some("15") => 143,
            Some(_) => 128,
        };
        self.terminate(&id, code)
    }

    fn container_remove(&self, id: &str, opts: &RemoveOptions) -> Result<(), ApiError> {
        let id = Fake::resolve(&self.lock(), id)?;
        if self.lock().containers[&id].status == "running" {
            if !opts.force {
                return Err(ApiError::conflict(format!(
                    "You cannot remove a running container {id}. Stop the container before \
                     attempting removal or force remove"
                )));
            }
            self.terminate(&id, 137)?;
        }
        let mut st = self.lock();
        if let Some(c) = st.containers.remove(&id) {
            st.removed.insert(id, c.exit_code);
        }
        self.shared.cv.notify_all();
        Ok(())
    }

    fn container_wait(&self, id: &str, condition: WaitCondition) -> Result<Waiter, ApiError> {
        let (id, exits, running) = {
            let st = self.lock();
            let id = Fake::resolve(&st, id)?;
            let c = &st.containers[&id];
            (id, c.exits, c.status == "running")
        };
        let fake = self.clone();
        Ok(Box::new(move || {
            let done = |st: &State| match condition {
                WaitCondition::NotRunning if !running => true,
                WaitCondition::NotRunning | WaitCondition::NextExit => {
                    st.containers.get(&id).is_none_or(|c| c.exits > exits)
                }
                WaitCondition::Removed => !st.containers.contains_key(&id),
            };
            let mut st = fake.lock();
            while !done(&st) {
                st = fake.shared.cv.wait(st).unwrap();
            }
            let code = match st.containers.get(&id) {
                Some(c) => c.exit_code,
                None => st.removed.get(&id).copied().unwrap_or(-1),
            };
            Ok(WaitResponse {
                status_code: code,
                error: None,
            })
        }))
    }

    fn container_logs(&self, id: &str, opts: &LogsOptions) -> Result<LogStream, ApiError> {
        let st = self.lock();
        let id = Fake::resolve(&st, id)?;
        let c = &st.containers[&id];
        let start = match opts.tail {
            None => 0,
            Some(n) => c.output.len().saturating_sub(n as usize),
        };
        let until_exits = if opts.follow && c.status == "running" {
            Some(c.exits)
        } else {
            None
        };
        Ok(LogStream {
            tty: c.body.config.tty,
            chunks: Box::new(OutputFollower {
                fake: self.clone(),
                id,
                next: start,
                until_exits,
                stdout: opts.stdout,
                stderr: opts.stderr,
            }),
        })
    }

    fn container_rename(&self, id: &str, new_name: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        let id = Fake::resolve(&st, id)?;
        if st.containers.values().any(|c| c.name == new_name) {
            return Err(ApiError::conflict(format!(
                "Error when allocating new name: Conflict. The container name \"/{new_name}\" is already in use"
            )));
        }
        if let Some(c) = st.containers.get_mut(&id) {
            c.name = new_name.to_string();
        }
        Ok(())
    }

    fn container_attach(
        &self,
        id: &str,
        opts: &AttachOptions,
    ) -> Result<Box<dyn Session>, ApiError> {
        let st = self.lock();
        let id = Fake::resolve(&st, id)?;
        let c = &st.containers[&id];
        let next = if opts.logs { 0 } else { c.output.len() };
        Ok(Box::new(AttachSession {
            fake: self.clone(),
            id: id.clone(),
            tty: c.body.config.tty,
            opts: opts.clone(),
            follower: OutputFollower {
                fake: self.clone(),
                id,
                next,
                // A created container's next exit; a running one's current run.
                until_exits: Some(c.exits),
                stdout: opts.stdout,
                stderr: opts.stderr,
            },
        }))
    }

    fn container_resize(&self, id: &str, size: TtySize) -> Result<(), ApiError> {
        let mut st = self.lock();
        let id = Fake::resolve(&st, id)?;
        st.resizes.push((id, size));
        Ok(())
    }

    fn exec_create(&self, container: &str, body: ExecCreateBody) -> Result<IdResponse, ApiError> {
        let mut st = self.lock();
        let id = Fake::resolve(&st, container)?;
        if st.containers[&id].status != "running" {
            return Err(ApiError::conflict(format!("Container {id} is not running")));
        }
        st.next_id += 1;
        let exec_id = format!("e{}", &hex_id(st.next_id)[1..]);
        st.execs.insert(
            exec_id.clone(),
            Exec {
                container: id,
                body,
                running: false,
                exit_code: None,
            },
        );
        Ok(IdResponse { id: exec_id })
    }

    fn exec_start(
        &self,
        exec_id: &str,
        opts: &ExecStartBody,
    ) -> Result<Option<Box<dyn Session>>, ApiError> {
        let mut st = self.lock();
        let e = st
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| ApiError::no_such_exec(exec_id))?;
        if e.running || e.exit_code.is_some() {
            return Err(ApiError::conflict(format!(
                "Exec {exec_id} has already run"
            )));
        }
        e.running = true;
        let body = e.body.clone();
        if opts.detach {
            e.running = false;
            e.exit_code = Some(0);
            return Ok(None);
        }
        Ok(Some(Box::new(ExecSession {
            fake: self.clone(),
            exec_id: exec_id.to_string(),
            body,
        })))
    }

    fn exec_inspect(&self, exec_id: &str) -> Result<ExecInspect, ApiError> {
        let st = self.lock();
        let e = st
            .execs
            .get(exec_id)
            .ok_or_else(|| ApiError::no_such_exec(exec_id))?;
        Ok(ExecInspect {
            id: exec_id.to_string(),
            running: e.running,
            exit_code: e.exit_code,
            container_id: e.container.clone(),
            open_stdin: e.body.attach_stdin,
            open_stdout: e.body.attach_stdout,
            open_stderr: e.body.attach_stderr,
            ..ExecInspect::default()
        })
    }

    fn image_list(&self, _opts: &ImageListOptions) -> Result<Vec<ImageSummary>, ApiError> {
        Ok(self
            .lock()
            .images
            .iter()
            .map(|i| ImageSummary {
                id: i.id.clone(),
                repo_tags: i.tags.clone(),
                created: 1_700_000_000,
                size: 4_400_000,
                shared_size: -1,
                containers: -1,
                ..ImageSummary::default()
            })
            .collect())
    }

    fn image_inspect(&self, name: &str) -> Result<ImageInspect, ApiError> {
        let st = self.lock();
        let i = Fake::find_image(&st, name).ok_or_else(|| ApiError::no_such_image(name))?;
        Ok(ImageInspect {
            id: i.id.clone(),
            repo_tags: i.tags.clone(),
            os: "linux".into(),
            architecture: "amd64".into(),
            created: "2023-11-14T22:13:20Z".into(),
            ..ImageInspect::default()
        })
    }

    fn image_pull(&self, opts: &PullOptions) -> Result<ProgressStream, ApiError> {
        let repo = normalize(&opts.from_image);
        if repo.starts_with("broken") {
            // A failure after the answer started goes in-band.
            return Ok(Box::new(
                vec![
                    ProgressMessage::status(None, "Pulling fs layer"),
                    ProgressMessage::error("unexpected EOF while downloading a layer"),
                ]
                .into_iter(),
            ));
        }
        if repo.starts_with("nosuch") {
            return Err(ApiError::not_found(format!(
                "pull access denied for {}, repository does not exist",
                opts.from_image
            )));
        }
        let name = match &opts.tag {
            Some(t) => normalize(&format!("{}:{t}", opts.from_image)),
            None => normalize(&opts.from_image),
        };
        let mut st = self.lock();
        st.next_id += 1;
        let id = format!("sha256:{:064x}", 0x1a6e_0000_u64 + st.next_id);
        st.images.push(Img {
            id,
            tags: vec![name.clone()],
        });
        let tag = opts.tag.clone().unwrap_or_else(|| "latest".into());
        Ok(Box::new(
            vec![
                ProgressMessage::status(Some(&tag), &format!("Pulling from {}", opts.from_image)),
                ProgressMessage::status(Some("0123456789ab"), "Pull complete"),
                ProgressMessage::status(None, "Digest: sha256:feedface"),
                ProgressMessage::status(
                    None,
                    &format!("Status: Downloaded newer image for {name}"),
                ),
            ]
            .into_iter(),
        ))
    }

    fn image_load(&self, tar: &mut dyn Read, _quiet: bool) -> Result<ProgressStream, ApiError> {
        let mut data = Vec::new();
        tar.read_to_end(&mut data)
            .map_err(|e| ApiError::bad_parameter(format!("cannot read the tarball: {e}")))?;
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some(name) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("FAKE-IMAGE-TAR "))
            .map(String::from)
        else {
            return Err(ApiError::bad_parameter("not an image tarball"));
        };
        let mut st = self.lock();
        st.loaded.push(data);
        st.images.push(Img {
            id: format!("sha256:{}", "d".repeat(64)),
            tags: vec![name.clone()],
        });
        Ok(Box::new(
            vec![ProgressMessage::stream(&format!("Loaded image: {name}\n"))].into_iter(),
        ))
    }

    fn image_save(&self, names: &[String]) -> Result<TarWriter, ApiError> {
        let st = self.lock();
        for n in names {
            if Fake::find_image(&st, n).is_none() {
                return Err(ApiError::no_such_image(n));
            }
        }
        let first = normalize(&names[0]);
        Ok(Box::new(move |w: &mut dyn std::io::Write| {
            w.write_all(format!("FAKE-IMAGE-TAR {first}\n").as_bytes())?;
            // Big enough for many chunks.
            for i in 0..20_000 {
                w.write_all(format!("filler line {i:08}\n").as_bytes())?;
            }
            Ok(())
        }))
    }

    fn image_tag(&self, source: &str, repo: &str, tag: Option<&str>) -> Result<(), ApiError> {
        let mut st = self.lock();
        let id = Fake::find_image(&st, source)
            .ok_or_else(|| ApiError::no_such_image(source))?
            .id
            .clone();
        let new = normalize(&format!("{repo}:{}", tag.unwrap_or("latest")));
        for i in st.images.iter_mut() {
            i.tags.retain(|t| *t != new);
        }
        if let Some(i) = st.images.iter_mut().find(|i| i.id == id) {
            i.tags.push(new);
        }
        Ok(())
    }

    fn image_remove(
        &self,
        name: &str,
        opts: &ImageRemoveOptions,
    ) -> Result<Vec<ImageDeleteItem>, ApiError> {
        let mut st = self.lock();
        let want = normalize(name);
        let img = Fake::find_image(&st, name)
            .ok_or_else(|| ApiError::no_such_image(name))?
            .clone();
        if !opts.force
            && let Some(c) = st
                .containers
                .values()
                .find(|c| normalize(&c.body.config.image) == want)
        {
            return Err(ApiError::conflict(format!(
                "conflict: unable to remove repository reference \"{name}\" (must force) - \
                 container {} is using its referenced image {}",
                &c.id[..12],
                &img.id[7..19]
            )));
        }
        let mut out = vec![ImageDeleteItem {
            untagged: Some(want.clone()),
            deleted: None,
        }];
        let left = {
            let i = st.images.iter_mut().find(|i| i.id == img.id);
            match i {
                Some(i) => {
                    i.tags.retain(|t| *t != want);
                    i.tags.len()
                }
                None => 0,
            }
        };
        if left == 0 {
            st.images.retain(|i| i.id != img.id);
            out.push(ImageDeleteItem {
                untagged: None,
                deleted: Some(img.id),
            });
        }
        Ok(out)
    }
}

/// A server on a temporary socket with a fresh fake behind it.
pub struct Harness {
    // Dropped first: the socket must still exist to wake the accept loop.
    pub server: Option<paddock::engine::api::ServerHandle>,
    pub dir: tempfile::TempDir,
    pub sock: std::path::PathBuf,
    pub fake: Fake,
}

impl Harness {
    pub fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        let fake = Fake::new();
        let server = paddock::engine::api::ApiServer::bind(&sock, Arc::new(fake.clone()))
            .unwrap()
            .spawn()
            .unwrap();
        Harness {
            dir,
            sock,
            fake,
            server: Some(server),
        }
    }
}
