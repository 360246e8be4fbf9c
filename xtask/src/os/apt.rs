//! Debian packages as OS build inputs: host tools installed on demand, exact versions from
//! apt, dependency closures from `apt-cache depends`, `.deb`s cached by name and version and
//! unpacked once with `dpkg -x`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cache_dir, deb, is_root, sh};

/// Installs the Debian packages whose marker file is missing (one apt-get call).
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing host packages {}: run as root, or apt-get install them",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let install = |cmd: &mut Command| {
        sh(cmd
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install(&mut Command::new("apt-get")).is_err() {
        deb::apt_update_once()?;
        install(&mut Command::new("apt-get"))?;
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The candidate version of each package (`apt-cache policy`), failing on any without one.
pub fn candidates(pkgs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    if pkgs.is_empty() {
        return Ok(found);
    }
    let text = output(Command::new("apt-cache").arg("policy").args(pkgs))?;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_owned());
        } else if let (Some(p), Some(v)) = (&current, line.trim().strip_prefix("Candidate: "))
            && v != "(none)"
        {
            found.insert(p.clone(), v.to_owned());
        }
    }
    let missing: Vec<&String> = pkgs.iter().filter(|p| !found.contains_key(*p)).collect();
    if !missing.is_empty() {
        bail!("apt has no candidate version for {missing:?} (apt-get update? a Debian 12 mirror?)");
    }
    Ok(found)
}

/// A dependency on one of several packages.
type Group = Vec<String>;

/// Parses `apt-cache depends --recurse` output into package -> dependency groups. A virtual
/// package (`<name>`) is replaced by its providers, as alternatives.
fn parse_depends(text: &str) -> HashMap<String, Vec<Group>> {
    let mut graph: HashMap<String, Vec<Group>> = HashMap::new();
    let mut pkg: Option<String> = None;
    let mut pending: Group = Vec::new(); // alternatives so far (`|Depends:` lines)
    let mut virtual_open = false; // the last dependency was `<virtual>`: providers follow
    for line in text.lines() {
        if !line.starts_with(' ') {
            pkg = Some(line.trim().to_owned());
            graph.entry(line.trim().to_owned()).or_default();
            pending.clear();
            virtual_open = false;
            continue;
        }
        let Some(p) = &pkg else { continue };
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if indent >= 4 {
            // A provider of the preceding virtual package.
            if virtual_open && let Some(last) = graph.get_mut(p).and_then(|g| g.last_mut()) {
                last.push(t.to_owned());
            }
            continue;
        }
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some((kind, name)) = rest.split_once(": ") else {
            continue;
        };
        if kind != "Depends" && kind != "PreDepends" {
            continue;
        }
        let is_virtual = name.starts_with('<');
        if !is_virtual {
            pending.push(name.to_owned());
        }
        if alt {
            virtual_open = false;
            continue;
        }
        let group = std::mem::take(&mut pending);
        graph.entry(p.clone()).or_default().push(group);
        virtual_open = is_virtual;
    }
    graph
}

/// The dependency closure of `roots` (roots included), never entering `exclude`. For a choice
/// of packages the first one not excluded is taken.
pub fn closure(roots: &[&str], exclude: &[&str]) -> Result<Vec<String>> {
    let text = output(
        Command::new("apt-cache")
            .args([
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(roots),
    )?;
    let graph = parse_depends(&text);
    let excluded: BTreeSet<&str> = exclude.iter().copied().collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: VecDeque<String> = roots.iter().map(|s| (*s).to_owned()).collect();
    while let Some(p) = queue.pop_front() {
        if excluded.contains(p.as_str()) || !seen.insert(p.clone()) {
            continue;
        }
        let Some(groups) = graph.get(&p) else {
            bail!("apt-cache depends did not describe package {p}");
        };
        for g in groups {
            if let Some(choice) = g.iter().find(|c| !excluded.contains(c.as_str())) {
                queue.push_back(choice.clone());
            }
        }
    }
    Ok(seen.into_iter().collect())
}

fn deb_name(pkg: &str, version: &str) -> String {
    format!("{pkg}_{}_", version.replace(':', "%3a"))
}

fn find_deb(dir: &Path, pkg: &str, version: &str) -> Option<PathBuf> {
    let prefix = deb_name(pkg, version);
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.starts_with(&prefix) && n.ends_with(".deb")).then(|| e.path())
    })
}

/// Downloads (once) the exact `pkg=version` of each package; returns the `.deb` paths.
pub fn download(pkgs: &BTreeMap<String, String>) -> Result<BTreeMap<String, PathBuf>> {
    let dl = cache_dir().join("downloads");
    std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let missing: Vec<String> = pkgs
        .iter()
        .filter(|(p, v)| find_deb(&dl, p, v).is_none())
        .map(|(p, v)| format!("{p}={v}"))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: downloading {} Debian packages", missing.len());
        let get = || {
            sh(Command::new("apt-get")
                .args(["download", "-q"])
                .args(&missing)
                .current_dir(&dl))
        };
        if get().is_err() {
            deb::apt_update_once()?;
            get().with_context(|| format!("apt-get download {}", missing.join(" ")))?;
        }
    }
    pkgs.iter()
        .map(|(p, v)| match find_deb(&dl, p, v) {
            Some(d) => Ok((p.clone(), d)),
            None => bail!(
                "apt-get download {p}={v} produced no .deb in {}",
                dl.display()
            ),
        })
        .collect()
}

/// Unpacks `deb` (once) into the cache and returns the directory.
pub fn unpack(pkg: &str, version: &str, deb_file: &Path) -> Result<PathBuf> {
    let dir = cache_dir()
        .join("unpacked")
        .join(format!("{pkg}_{}", version.replace(':', "%3a")));
    let done = dir.join(".extracted");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sh(Command::new("dpkg").arg("-x").arg(deb_file).arg(&dir))
        .with_context(|| format!("extracting {}", deb_file.display()))?;
    std::fs::write(&done, b"").with_context(|| format!("writing {}", done.display()))?;
    Ok(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_alternatives_and_virtual_providers() {
        let text = "\
openssh-server
  PreDepends: init-system-helpers
  Depends: lsb-base
    sysvinit-utils
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
  Depends: libc6
libc6
  Depends: libgcc-s1
";
        let g = parse_depends(text);
        let o = &g["openssh-server"];
        assert_eq!(o[0], vec!["init-system-helpers"]);
        assert_eq!(o[1], vec!["lsb-base"]);
        assert_eq!(o[2], vec!["debconf", "cdebconf", "debconf"]);
        assert_eq!(o[3], vec!["libc6"]);
        assert_eq!(g["libc6"], vec![vec!["libgcc-s1".to_owned()]]);
    }
}
