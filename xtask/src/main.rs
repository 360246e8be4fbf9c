//! Paddock's build and test driver: `cargo xtask setup | test | run | bench`.
//!
//! Everything a fresh Debian machine needs is installed from here, so `cargo xtask test` and
//! `cargo xtask run` work as root with nothing done first.

mod bench;
mod deb;
mod os;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// Debian packages the build and the tests use.
const PACKAGES: &[(&str, &[&str])] = &[
    // (package, files it provides: any present means installed)
    ("docker-registry", &["/usr/bin/docker-registry"]),
    ("skopeo", &["/usr/bin/skopeo"]),
    ("umoci", &["/usr/bin/umoci"]),
    ("apache2-utils", &["/usr/bin/htpasswd"]),
    ("openssl", &["/usr/bin/openssl"]),
    ("ca-certificates", &["/etc/ssl/certs/ca-certificates.crt"]),
    // The stock docker CLI drives the system engine in tests (only the client is used).
    ("docker.io", &["/usr/bin/docker", "/usr/local/bin/docker"]),
    ("bsdutils", &["/usr/bin/script"]),
    // The OS build and its QEMU tests.
    ("kmod", &["/usr/sbin/depmod"]),
    ("cpio", &["/usr/bin/cpio"]),
    ("xorriso", &["/usr/bin/xorriso"]),
    ("mtools", &["/usr/bin/mcopy"]),
    ("dosfstools", &["/usr/sbin/mkfs.vfat"]),
    ("grub-common", &["/usr/bin/grub-mkrescue"]),
    ("grub-pc-bin", &["/usr/lib/grub/i386-pc/boot_hybrid.img"]),
    (
        "grub-efi-amd64-bin",
        &["/usr/lib/grub/x86_64-efi/linux.mod"],
    ),
    ("qemu-system-x86", &["/usr/bin/qemu-system-x86_64"]),
    ("openssh-client", &["/usr/bin/ssh"]),
    ("e2fsprogs", &["/usr/sbin/mkfs.ext4"]),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("run") => setup().and_then(|_| os::boot(&args[1..])),
        Some("demo") => demo(),
        Some("bench") => bench::main(&args[1..]),
        Some("build") => os::main(&args[1..]),
        // QEMU's guestfwd runs this per guest connection: stdin/stdout to a host TCP address.
        Some("__proxy") => os::qemu::proxy(args.get(1).map(String::as_str).unwrap_or("")),
        Some("fixtures") => fixtures().map(|f| println!("busybox: {}", f.busybox.display())),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 setup          install the Debian packages the build and tests need\n\
                 test           fmt, clippy, unit and integration tests (root: all of them)\n\
                 run            build the OS and boot it in QEMU, console here, ssh on 127.0.0.1:2222 (--iso, --uefi)\n\
                 build          the bootable OS in dist/ (vmlinuz, initrd, paddock.iso; --smoke, --boot-test)\n\
                 demo           the static ros pulling from a real local registry into an image store\n\
                 bench boot     QEMU start to SSH login, idle memory, smallest -m, sizes\n\
                 bench pull     pull+unpack vs skopeo copy + umoci unpack"
            );
            Err(anyhow::anyhow!("unknown or missing command"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where downloads and built fixtures are cached between runs (inside target/, never committed).
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target/paddock-cache")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a command, failing with its name if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Installs missing Debian packages (quiet when everything is present).
fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, files)| !files.iter().any(|f| Path::new(f).exists()))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}: run as root, or apt-get install them");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    deb::apt_update_once()?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Test inputs built from Debian packages.
pub struct Fixtures {
    pub busybox: PathBuf,
}

pub fn fixtures() -> Result<Fixtures> {
    let bb = deb::extract("busybox-static")?.join("bin/busybox");
    if !bb.is_file() {
        bail!("busybox-static did not contain bin/busybox");
    }
    Ok(Fixtures { busybox: bb })
}

