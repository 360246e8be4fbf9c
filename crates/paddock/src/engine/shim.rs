//! The per-container monitor (`ros __shim DIR`): one small process per running container.
//!
//! Why a process of its own: the daemon must be able to die (SIGKILL, crash, upgrade) without
//! taking containers with it, and come back to find them running with their logs intact. So
//! the daemon never parents a container. It spawns a shim, which calls setsid, becomes a child
//! subreaper, starts the container through the runtime and then:
//! - copies the container's stdout/stderr into `container.log` (docker's json-file format,
//!   rotated by size) and to any attached clients;
//! - reaps everything below it, and when the container's init exits writes `exit.json`;
//! - serves its socket ([`socket`], `shim`): a connection stays open for as long as the container runs (the daemon
//!   learns of the exit by EOF, before and after a restart of its own), and bytes written to
//!   it go to the container's stdin when it was created with `OpenStdin`.
//!
//! Files in the container directory that the shim owns: `state.json` (pid, start time),
//! `exit.json`, `container.log*`, `shim.sock`, `shim.log`, and for a container with a tty
//! `tty.sock` (resize requests; the shim holds the pty master).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::runtime::{Libcontainer, Runtime as _, Stdio};
use super::time::now_rfc3339;
use super::tty;
use crate::fsutil::write_atomic;

/// What the daemon tells a shim (`shim.json` in the container directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub bundle: PathBuf,
    /// The runtime's state directory.
    pub runtime_root: PathBuf,
    pub tty: bool,
    pub open_stdin: bool,
    /// Rotate `container.log` past this many bytes (0 = never).
    pub log_max_size: u64,
    /// Keep this many rotated files besides the current one.
    pub log_max_files: u32,
}

/// `state.json`: written once the container runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub pid: i32,
    pub shim_pid: i32,
    pub started_at: String,
}

/// `exit.json`: written when the container's init has exited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitState {
    pub exit_code: i32,
    pub finished_at: String,
    /// Set when the container could not start at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The readiness line a shim prints on stdout: `started <pid>` or `error <message>`.
pub const READY_PREFIX: &str = "started ";
pub const ERROR_PREFIX: &str = "error ";

/// Where the container in `dir` (`<data root>/containers/<id>`) has its socket `name`
/// (`shim`, `tty`, `console`): `<data root>/sock/<id prefix>.<name>.sock`. Not in the
/// container directory: that path is too long for a unix socket address (108 bytes) on a real
/// system (`/var/lib/system-docker/containers/<64 hex>/shim.sock` is 109).
pub fn socket(dir: &Path, name: &str) -> PathBuf {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = dir.parent().and_then(Path::parent).unwrap_or(dir);
    root.join("sock")
        .join(format!("{}.{name}.sock", &id[..16.min(id.len())]))
}

/// Gives the processes we start a clean signal state: nothing blocked (the daemon blocks
/// SIGTERM/SIGINT/SIGQUIT to take them synchronously, and a mask survives fork and exec) and
/// SIGPIPE at its default (the Rust runtime ignores it, which also survives exec). Called
/// first thing by the shim and the exec helper, before any thread exists.
pub fn clean_signals() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    let _ = paddock_sys::default_sigpipe();
}

/// Runs the shim for the container directory `dir`. Returns the process exit status.
pub fn main(dir: &Path) -> i32 {
    clean_signals();
    let cfg: ShimConfig = match fs::read(dir.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("{ERROR_PREFIX}reading {}/shim.json: {e}", dir.display());
            return 1;
        }
    };
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    match run(dir, &cfg) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            // The daemon may still be waiting for our readiness line.
            println!("{ERROR_PREFIX}{}", msg.replace('\n', " "));
            let exit = ExitState {
                exit_code: 128,
                finished_at: now_rfc3339(),
                error: Some(msg),
            };
            let _ = write_atomic(
                &dir.join("exit.json"),
                &serde_json::to_vec(&exit).unwrap_or_default(),
                0o644,
            );
            1
        }
    }
}

type Clients = Arc<Mutex<Vec<UnixStream>>>;

