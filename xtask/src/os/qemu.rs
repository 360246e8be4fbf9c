//! QEMU harness for the OS tests and `cargo xtask run`: TCG guests with the serial console
//! captured line by line (time-stamped from qemu start, into a log file and memory), waits on
//! console patterns, slirp networking with an ssh port forward, NoCloud drives, blank state
//! disks, the real OpenSSH client, and qemu killed whatever happens.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::apt;
use crate::sh;

pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Host packages the harness needs.
pub fn ensure_tools(uefi: bool) -> Result<()> {
    let mut t = vec![
        ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
        ("xorriso", "/usr/bin/xorriso"),
        ("mtools", "/usr/bin/mcopy"),
        ("dosfstools", "/usr/sbin/mkfs.vfat"),
        ("openssh-client", "/usr/bin/ssh"),
    ];
    if uefi {
        t.push(("ovmf", OVMF));
    }
    apt::ensure_tools(&t)
}

/// How the guest boots.
#[derive(Debug, Clone)]
pub enum Boot {
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    Cdrom {
        iso: PathBuf,
        uefi: bool,
    },
}

/// A guest to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub boot: Boot,
    pub memory_mb: u32,
    /// Raw disk images attached as virtio disks, in order (vda, vdb, ...).
    pub disks: Vec<PathBuf>,
    /// Raw disk images attached read-only after `disks` (shareable between guests).
    pub readonly_disks: Vec<PathBuf>,
    /// Host port forwarded to the guest's port 22 (None: no ssh forward).
    pub ssh_port: Option<u16>,
    /// More host ports forwarded to guest ports on 127.0.0.1: (host, guest).
    pub hostfwd: Vec<(u16, u16)>,
    /// Extra `guestfwd=` rules for the user network (e.g. `tcp:10.0.2.100:80-cmd:...`).
    pub guestfwd: Vec<String>,
    /// More NICs, each on its own restricted user network with this `net=` (e.g. `10.0.3.0/24`);
    /// the guest sees them as eth1, eth2, ... in order.
    pub extra_nets: Vec<String>,
    /// Serial log file.
    pub log: PathBuf,
    /// Attach the serial console to this terminal instead of capturing it.
    pub interactive: bool,
}

impl Spec {
    pub fn new(boot: Boot, log: &Path) -> Spec {
        Spec {
            boot,
            memory_mb: 512,
            disks: vec![],
            readonly_disks: vec![],
            ssh_port: None,
            guestfwd: vec![],
            hostfwd: vec![],
            extra_nets: vec![],
            log: log.to_path_buf(),
            interactive: false,
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-m", &self.memory_mb.to_string()]);
        c.args(["-nographic", "-no-reboot"]);
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                c.arg("-kernel").arg(kernel);
                c.arg("-initrd").arg(initrd);
                c.arg("-append").arg(append);
            }
            Boot::Cdrom { iso, uefi } => {
                c.arg("-cdrom").arg(iso).args(["-boot", "d"]);
                if *uefi {
                    c.args(["-bios", OVMF]);
                }
            }
        }
        let mut net = "user,id=n0,restrict=on".to_owned();
        if let Some(p) = self.ssh_port {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
        }
        for (h, g) in &self.hostfwd {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        for g in &self.guestfwd {
            net.push_str(&format!(",guestfwd={g}"));
        }
        c.args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"]);
        for (i, n) in self.extra_nets.iter().enumerate() {
            let id = format!("n{}", i + 1);
            c.args([
                "-netdev",
                &format!("user,id={id},restrict=on,net={n}"),
                "-device",
                &format!("virtio-net-pci,netdev={id}"),
            ]);
        }
        for d in &self.disks {
            c.arg("-drive")
                .arg(format!("file={},if=virtio,format=raw", d.display()));
        }
        for d in &self.readonly_disks {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                d.display()
            ));
        }
        c
    }

    /// Starts qemu with the console captured (or attached when `interactive`).
    pub fn start(&self) -> Result<Vm> {
        let mut cmd = self.command();
        if self.interactive {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            let log = fs::File::create(&self.log)
                .with_context(|| format!("creating {}", self.log.display()))?;
            let c = Arc::clone(&console);
            std::thread::spawn(move || capture(out, log, start, &c));
        }
        if let Some(mut err) = child.stderr.take() {
            let c = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                if let Ok(mut g) = c.0.lock() {
                    g.stderr = s;
                }
            });
        }
        Ok(Vm {
            child,
            console,
            start,
            log: self.log.clone(),
        })
    }
}