fn test(args: &[String]) -> Result<()> {
    setup()?;
    let fx = fixtures()?;
    let root = workspace_root();
    eprintln!("xtask: cargo fmt --check");
    sh(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    eprintln!("xtask: cargo clippy");
    sh(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    let nextest = Command::new(cargo_bin("cargo-nextest"))
        .arg("--version")
        .output()
        .is_ok();
    let mut cmd = cargo();
    cmd.current_dir(&root).env("PADDOCK_BUSYBOX", &fx.busybox);
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        if is_root() {
            cmd.args(["--run-ignored", "all"]);
        }
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
        if is_root() {
            cmd.args(["--", "--include-ignored"]);
        }
    }
    cmd.args(args);
    if !is_root() {
        eprintln!("xtask: not root: the root integration tests (#[ignore]d) are skipped");
    }
    sh(&mut cmd)?;
    if is_root() {
        // The OS build, then QEMU boots of it (kernel + initrd, and the ISO through GRUB).
        eprintln!("xtask: OS build and QEMU boot tests");
        os::main(&["--smoke".to_owned(), "--boot-test".to_owned()])?;
    }
    fuzz_briefly()
}

/// Runs the cloud-config fuzz targets for a short while (set PADDOCK_FUZZ_SECONDS=0 to skip).
/// cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
fn fuzz_briefly() -> Result<()> {
    let secs: u32 = env::var("PADDOCK_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if secs == 0 {
        eprintln!("xtask: fuzzing skipped (PADDOCK_FUZZ_SECONDS=0)");
        return Ok(());
    }
    if Command::new(cargo_bin("cargo-fuzz"))
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("xtask: cargo install cargo-fuzz");
        sh(cargo().args(["install", "--quiet", "--locked", "cargo-fuzz"]))?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    for (target, t) in [("config_yaml", secs), ("config_cmdline", secs.div_ceil(2))] {
        eprintln!("xtask: fuzzing {target} for {t} s");
        sh(cargo()
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                "-O",
                target,
                "--",
                &format!("-max_total_time={t}"),
                "-print_final_stats=0",
            ]))?;
    }
    Ok(())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let p = home.join("bin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// Builds the static `ros` binary and returns its path.
pub fn build_ros() -> Result<PathBuf> {
    let root = workspace_root();
    let target = "x86_64-unknown-linux-gnu";
    // musl when its target is installed; otherwise glibc with a static C runtime.
    let musl = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("x86_64-unknown-linux-musl"))
        .unwrap_or(false);
    // Not position-independent: a static-pie binary relocates about 0.5 MB of its own data
    // at every start, private to each process, and the OS runs a dozen `ros` processes (init,
    // the engine, a shim per container). Linked at a fixed address those pages stay shared.
    let fixed = "-C relocation-model=static";
    let (target, rustflags) = if musl {
        ("x86_64-unknown-linux-musl", fixed.to_owned())
    } else {
        (target, format!("-C target-feature=+crt-static {fixed}"))
    };
    eprintln!("xtask: building ros for {target} (static)");
    sh(cargo()
        .current_dir(&root)
        .env("RUSTFLAGS", rustflags)
        .args([
            "build",
            "--release",
            "--package",
            "paddock",
            "--bin",
            "ros",
            "--target",
            target,
        ]))?;
    Ok(root.join("target").join(target).join("release/ros"))
}

/// `demo`: the static `ros` pulling a busybox image from a real local registry into a store,
/// listing and inspecting it.
fn demo() -> Result<()> {
    setup()?;
    let ros = build_ros()?;
    let fx = fixtures()?;
    let demo = cache_dir().join("demo");
    let _ = std::fs::remove_dir_all(&demo);
    std::fs::create_dir_all(&demo)?;
    let registry = testkit::registry::Registry::start(
        &demo.join("registry"),
        testkit::registry::Auth::Anonymous,
    )?;
    let layout = demo.join("layout");
    testkit::busybox_layout(&fx.busybox, &layout)?;
    let image = format!("{}/paddock/busybox:latest", registry.addr);
    testkit::skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{image}"),
        &["--all"],
    )?;
    let root = demo.join("root");
    let ros_cmd = |args: &[&str]| -> Result<()> {
        sh(Command::new(&ros).arg("--root").arg(&root).args(args))
    };
    ros_cmd(&["image", "pull", &image])?;
    ros_cmd(&["image", "ls"])?;
    ros_cmd(&["image", "inspect", &image])?;
    println!(
        "\nros {} (static) works on a store under {}.\nTry: {} --root {} image ls",
        env!("CARGO_PKG_VERSION"),
        root.display(),
        ros.display(),
        root.display()
    );
    Ok(())
}