fn run(dir: &Path, cfg: &ShimConfig) -> anyhow::Result<i32> {
    let _ = fs::remove_file(dir.join("exit.json"));
    let sock_path = socket(dir, "shim");
    if let Some(p) = sock_path.parent() {
        fs::create_dir_all(p)?;
    }
    let _ = fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)?;

    // stdio: a pty (the runtime makes it in the container and sends us the master), or pipes
    // we read (stdout/stderr) and write (stdin).
    let mut outputs: Vec<(File, &'static str)> = Vec::new();
    let mut stdin: Option<File> = None;
    let pid = if cfg.tty {
        let csock = socket(dir, "console");
        let _ = fs::remove_file(&csock);
        let console = UnixListener::bind(&csock)?;
        let pid = Libcontainer::new(&cfg.runtime_root).start(
            &cfg.id,
            &cfg.bundle,
            Stdio::Console(csock.clone()),
        )?;
        let master = File::from(tty::receive_master(&console, Duration::from_secs(10))?);
        let _ = fs::remove_file(&csock);
        if cfg.open_stdin {
            stdin = Some(master.try_clone()?);
        }
        serve_resize(dir, master.try_clone()?)?;
        outputs.push((master, "stdout"));
        pid
    } else {
        let (out_r, out_w) = nix::unistd::pipe()?;
        let (err_r, err_w) = nix::unistd::pipe()?;
        let in_r: OwnedFd = if cfg.open_stdin {
            let (r, w) = nix::unistd::pipe()?;
            stdin = Some(File::from(w));
            r
        } else {
            File::open("/dev/null")?.into()
        };
        let pid = Libcontainer::new(&cfg.runtime_root).start(
            &cfg.id,
            &cfg.bundle,
            Stdio::Fds(in_r, out_w, err_w),
        )?;
        outputs.push((File::from(out_r), "stdout"));
        outputs.push((File::from(err_r), "stderr"));
        pid
    };

    let state = RunState {
        pid,
        shim_pid: std::process::id() as i32,
        started_at: now_rfc3339(),
    };
    write_atomic(&dir.join("state.json"), &serde_json::to_vec(&state)?, 0o644)?;
    println!("{READY_PREFIX}{pid}");
    let _ = io::stdout().flush();

    let clients: Clients = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Mutex::new(LogWriter::open(
        dir,
        cfg.log_max_size,
        cfg.log_max_files,
    )?));
    let mut copiers = vec![];
    for (src, stream) in outputs {
        let (log, clients) = (log.clone(), clients.clone());
        copiers.push(std::thread::spawn(move || {
            copy_output(src, stream, &log, &clients)
        }));
    }
    let stdin = stdin.map(|w| Arc::new(Mutex::new(w)));
    {
        let clients = clients.clone();
        std::thread::spawn(move || serve(listener, clients, stdin));
    }

    // Reap everything; the container's init decides the exit code.
    let target = Pid::from_raw(pid);
    let code = loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(p, c)) if p == target => break c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == target => break 128 + s as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ECHILD) => {
                // Not our child (should not happen): poll for it.
                if nix::sys::signal::kill(target, None).is_err() {
                    break 255;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Let the copiers drain what the container wrote last (not forever: a daemonised
    // grandchild may hold the pipes open).
    for c in copiers {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !c.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = Libcontainer::new(&cfg.runtime_root).delete(&cfg.id);
    let _ = fs::remove_file(socket(dir, "tty"));
    let exit = ExitState {
        exit_code: code,
        finished_at: now_rfc3339(),
        error: None,
    };
    write_atomic(&dir.join("exit.json"), &serde_json::to_vec(&exit)?, 0o644)?;
    let _ = fs::remove_file(&sock_path);
    // Closing the listener and the clients tells the daemon.
    Ok(0)
}

/// Serves `tty.sock`: each line `"<height> <width>"` resizes the container's terminal.
fn serve_resize(dir: &Path, master: File) -> io::Result<()> {
    let path = socket(dir, "tty");
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            for line in io::BufReader::new(conn).lines().map_while(Result::ok) {
                if let Some((h, w)) = tty::parse_size(&line) {
                    let _ = tty::resize(&master, h, w);
                }
            }
        }
    });
    Ok(())
}

/// Accepts connections on shim.sock: each one receives live output and may write stdin.
fn serve(listener: UnixListener, clients: Clients, stdin: Option<Arc<Mutex<File>>>) {
    for conn in listener.incoming().flatten() {
        if let Ok(c) = conn.try_clone()
            && let Ok(mut list) = clients.lock()
        {
            list.push(c);
        }
        let stdin = stdin.clone();
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut buf = [0u8; 8192];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Some(s) = &stdin
                            && let Ok(mut f) = s.lock()
                        {
                            let _ = f.write_all(&buf[..n]);
                        }
                    }
                }
            }
        });
    }
}

