//! `ros docker-init`: the `docker` system service, which runs the user's Docker daemon.
//!
//! The daemon's binaries come from the `docker` system image (Debian's docker.io, containerd,
//! runc and iptables), but it runs in the mount namespace of the storage-context container
//! (`rancher.docker.storage_context`, `console` by default), as in RancherOS v0.4: `docker run
//! -v /foo:/foo` in the console sees the console's `/foo`. To get both, this process clones the
//! docker container's root mount (`open_tree`), joins the console's mount namespace and attaches
//! the clone at [`DOCKER_ROOT`] there; the daemon and its helpers run from that directory, with
//! PATH and the library path pointing into it. The console's `docker` command links to it.
//!
//! A `dockerd` placed in the console's `/usr/local/bin` replaces the shipped one (v0.4's custom
//! user Docker). This process stays the service's main process: it supervises the daemon,
//! passes SIGTERM on, ends with it, and once the daemon answers loads the preload archives and
//! brings up the user-scope services (`ros service up` with the user Docker reachable).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::config::model::Docker;

/// Kernel modules the daemon's networking needs (qemu.md section 7), loaded before it starts.
pub const MODULES: &[&str] = &[
    "overlay",
    "veth",
    "bridge",
    "br_netfilter",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nf_nat",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_nat",
    "xt_tcpudp",
    "xfrm_user",
];

/// Where the docker image's root is attached in the storage context.
pub const DOCKER_ROOT: &str = "/usr/lib/paddock/docker";

/// Where user images to preload are dropped (`docker load` at each start, once per file).
pub const PRELOAD_DIR: &str = "/var/lib/rancher/preload/docker";

/// The daemon's flags from `rancher.docker`, in RancherOS's order and spelling.
pub fn daemon_args(d: &Docker) -> Vec<String> {
    let mut a: Vec<String> = vec![];
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{name}={v}"));
        }
    };
    let s = |v: &Option<crate::config::types::Line>| v.as_ref().map(|l| l.to_string());
    flag("bridge", s(&d.bridge));
    flag("bip", s(&d.bip));
    flag(
        "config-file",
        d.config_file.as_ref().map(|p| p.as_str().to_owned()),
    );
    flag("containerd", s(&d.containerd));
    flag(
        "exec-root",
        d.exec_root.as_ref().map(|p| p.as_str().to_owned()),
    );
    flag("group", s(&d.group));
    // data_root (BurmillaOS) wins over graph (RancherOS).
    flag(
        "data-root",
        d.data_root
            .as_ref()
            .or(d.graph.as_ref())
            .map(|p| p.as_str().to_owned()),
    );
    flag("log-driver", s(&d.log_driver));
    flag(
        "pidfile",
        d.pid_file.as_ref().map(|p| p.as_str().to_owned()),
    );
    flag("registry-mirror", s(&d.registry_mirror));
    flag("storage-driver", s(&d.storage_driver));
    for (k, v) in &d.log_opts {
        a.push(format!("--log-opt={k}={v}"));
    }
    for h in &d.host {
        a.push(format!("--host={h}"));
    }
    for r in &d.insecure_registry {
        a.push(format!("--insecure-registry={r}"));
    }
    for (name, v) in [
        ("debug", d.debug),
        ("live-restore", d.live_restore),
        ("selinux-enabled", d.selinux_enabled),
        ("userland-proxy", d.userland_proxy),
    ] {
        if let Some(v) = v {
            a.push(format!("--{name}={v}"));
        }
    }
    if d.tls == Some(true) {
        a.extend(d.tls_args.iter().map(|l| l.to_string()));
    }
    a.extend(d.extra_args.iter().map(|l| l.to_string()));
    a
}