#[derive(Debug, Default)]
struct Console {
    /// (seconds since qemu start, line)
    lines: Vec<(f64, String)>,
    partial: String,
    eof: bool,
    stderr: String,
}

fn capture(out: impl Read, mut log: fs::File, start: Instant, c: &(Mutex<Console>, Condvar)) {
    let mut r = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read what is available up to a newline; a prompt without newline still shows up
        // in `partial` because BufReader hands over chunks as they arrive.
        let n = match r.fill_buf() {
            Ok([]) | Err(_) => 0,
            Ok(b) => {
                let n = b
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |i| i + 1);
                buf.extend_from_slice(&b[..n]);
                n
            }
        };
        if n == 0 {
            break;
        }
        r.consume(n);
        let t = start.elapsed().as_secs_f64();
        let Ok(mut g) = c.0.lock() else { return };
        g.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = g.partial.find('\n') {
            let line: String = g.partial[..i].trim_end_matches('\r').to_owned();
            g.partial.drain(..=i);
            let _ = writeln!(log, "[{t:8.3}] {line}");
            g.lines.push((t, line));
        }
        c.1.notify_all();
    }
    if let Ok(mut g) = c.0.lock() {
        if !g.partial.is_empty() {
            let t = start.elapsed().as_secs_f64();
            let line = std::mem::take(&mut g.partial);
            let _ = writeln!(log, "[{t:8.3}] {line}");
            g.lines.push((t, line));
        }
        g.eof = true;
    }
    c.1.notify_all();
}

/// A running guest; killed on drop.
pub struct Vm {
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    pub start: Instant,
    pub log: PathBuf,
}

impl Vm {
    /// Waits until a console line (or the current partial line) contains `pattern`; returns
    /// the seconds since qemu start and the line. Fails on timeout or when qemu exits first.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<(f64, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut g = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("console lock poisoned"))?;
        loop {
            if let Some((t, l)) = g.lines.iter().find(|(_, l)| l.contains(pattern)) {
                return Ok((*t, l.clone()));
            }
            if g.partial.contains(pattern) {
                return Ok((self.start.elapsed().as_secs_f64(), g.partial.clone()));
            }
            if g.eof {
                bail!(
                    "qemu exited before {pattern:?} appeared on the console (log {}){}",
                    self.log.display(),
                    tail(&g)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{pattern:?} did not appear on the console within {:?} (log {}){}",
                    timeout,
                    self.log.display(),
                    tail(&g)
                );
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .map_err(|_| anyhow::anyhow!("console lock poisoned"))?
                .0;
        }
    }

    /// True once qemu has exited (its console reached end of file).
    pub fn exited(&self) -> bool {
        self.console.0.lock().map(|g| g.eof).unwrap_or(true)
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<(f64, String)> {
        self.console
            .0
            .lock()
            .map(|g| g.lines.clone())
            .unwrap_or_default()
    }

    /// Waits for qemu to exit by itself; kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                // Let the capture thread drain the pipe.
                let (lock, cv) = &*self.console;
                if let Ok(g) = lock.lock() {
                    let _ = cv.wait_timeout_while(g, Duration::from_secs(2), |g| !g.eof);
                }
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "qemu did not exit within {timeout:?} (killed; log {})",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// qemu's stderr so far (complete once it exited).
    #[allow(dead_code)] // for the boot tests that come with `ros init`
    pub fn stderr(&self) -> String {
        self.console
            .0
            .lock()
            .map(|g| g.stderr.clone())
            .unwrap_or_default()
    }
}

fn tail(g: &Console) -> String {
    let n = g.lines.len();
    let mut s = String::from("\nlast console lines:");
    for (t, l) in &g.lines[n.saturating_sub(15)..] {
        s.push_str(&format!("\n  [{t:7.3}] {l}"));
    }
    if !g.stderr.is_empty() {
        s.push_str(&format!("\nqemu stderr: {}", g.stderr.trim()));
    }
    s
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; qemu binds it right after).
/// Copies stdin to a TCP connection to `addr` and the connection to stdout until both ends
/// close: what a `guestfwd=...-cmd:` rule runs (see [`guestfwd_to`]).
pub fn proxy(addr: &str) -> Result<()> {
    let up = std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    let mut down = up.try_clone()?;
    let mut up_w = up.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    // Rust's stdout is line-buffered: flush every read, or a reply's tail without a newline
    // would sit in the buffer while the client waits for it.
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    // The upstream closed: returning ends the process, which closes the guest's side too.
    Ok(())
}

/// A `guestfwd` rule: the guest's `guest_ip:guest_port` reaches `host_addr` on this machine
/// (through `xtask __proxy`, one per connection; nothing leaves the machine).
pub fn guestfwd_to(guest_ip: &str, guest_port: u16, host_addr: &str) -> Result<String> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    Ok(format!(
        "tcp:{guest_ip}:{guest_port}-cmd:{} __proxy {host_addr}",
        exe.display()
    ))
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A NoCloud seed: `user-data` and `meta-data` on a drive labelled `cidata`.
#[derive(Debug, Clone)]
pub struct NoCloud {
    pub user_data: String,
    pub meta_data: String,
}

impl NoCloud {
    pub fn new(user_data: &str, instance_id: &str, hostname: &str) -> NoCloud {
        NoCloud {
            user_data: user_data.to_owned(),
            meta_data: format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
        }
    }