fn copy_output(mut src: File, stream: &str, log: &Mutex<LogWriter>, clients: &Clients) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Live copies for attached clients: frame as "<stream byte><len u32><data>".
        if let Ok(mut list) = clients.lock() {
            let kind = if stream == "stdout" { 1u8 } else { 2u8 };
            let mut frame = vec![kind, 0, 0, 0];
            frame.extend_from_slice(&(n as u32).to_be_bytes());
            frame.extend_from_slice(&buf[..n]);
            list.retain_mut(|c| c.write_all(&frame).is_ok());
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(mut l) = log.lock() {
                l.write(stream, &line);
            }
        }
        if pending.len() > 16 * 1024 {
            let line = std::mem::take(&mut pending);
            if let Ok(mut l) = log.lock() {
                l.write(stream, &line);
            }
        }
    }
    if !pending.is_empty()
        && let Ok(mut l) = log.lock()
    {
        l.write(stream, &pending);
    }
}

/// Writes docker json-file log lines, rotating by size. A write that fails (a full disk) is
/// counted and dropped: logging never stops the container.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    pub dropped: u64,
}

/// One log record, as docker's json-file driver writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    pub log: String,
    pub stream: String,
    pub time: String,
}

impl LogWriter {
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        let path = dir.join("container.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path,
            file,
            size,
            max_size,
            max_files,
            dropped: 0,
        })
    }

    pub fn write(&mut self, stream: &str, data: &[u8]) {
        let rec = LogRecord {
            log: String::from_utf8_lossy(data).into_owned(),
            stream: stream.into(),
            time: now_rfc3339(),
        };
        let Ok(mut line) = serde_json::to_vec(&rec) else {
            return;
        };
        line.push(b'\n');
        if self.max_size > 0 && self.size + line.len() as u64 > self.max_size && self.size > 0 {
            self.rotate();
        }
        match self.file.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(_) => self.dropped += 1,
        }
    }

    fn rotate(&mut self) {
        for i in (1..self.max_files.max(1)).rev() {
            let from = rotated(&self.path, i);
            let _ = fs::rename(&from, rotated(&self.path, i + 1));
        }
        if self.max_files == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::rename(&self.path, rotated(&self.path, 1));
        }
        let _ = fs::remove_file(rotated(&self.path, self.max_files + 1));
        if let Ok(f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = f;
            self.size = 0;
        }
    }
}

/// `container.log.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Reads the readiness line a freshly spawned shim prints.
pub fn read_ready(stdout: impl Read) -> Result<i32, String> {
    let mut line = String::new();
    let _ = io::BufReader::new(stdout).read_line(&mut line);
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix(READY_PREFIX) {
        return pid
            .parse()
            .map_err(|_| format!("shim sent a bad pid {pid:?}"));
    }
    Err(line
        .strip_prefix(ERROR_PREFIX)
        .unwrap_or("the shim exited before starting the container")
        .to_owned())
}

/// The last `n` lines of a shim's log, as `" (caused by: ...)"`, or nothing.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(n)..].join("; ");
    format!(" (runtime log: {})", tail.trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn logs_rotate_by_size_and_keep_max_files() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), 300, 2).unwrap();
        for i in 0..30 {
            w.write("stdout", format!("line {i}\n").as_bytes());
        }
        let p = d.path().join("container.log");
        assert!(p.exists() && rotated(&p, 1).exists() && rotated(&p, 2).exists());
        assert!(
            !rotated(&p, 3).exists(),
            "more rotated files than max_files"
        );
        assert!(fs::metadata(&p).unwrap().len() <= 300);
        let last = fs::read_to_string(&p).unwrap();
        assert!(last.contains("line 29"));
        let rec: LogRecord = serde_json::from_str(last.lines().next().unwrap()).unwrap();
        assert_eq!(rec.stream, "stdout");
    }

    #[test]
    fn readiness_lines() {
        assert_eq!(read_ready(&b"started 42\n"[..]), Ok(42));
        assert_eq!(
            read_ready(&b"error no such file\n"[..]),
            Err("no such file".into())
        );
        assert!(read_ready(&b""[..]).is_err());
    }
}