/// `K=V` lines of `rancher.docker.environment`; lines without `=` are skipped.
pub fn environment(d: &Docker) -> Vec<(String, String)> {
    d.environment
        .iter()
        .filter_map(|l| {
            let (k, v) = l.as_str().split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// How to start the daemon from the image attached at `root`: the program and the environment
/// that finds the image's helpers (containerd, runc, docker-proxy, iptables) and their
/// libraries there.
pub fn launch_env(root: &Path) -> (PathBuf, Vec<(String, String)>) {
    let r = root.display();
    let path = format!(
        "{r}/usr/local/sbin:{r}/usr/local/bin:{r}/usr/sbin:{r}/usr/bin:{r}/sbin:{r}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let libs = format!("{r}/usr/lib/x86_64-linux-gnu:{r}/lib/x86_64-linux-gnu");
    (
        root.join("usr/sbin/dockerd"),
        vec![
            ("PATH".into(), path),
            ("LD_LIBRARY_PATH".into(), libs),
            (
                "XTABLES_LIBDIR".into(),
                format!("{r}/usr/lib/x86_64-linux-gnu/xtables"),
            ),
        ],
    )
}

fn say(msg: impl AsRef<str>) {
    eprintln!("docker-init: {}", msg.as_ref());
}

/// The storage context's PID, once it runs (the console starts before the docker service).
fn context_pid(name: &str, wait: Duration) -> Result<i64, String> {
    let client =
        crate::engine::client::Client::new(&format!("unix://{}", crate::init::ENGINE_SOCKET))
            .map_err(|e| format!("the system engine: {e}"))?;
    let deadline = Instant::now() + wait;
    loop {
        match client.inspect(name) {
            Ok(c) if c.state.running && c.state.pid > 0 => return Ok(c.state.pid),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Ok(_) => return Err(format!("storage context {name} is not running")),
            Err(e) => return Err(format!("storage context {name}: {e}")),
        }
    }
}

/// Loads every archive in the preload directory that is new or changed since it was loaded.
fn preload(docker: &Path, socket: &str) {
    let dir = Path::new(PRELOAD_DIR);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let done_file = dir.join(".loaded");
    let mut done = std::fs::read_to_string(&done_file).unwrap_or_default();
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            !n.starts_with('.')
                && (n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz"))
        })
        .collect();
    files.sort();
    for f in files {
        let Ok(md) = std::fs::metadata(&f) else {
            continue;
        };
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let key = format!("{} {} {mtime}", f.display(), md.len());
        if done.lines().any(|l| l == key) {
            continue;
        }
        match paddock_sys::unblock_signals_on_exec(&mut Command::new(docker))
            .args(["-H", socket, "load", "-q", "-i"])
            .arg(&f)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {
                say(format!(
                    "preloaded {}: {}",
                    f.display(),
                    String::from_utf8_lossy(&o.stdout).trim()
                ));
                done.push_str(&key);
                done.push('\n');
                let _ = crate::fsutil::write_atomic(&done_file, done.as_bytes(), 0o644);
            }
            Ok(o) => say(format!(
                "preloading {}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => say(format!("preloading {}: {e}", f.display())),
        }
    }
}

/// Waits until the daemon answers on `socket`.
fn wait_ready(docker: &Path, socket: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let ok = paddock_sys::unblock_signals_on_exec(&mut Command::new(docker))
            .args(["-H", socket, "version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// Starts the daemon in the storage context and supervises it; returns its exit status.
pub fn run(d: &Docker, auths: &crate::image::registry::RegistryAuths) -> i32 {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    crate::init::load_modules(MODULES.iter().copied());
    let context = d
        .storage_context
        .as_ref()
        .map_or("console".to_owned(), |c| c.to_string());
    let ctx = match context_pid(&context, Duration::from_secs(120)) {
        Ok(p) => p,
        Err(e) => {
            say(e);
            return 1;
        }
    };
    // The image's root, cloned before leaving this container's mount namespace.
    let image = match paddock_sys::clone_mount(Path::new("/"), false) {
        Ok(m) => m,
        Err(e) => {
            say(format!("cloning the docker image's root: {e}"));
            return 1;
        }
    };
    if let Err(e) = enter(ctx) {
        say(format!("entering the mount namespace of {context}: {e}"));
        return 1;
    }
    let root = Path::new(DOCKER_ROOT);
    let _ = std::fs::create_dir_all(root);
    // A restart finds the last start's image still attached.
    while nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    if let Err(e) = paddock_sys::attach_mount(&image, root) {
        say(format!(
            "attaching the docker image at {DOCKER_ROOT} in {context}: {e}"
        ));
        return 1;
    }
    drop(image);
    let cli = Path::new("/usr/bin/docker");
    let _ = std::fs::remove_file(cli);
    if let Err(e) = std::os::unix::fs::symlink(root.join("usr/bin/docker"), cli) {
        say(format!("linking {} in {context}: {e}", cli.display()));
    }
    cli_auths(auths);
    if d.tls == Some(true)
        && let Err(e) = server_tls(d)
    {
        say(format!("rancher.docker.tls: {e}"));
        detach(root);
        return 1;
    }
    let custom = Path::new("/usr/local/bin/dockerd");
    let mut cmd = if custom.exists() {
        say(format!("using {context}'s /usr/local/bin/dockerd"));
        Command::new(custom)
    } else {
        let (program, env) = launch_env(root);
        let mut c = Command::new(program);
        c.envs(env);
        c
    };
    paddock_sys::unblock_signals_on_exec(&mut cmd);
    let args = daemon_args(d);
    say(format!(
        "dockerd {} (in {context}'s mount namespace)",
        args.join(" ")
    ));
    cmd.args(&args).envs(environment(d)).stdin(Stdio::null());
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            say(format!("starting dockerd: {e}"));
            return 1;
        }
    };
    let socket = d
        .host
        .iter()
        .find(|h| h.as_str().starts_with("unix://"))
        .map_or("unix:///var/run/docker.sock".to_owned(), |h| h.to_string());
    let _ = std::thread::Builder::new()
        .name("preload".into())
        .spawn(move || {
            let docker = Path::new("/usr/bin/docker");
            if wait_ready(docker, &socket, Duration::from_secs(300)) {
                say("dockerd is ready");
                preload(docker, &socket);
                user_services(&socket);
            } else {
                say("dockerd did not answer within 300s");
            }
        });
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Ok(Some(st)) = child.try_wait() {
                    say(format!("dockerd ended: {st}"));
                    detach(root);
                    return st.code().unwrap_or(1);
                }
            }
            Ok(_) | Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    Signal::SIGTERM,
                );
                let code = match child.wait() {
                    Ok(st) => st.code().unwrap_or(0),
                    Err(_) => 0,
                };
                detach(root);
                return code;
            }
        }
    }
}