    fn files(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("user-data"), &self.user_data)?;
        fs::write(dir.join("meta-data"), &self.meta_data)?;
        Ok(())
    }

    /// An ISO 9660 (Joliet + Rock Ridge) image labelled `cidata` (no root needed).
    pub fn iso(&self, out: &Path) -> Result<()> {
        let dir = out.with_extension("d");
        let _ = fs::remove_dir_all(&dir);
        self.files(&dir)?;
        let _ = fs::remove_file(out);
        let r = quiet(
            Command::new("xorriso")
                .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"])
                .arg(out)
                .arg(&dir),
        );
        let _ = fs::remove_dir_all(&dir);
        r
    }

    /// A 2 MiB vfat image labelled `cidata`, filled with mtools (no root, no loop device).
    pub fn vfat(&self, out: &Path) -> Result<()> {
        let dir = out.with_extension("d");
        let _ = fs::remove_dir_all(&dir);
        self.files(&dir)?;
        let _ = fs::remove_file(out);
        quiet(
            Command::new("mkfs.vfat")
                .args(["-n", "cidata", "-C"])
                .arg(out)
                .arg("2048"),
        )?;
        for f in ["user-data", "meta-data"] {
            quiet(
                Command::new("mcopy")
                    .arg("-i")
                    .arg(out)
                    .arg(dir.join(f))
                    .arg(format!("::{f}")),
            )?;
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}

fn quiet(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A sparse blank disk of `mib` MiB (a state disk to autoformat).
pub fn blank_disk(path: &Path, mib: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(mib << 20)
        .with_context(|| format!("sizing {}", path.display()))
}

/// A fresh passwordless ed25519 key pair at `path` (+ `.pub`); returns the public key line.
pub fn ssh_keygen(path: &Path) -> Result<String> {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "paddock-test", "-f"])
        .arg(path))?;
    let pubkey = PathBuf::from(format!("{}.pub", path.display()));
    Ok(fs::read_to_string(&pubkey)
        .with_context(|| format!("reading {}", pubkey.display()))?
        .trim()
        .to_owned())
}

/// The real OpenSSH client as `rancher@127.0.0.1:port`.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub port: u16,
    pub key: PathBuf,
    pub user: String,
}

impl Ssh {
    pub fn new(port: u16, key: &Path) -> Ssh {
        Ssh {
            port,
            key: key.to_path_buf(),
            user: "rancher".into(),
        }
    }

