//! QEMU boot tests of the real OS: `ros init` as PID 1, the system engine, the default
//! services from the OS config, cloud-init from a NoCloud drive, and a login over SSH with the
//! real OpenSSH client as `rancher`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::qemu::{self, Boot, NoCloud, Spec, Ssh};
use super::{CMDLINE, Dist};
use crate::cache_dir;

const HOSTNAME: &str = "paddock-test";
const DEFAULT_SERVICES: &[&str] = &["acpid", "console", "network", "ntp", "syslog"];

fn timeline(vm: &qemu::Vm) {
    println!("boot timeline (seconds since qemu started):");
    for (t, line) in vm.lines() {
        if line.contains("paddock:") || line.starts_with("Linux version") {
            println!("  {t:>7.2}  {}", line.trim());
        }
    }
}

/// A state disk with an ext4 `RANCHER_STATE` filesystem, made on the host without root.
fn state_disk(path: &Path) -> Result<()> {
    qemu::blank_disk(path, 512)?;
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "RANCHER_STATE"])
        .arg(path)
        .status()
        .context("running mkfs.ext4")?;
    ensure!(st.success(), "mkfs.ext4 {} failed", path.display());
    Ok(())
}

pub fn run(dist: &Dist) -> Result<()> {
    qemu::ensure_tools(false)?;
    let dir = cache_dir().join("os/boottest");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    let pubkey = qemu::ssh_keygen(&key)?;
    let user_data = format!(
        "#cloud-config\n\
         hostname: {HOSTNAME}\n\
         ssh_authorized_keys:\n  - {pubkey}\n\
         write_files:\n\
         - path: /home/rancher/hello.txt\n  permissions: \"0640\"\n  owner: rancher\n  content: hello from write_files\n\
         runcmd:\n\
         - echo runcmd ran > /home/rancher/runcmd.txt\n"
    );
    let seed = dir.join("seed.iso");
    NoCloud::new(&user_data, "paddock-boottest", HOSTNAME).iso(&seed)?;
    let state = dir.join("state.img");
    state_disk(&state)?;
    let port = qemu::free_port()?;
    let mut spec = Spec::new(
        Boot::Kernel {
            kernel: dist.vmlinuz.clone(),
            initrd: dist.initrd.clone(),
            append: CMDLINE.to_owned(),
        },
        &dir.join("console.log"),
    );
    spec.memory_mb = 1024;
    spec.ssh_port = Some(port);
    spec.disks = vec![state.clone(), seed];
    let t0 = Instant::now();
    let mut vm = spec.start()?;
    let result = (|| -> Result<()> {
        vm.wait_for("paddock: boot finished", Duration::from_secs(180))
            .context("waiting for the boot to finish")?;
        let ssh = Ssh::new(port, &key);
        ssh.wait_ready(Duration::from_secs(60))?;
        println!(
            "boot test: ssh as rancher answered {:.1}s after qemu started",
            t0.elapsed().as_secs_f64()
        );
        timeline(&vm);
        // Every default service runs, in the system engine, seen through system-docker.
        let ps = ssh.ok("sudo system-docker ps --format json")?;
        let list: serde_json::Value = serde_json::from_str(&ps).context("system-docker ps json")?;
        for s in DEFAULT_SERVICES {
            let found = list.as_array().into_iter().flatten().any(|c| {
                c["Names"][0].as_str() == Some(&format!("/{s}")) && c["State"] == "running"
            });
            if !found {
                let table = ssh.run("sudo system-docker ps -a")?;
                let logs = ssh.run(&format!("sudo system-docker logs {s}"))?;
                if let Ok(extra) = std::env::var("PADDOCK_BOOTTEST_DEBUG") {
                    let o = ssh.run(&extra)?;
                    eprintln!("debug: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                }
                bail!(
                    "service {s} is not running:\n{}\nits logs:\n{}{}",
                    String::from_utf8_lossy(&table.stdout),
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
        let table = ssh.ok("sudo system-docker ps")?;
        println!("{table}");
        // Hostname from the cloud-config, and ros reads the same config.
        ensure!(ssh.ok("hostname")?.trim() == HOSTNAME, "hostname");
        ensure!(
            ssh.ok("sudo ros config get hostname")?.trim() == HOSTNAME,
            "ros config get hostname"
        );
        // write_files with its mode, runcmd ran, PID 1 is ros.
        ensure!(
            ssh.ok("stat -c '%a %U' /home/rancher/hello.txt")?.trim() == "640 rancher",
            "write_files mode/owner"
        );
        ensure!(ssh.ok("cat /home/rancher/hello.txt")?.trim() == "hello from write_files");
        ensure!(ssh.ok("cat /home/rancher/runcmd.txt")?.trim() == "runcmd ran");
        let exe = ssh.ok("sudo readlink /proc/1/exe")?;
        ensure!(exe.trim() == "/usr/bin/ros", "/proc/1/exe is {exe:?}");
        // poweroff from the console: services stop, console last, and qemu exits by itself.
        let _ = ssh.run("sudo poweroff");
        let st = vm.wait_exit(Duration::from_secs(90))?;
        let lines: Vec<String> = vm.lines().into_iter().map(|(_, l)| l).collect();
        let pos = |needle: &str| lines.iter().position(|l| l.contains(needle));
        let console = pos("stopped console").context("the console was not stopped")?;
        for s in DEFAULT_SERVICES.iter().filter(|s| **s != "console") {
            let p = pos(&format!("stopped {s}"))
                .with_context(|| format!("{s} was not stopped at poweroff"))?;
            ensure!(p < console, "{s} stopped after the console");
        }
        ensure!(pos("PowerOff").is_some(), "no power off on the console");
        println!("boot test: poweroff exited qemu ({st})");
        Ok(())
    })();
    if result.is_err() {
        eprintln!(
            "--- console log ({}) ---",
            dir.join("console.log").display()
        );
        for (t, l) in vm.lines().iter().rev().take(80).rev() {
            eprintln!("{t:>7.2} {l}");
        }
    }
    drop(vm);
    result.map_err(|e| anyhow::anyhow!("boot test failed: {e:#}"))?;
    if !state.exists() {
        bail!("the state disk vanished");
    }
    Ok(())
}