/// Puts the server pair and the CA where `tls_args` name them ([`crate::tls::SERVER_DIR`]):
/// from the config when it has them, else generated once and kept in
/// [`crate::tls::STATE_DIR`].
fn server_tls(d: &Docker) -> Result<(), crate::tls::TlsError> {
    use crate::tls;
    fn both<'a>(a: &'a Option<String>, b: &'a Option<String>) -> Option<(&'a str, &'a str)> {
        a.as_deref().zip(b.as_deref())
    }
    let state = Path::new(tls::STATE_DIR);
    let configured_server = both(&d.server_cert, &d.server_key);
    let (ca_cert, pair) = match (configured_server, &d.ca_cert) {
        (Some((cert, key)), Some(ca)) => (
            ca.clone(),
            tls::Pair {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
        ),
        _ => {
            let (ca, created) = tls::Ca::load_or_create(both(&d.ca_cert, &d.ca_key), state)?;
            if created {
                say(format!("created a CA in {}", state.display()));
            }
            let hostname = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok());
            let names = tls::default_server_names(hostname.as_deref(), &[]);
            let pair = tls::server_pair(configured_server, &ca, state, &names)?;
            (ca.cert_pem().to_owned(), pair)
        }
    };
    tls::install_server(&ca_cert, &pair, Path::new(tls::SERVER_DIR))?;
    say(format!("tls: server certificate in {}", tls::SERVER_DIR));
    Ok(())
}

/// Adds `rancher.registry_auths` to the `docker` CLI's config of root and of the console's
/// users with a home under /home (other entries of their config.json are kept).
fn cli_auths(auths: &crate::image::registry::RegistryAuths) {
    use base64::Engine as _;
    if auths.0.is_empty() {
        return;
    }
    let mut homes: Vec<(PathBuf, u32, u32)> = vec![(PathBuf::from("/root"), 0, 0)];
    for l in std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = l.split(':').collect();
        if let [_, _, uid, gid, _, home, ..] = f[..]
            && home.starts_with("/home/")
            && let (Ok(u), Ok(g)) = (uid.parse(), gid.parse())
        {
            homes.push((PathBuf::from(home), u, g));
        }
    }
    for (home, uid, gid) in homes {
        let dir = home.join(".docker");
        let file = dir.join("config.json");
        // Users own these paths: never follow a link they may have planted.
        let is_link = crate::fsutil::is_symlink;
        if !home.is_dir() || is_link(&home) || is_link(&dir) || is_link(&file) {
            continue;
        }
        let mut cfg: serde_json::Value = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        for (registry, a) in &auths.0 {
            let Some((user, password)) = a.credentials() else {
                continue;
            };
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            if !cfg["auths"].is_object() {
                cfg["auths"] = serde_json::json!({});
            }
            cfg["auths"][registry] = serde_json::json!({ "auth": encoded });
        }
        let write = std::fs::create_dir_all(&dir)
            .and_then(|()| std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)))
            .and_then(|()| write_new(&file, cfg.to_string().as_bytes(), uid, gid));
        if let Err(e) = write {
            say(format!("registry_auths into {}: {e}", file.display()));
        }
    }
}