    pub fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            // A guest that stops answering (out of memory, say) ends the session in 30 s
            // instead of hanging the test.
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=3",
            "-i",
        ])
        .arg(&self.key)
        .arg("-p")
        .arg(self.port.to_string())
        .arg(format!("{}@127.0.0.1", self.user))
        .arg(remote);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `remote`, returning its output (whatever its status).
    #[allow(dead_code)] // for the boot tests that come with `ros init`
    pub fn run(&self, remote: &str) -> Result<Output> {
        self.command(remote)
            .output()
            .with_context(|| format!("ssh -p {} {remote}", self.port))
    }

    /// Runs `remote` with `input` on its stdin, failing unless it succeeds.
    pub fn send(&self, remote: &str, input: &Path) -> Result<()> {
        let file = fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let o = self
            .command(remote)
            .stdin(file)
            .output()
            .with_context(|| format!("ssh -p {} {remote}", self.port))?;
        if !o.status.success() {
            bail!(
                "ssh {remote:?} < {} failed with {}: {}",
                input.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `remote`, failing unless it succeeds; returns stdout.
    #[allow(dead_code)] // for the boot tests that come with `ros init`
    pub fn ok(&self, remote: &str) -> Result<String> {
        let o = self.run(remote)?;
        if !o.status.success() {
            bail!(
                "ssh {remote:?} failed with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Whether sshd answers a TCP connection with its banner within two seconds.
    fn banner(&self) -> bool {
        use std::io::Read as _;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
    }

    /// Retries `true` until a login works, giving up when `vm` exits; returns the seconds
    /// since qemu started.
    ///
    /// A login is tried only once sshd has sent its banner on a plain TCP connection: until
    /// the guest has an address, slirp holds a forwarded connection open without an answer,
    /// and `ssh` would spend its whole `ConnectTimeout` on each try, making the figure up to
    /// that much late.
    pub fn wait_ready(&self, vm: &Vm, timeout: Duration) -> Result<f64> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            if self.banner() {
                match self.run("true") {
                    Ok(o) if o.status.success() => return Ok(vm.start.elapsed().as_secs_f64()),
                    Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if vm.exited() {
                bail!("qemu exited before ssh answered: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "ssh to rancher@127.0.0.1:{} not ready within {timeout:?}: {last}",
            self.port
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("paddock-qemu-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn nocloud_drives_are_labelled_and_readable() {
        let d = tmp("nc");
        let nc = NoCloud::new("#cloud-config\nhostname: t\n", "i-1", "t");
        nc.iso(&d.join("seed.iso")).unwrap();
        nc.vfat(&d.join("seed.img")).unwrap();
        for img in ["seed.iso", "seed.img"] {
            let o = Command::new("blkid")
                .args(["-o", "value", "-s", "LABEL"])
                .arg(d.join(img))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "cidata", "{img}");
        }
        let o = Command::new("mtype")
            .arg("-i")
            .arg(d.join("seed.img"))
            .arg("::user-data")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "#cloud-config\nhostname: t\n"
        );
        let o = Command::new("xorriso")
            .args(["-indev"])
            .arg(d.join("seed.iso"))
            .args(["-osirrox", "on", "-extract", "/meta-data"])
            .arg(d.join("meta-data"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        assert_eq!(
            fs::read_to_string(d.join("meta-data")).unwrap(),
            "instance-id: i-1\nlocal-hostname: t\n"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn helpers() {
        let d = tmp("h");
        let p = free_port().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        blank_disk(&d.join("state.img"), 64).unwrap();
        assert_eq!(fs::metadata(d.join("state.img")).unwrap().len(), 64 << 20);
        let key = ssh_keygen(&d.join("id")).unwrap();
        assert!(key.starts_with("ssh-ed25519 "), "{key}");
        let cmd = format!("{:?}", Ssh::new(p, &d.join("id")).command("uname -a"));
        assert!(
            cmd.contains("rancher@127.0.0.1") && cmd.contains(&p.to_string()),
            "{cmd}"
        );
        let spec = Spec::new(
            Boot::Cdrom {
                iso: d.join("x.iso"),
                uefi: true,
            },
            &d.join("log"),
        );
        let mut spec = spec;
        spec.ssh_port = Some(p);
        spec.disks.push(d.join("state.img"));
        let c = format!("{:?}", spec.command());
        for want in [
            "-accel",
            "tcg",
            "-no-reboot",
            "restrict=on",
            OVMF,
            "if=virtio",
        ] {
            assert!(c.contains(want), "{want} in {c}");
        }
        let _ = fs::remove_dir_all(&d);
    }

    /// The console capture, wait_for, exit and drop-kill, with a shell standing in for qemu.
    #[test]
    fn console_capture() {
        let d = tmp("cc");
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo one; sleep 0.2; printf 'two\\nlogin: '; sleep 0.3; echo three",
        ]);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let start = Instant::now();
        let mut child = c.spawn().unwrap();
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let log = fs::File::create(d.join("log")).unwrap();
        let cc = Arc::clone(&console);
        std::thread::spawn(move || capture(out, log, start, &cc));
        let mut vm = Vm {
            child,
            console,
            start,
            log: d.join("log"),
        };
        let (t, l) = vm.wait_for("two", Duration::from_secs(5)).unwrap();
        assert_eq!(l, "two");
        assert!(t >= 0.15, "{t}");
        let (_, l) = vm.wait_for("login:", Duration::from_secs(5)).unwrap();
        assert!(l.starts_with("login:"));
        assert!(vm.wait_for("never", Duration::from_millis(100)).is_err());
        assert!(vm.wait_exit(Duration::from_secs(5)).unwrap().success());
        let err = vm
            .wait_for("nope", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited"), "{err}");
        let log = fs::read_to_string(d.join("log")).unwrap();
        assert!(
            log.contains("] one\n") && log.contains("] login: three\n"),
            "{log}"
        );
        let _ = fs::remove_dir_all(&d);
    }
}