/// Replaces `path` by a new file (created exclusively, never through a link) owned by
/// `uid:gid`, mode 0600.
fn write_new(path: &Path, data: &[u8], uid: u32, gid: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.paddock-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(data)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Brings up the user-scope services now that the user Docker answers (`ros service up
/// --user-scope`: only they, created or recreated by the same hash rule as system services;
/// a full `up` would also re-run the system one-shots).
fn user_services(socket: &str) {
    match paddock_sys::unblock_signals_on_exec(&mut Command::new("/usr/bin/ros"))
        .args(["service", "up", "--user-scope"])
        .env("DOCKER_HOST", socket)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout);
            let err = String::from_utf8_lossy(&o.stderr);
            for l in out.lines().chain(err.lines()) {
                say(format!("service up: {l}"));
            }
            say(format!("user services: ros service up {}", o.status));
        }
        Err(e) => say(format!("user services: running ros service up: {e}")),
    }
}

/// Detaches the image from the storage context once the daemon is gone (the clone would
/// otherwise keep this container's overlay alive past its end).
fn detach(root: &Path) {
    let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
}

/// Joins the mount namespace of process `pid` (this process must still be single-threaded).
fn enter(pid: i64) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| e.to_string())?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
    nix::unistd::chdir("/").map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn docker(yaml: &str) -> Docker {
        let v = crate::config::yaml::parse(yaml).unwrap().value;
        crate::config::de::decode::<Docker>(&v).unwrap().value
    }

    #[test]
    fn settings_become_dockerd_flags() {
        let d = docker(
            "storage_driver: overlay2\ngraph: /old\ndata_root: /var/lib/docker\ninsecure_registry: [10.0.2.100:5000, reg.local]\nregistry_mirror: http://10.0.2.100:5000\nlog_driver: json-file\nlog_opts: {max-size: 25m, max-file: '2'}\nbip: 172.18.0.1/16\ngroup: docker\nhost: [unix:///var/run/docker.sock]\nuserland_proxy: false\nextra_args: [--iptables=true]\nenvironment: [HTTP_PROXY=http://p:3128, BROKEN]\ntls: true\ntls_args: [--tlsverify]\n",
        );
        let a = daemon_args(&d);
        for want in [
            "--storage-driver=overlay2",
            "--data-root=/var/lib/docker",
            "--insecure-registry=10.0.2.100:5000",
            "--insecure-registry=reg.local",
            "--registry-mirror=http://10.0.2.100:5000",
            "--log-driver=json-file",
            "--log-opt=max-file=2",
            "--log-opt=max-size=25m",
            "--bip=172.18.0.1/16",
            "--group=docker",
            "--host=unix:///var/run/docker.sock",
            "--userland-proxy=false",
            "--tlsverify",
        ] {
            assert!(a.contains(&want.to_owned()), "{want} missing from {a:?}");
        }
        assert_eq!(a.last().unwrap(), "--iptables=true", "extra_args come last");
        assert!(
            !a.iter().any(|x| x.contains("/old")),
            "graph lost to data_root"
        );
        assert_eq!(
            environment(&d),
            [("HTTP_PROXY".to_owned(), "http://p:3128".to_owned())]
        );
        // Without tls, its arguments are not passed; graph alone names the data root.
        let d = docker("graph: /old\ntls_args: [--tlsverify]\n");
        assert_eq!(daemon_args(&d), ["--data-root=/old"]);
    }

    #[test]
    fn the_daemon_finds_its_helpers_in_the_attached_image() {
        let (program, env) = launch_env(Path::new(DOCKER_ROOT));
        assert_eq!(
            program,
            Path::new("/usr/lib/paddock/docker/usr/sbin/dockerd")
        );
        let path = &env.iter().find(|(k, _)| k == "PATH").unwrap().1;
        assert!(
            path.starts_with("/usr/lib/paddock/docker/usr/local/sbin:"),
            "{path}"
        );
        assert!(path.ends_with(":/bin"), "{path}");
        let libs = &env.iter().find(|(k, _)| k == "LD_LIBRARY_PATH").unwrap().1;
        assert!(libs.contains("/usr/lib/paddock/docker/usr/lib/x86_64-linux-gnu"));
    }
}
