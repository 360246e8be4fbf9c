//! Loading every config source and merging them, in RancherOS's order (later wins):
//!
//! 1. built-in defaults: [`super::DEFAULT_OS_CONFIG`], then `/usr/share/ros/os-config.yml`
//!    if the image has one;
//! 2. the OEM config `/usr/share/ros/oem/oem-config.yml`;
//! 3. `/var/lib/rancher/conf/cloud-config.d/*`: non-hidden `.yml`/`.yaml` files, by name;
//! 4. `/var/lib/rancher/conf/cloud-config.yml` (what `ros config set/merge` write);
//! 5. the kernel command line's `rancher.*` and `cc.*` keys (`/proc/cmdline`);
//! 6. the same keys after `--` on the command line;
//! 7. `rancher.debug: true` turns on the three dockers' `debug` and `rancher.log`;
//! 8. metadata saved by the datasource: its hostname if none is set, its SSH keys appended,
//!    its root disk as `rancher.resize_device` if none is set.
//!
//! `$public_ipv4`, `$private_ipv4`, `$public_ipv6` and `$private_ipv6` in the files are
//! replaced by the metadata's addresses before parsing. Every path is below the [`Root`].
//!
//! A source that cannot be read or parsed is reported and skipped; a key that does not fit
//! the schema is reported and dropped; the rest still merges. Loading never fails.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value};

use super::datasource::Metadata;
use super::merge::merge_into;
use super::path::{self, KeyPath};
use super::{
    CLOUD_CONFIG_DIR, CLOUD_CONFIG_FILE, CMDLINE_FILE, DEFAULT_OS_CONFIG, METADATA_FILE,
    OEM_CONFIG_FILE, OS_CONFIG_FILE, Problem, Severity, check_text, check_value, cmdline, yaml,
};
use crate::root::Root;

/// Which sources to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Step 1, the built-in defaults.
    pub defaults: bool,
    /// Steps 5 to 8: command line, debug flags, metadata.
    pub runtime: bool,
}

impl LoadOptions {
    /// Everything: the config the system runs with.
    pub const FULL: LoadOptions = LoadOptions {
        defaults: true,
        runtime: true,
    };
    /// Only the files on disk the user or their datasource wrote (OEM, cloud-config.d,
    /// cloud-config.yml): what `ros config export` prints without `--full`.
    pub const USER: LoadOptions = LoadOptions {
        defaults: false,
        runtime: false,
    };
}

/// One source that was read.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file (as the running system sees it) or `kernel command line`.
    pub name: String,
    /// The checked tree (broken keys removed).
    pub value: Value,
}

/// The merged config and how it came to be.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub sources: Vec<Source>,
    /// The merged tree.
    pub value: Value,
    /// Every problem in every source (skipped sources included).
    pub problems: Vec<Problem>,
}

impl Loaded {
    /// The typed model of the merged tree.
    pub fn config(&self) -> super::CloudConfig {
        super::de::decode::<super::CloudConfig>(&self.value)
            .map(|d| d.value)
            .unwrap_or_default()
    }
}

/// Reads a file below the root; `Ok(None)` if it does not exist.
pub fn read_optional(root: &Root, abs: &str) -> Result<Option<String>, Problem> {
    let p = root.path(abs);
    match fs::read(&p) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Ok(Some(s)),
            Err(_) => Err(io_problem(abs, "is not UTF-8 text".into())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_problem(abs, format!("cannot be read: {e}"))),
    }
}

fn io_problem(file: &str, message: String) -> Problem {
    Problem {
        file: file.into(),
        line: None,
        key: None,
        severity: Severity::Error,
        message,
    }
}

/// The files of `cloud-config.d`, sorted by name, as absolute paths of the running system.
pub fn drop_in_files(root: &Root) -> Vec<String> {
    let dir = root.path(CLOUD_CONFIG_DIR);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_type()
                .map(|t| t.is_file() || t.is_symlink())
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && (n.ends_with(".yml") || n.ends_with(".yaml")))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| format!("{CLOUD_CONFIG_DIR}/{n}"))
        .collect()
}

/// The metadata saved by the datasource, if any.
pub fn read_metadata(root: &Root) -> Option<Metadata> {
    let bytes = fs::read(root.path(METADATA_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces `$public_ipv4`-style variables with the metadata's addresses. Only values that
/// are IP addresses are substituted, so metadata cannot inject YAML.
pub fn substitute(text: &str, md: &Metadata) -> String {
    let mut out = text.to_string();
    for (name, value) in [
        ("$private_ipv4", &md.private_ipv4),
        ("$public_ipv4", &md.public_ipv4),
        ("$private_ipv6", &md.private_ipv6),
        ("$public_ipv6", &md.public_ipv6),
    ] {
        if let Some(v) = value
            .as_deref()
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        {
            out = out.replace(name, v);
        }
    }
    out
}

/// Loads and merges the sources `opts` selects.
pub fn load(root: &Root, opts: LoadOptions) -> Loaded {
    let md = read_metadata(root);
    let mut loaded = Loaded {
        sources: Vec::new(),
        value: Value::Object(Map::new()),
        problems: Vec::new(),
    };
    let add_text = |loaded: &mut Loaded, name: &str, text: &str| {
        let text = match &md {
            Some(m) => substitute(text, m),
            None => text.to_string(),
        };
        match check_text(name, &text) {
            Ok(c) => {
                loaded.problems.extend(c.problems);
                merge_into(&mut loaded.value, c.value.clone());
                loaded.sources.push(Source {
                    name: name.to_string(),
                    value: c.value,
                });
            }
            Err(p) => loaded.problems.push(p),
        }
    };
    if opts.defaults {
        add_text(&mut loaded, "built-in os-config.yml", DEFAULT_OS_CONFIG);
    }
    let mut files: Vec<String> = Vec::new();
    if opts.defaults {
        files.push(OS_CONFIG_FILE.into());
    }
    files.push(OEM_CONFIG_FILE.into());
    files.extend(drop_in_files(root));
    files.push(CLOUD_CONFIG_FILE.into());
    for f in &files {
        match read_optional(root, f) {
            Ok(Some(text)) => add_text(&mut loaded, f, &text),
            Ok(None) => {}
            Err(p) => loaded.problems.push(p),
        }
    }
    if !opts.runtime {
        return loaded;
    }
    match read_optional(root, CMDLINE_FILE) {
        Ok(Some(text)) => {
            let c = cmdline::parse(&text);
            loaded.problems.extend(c.problems);
            for (name, tree) in [
                ("kernel command line", c.config),
                ("kernel command line (after --)", c.extra),
            ] {
                if tree.as_object().is_some_and(|m| m.is_empty()) {
                    continue;
                }
                match check_value(name, tree, &yaml::LineIndex::default(), &[]) {
                    Ok(c) => {
                        loaded.problems.extend(c.problems);
                        merge_into(&mut loaded.value, c.value.clone());
                        loaded.sources.push(Source {
                            name: name.into(),
                            value: c.value,
                        });
                    }
                    Err(p) => loaded.problems.push(p),
                }
            }
        }
        Ok(None) => {}
        Err(p) => loaded.problems.push(p),
    }
    apply_debug(&mut loaded.value);
    if let Some(m) = &md {
        apply_metadata(&mut loaded.value, m);
    }
    loaded
}

/// Step 7: `rancher.debug: true` turns on debug for the three dockers and `rancher.log`.
pub fn apply_debug(value: &mut Value) {
    let on = path::get(value, &KeyPath::root().key("rancher").key("debug"))
        .and_then(Value::as_bool)
        == Some(true);
    if !on {
        return;
    }
    let r = KeyPath::root().key("rancher");
    for d in ["docker", "system_docker", "bootstrap_docker"] {
        let _ = path::set(value, &r.key(d).key("debug"), Value::Bool(true));
    }
    let _ = path::set(value, &r.key("log"), Value::Bool(true));
}

/// Step 8: the datasource's metadata fills what the config left open.
pub fn apply_metadata(value: &mut Value, md: &Metadata) {
    let hostname = KeyPath::root().key("hostname");
    if path::get(value, &hostname).is_none()
        && let Some(h) = md
            .hostname
            .as_deref()
            .filter(|h| super::types::Hostname::new(*h).is_ok())
    {
        let _ = path::set(value, &hostname, Value::String(h.to_string()));
    }
    let keys: Vec<Value> = md
        .ssh_public_keys
        .iter()
        .filter(|k| super::types::Line::new(k.as_str()).is_ok() && !k.trim().is_empty())
        .map(|k| Value::String(k.trim().to_string()))
        .collect();
    let existing: Vec<Value> = path::get(value, &KeyPath::root().key("ssh_authorized_keys"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new: Vec<Value> = keys.into_iter().filter(|k| !existing.contains(k)).collect();
    if !new.is_empty() {
        let mut add = Map::new();
        add.insert("ssh_authorized_keys".into(), Value::Array(new));
        merge_into(value, Value::Object(add));
    }
    let resize = KeyPath::root().key("rancher").key("resize_device");
    if path::get(value, &resize).is_none()
        && let Some(d) = md
            .root_disk
            .as_deref()
            .filter(|d| d.starts_with("/dev/") && super::types::Line::new(*d).is_ok())
    {
        let _ = path::set(value, &resize, Value::String(d.to_string()));
    }
}

/// Validates every source `load` would read, returning all problems (for `ros config
/// validate` without input).
pub fn validate_all(root: &Root) -> Vec<Problem> {
    load(root, LoadOptions::FULL).problems
}

/// True if `p` exists below the root.
pub fn exists(root: &Root, abs: &str) -> bool {
    Path::new(&root.path(abs)).exists()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(root: &Root, abs: &str, text: &str) {
        let p = root.path(abs);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn order_is_defaults_oem_dropins_file_cmdline_extra() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(
            &root,
            OEM_CONFIG_FILE,
            "rancher:\n  console: oem\n  upgrade:\n    url: oem\n",
        );
        write(
            &root,
            "/var/lib/rancher/conf/cloud-config.d/b.yml",
            "rancher:\n  console: b\n",
        );
        write(
            &root,
            "/var/lib/rancher/conf/cloud-config.d/a.yml",
            "rancher:\n  console: a\n  resize_device: /dev/a\n",
        );
        write(
            &root,
            "/var/lib/rancher/conf/cloud-config.d/.hidden.yml",
            "rancher:\n  console: hidden\n",
        );
        write(
            &root,
            CLOUD_CONFIG_FILE,
            "rancher:\n  console: file\n  recovery: false\n",
        );
        write(
            &root,
            CMDLINE_FILE,
            "quiet rancher.recovery=true rancher.ssh.port=2 -- rancher.ssh.port=3\n",
        );
        let l = load(&root, LoadOptions::FULL);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let names: Vec<&str> = l.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "built-in os-config.yml",
                OEM_CONFIG_FILE,
                "/var/lib/rancher/conf/cloud-config.d/a.yml",
                "/var/lib/rancher/conf/cloud-config.d/b.yml",
                CLOUD_CONFIG_FILE,
                "kernel command line",
                "kernel command line (after --)"
            ]
        );
        let r = &l.value["rancher"];
        assert_eq!(r["console"], json!("file"));
        assert_eq!(r["upgrade"]["url"], json!("oem"));
        assert_eq!(r["upgrade"]["image"], json!("paddock/os"));
        assert_eq!(r["resize_device"], json!("/dev/a"));
        assert_eq!(r["recovery"], json!(true));
        assert_eq!(r["ssh"]["port"], json!(3));
        assert_eq!(r["ssh"]["daemon"], json!(true));
        let user = load(&root, LoadOptions::USER);
        assert_eq!(user.value["rancher"].get("ssh"), None);
        assert_eq!(user.value["rancher"]["console"], json!("file"));
    }

    #[test]
    fn broken_sources_are_reported_and_skipped() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(
            &root,
            "/var/lib/rancher/conf/cloud-config.d/a.yml",
            "ssh_authorized_keys: [k1]\nrancher: [\n",
        );
        write(
            &root,
            "/var/lib/rancher/conf/cloud-config.d/b.yml",
            "rancher: []\n",
        );
        write(
            &root,
            CLOUD_CONFIG_FILE,
            "ssh_authorized_keys: [k2]\nhostname: x_y\nrancher:\n  ssh:\n    port: 70000\n",
        );
        let l = load(&root, LoadOptions::FULL);
        let shown: Vec<String> = l.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("/var/lib/rancher/conf/cloud-config.d/a.yml:"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with(
                "/var/lib/rancher/conf/cloud-config.d/b.yml:1: rancher: expected a map"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with("/var/lib/rancher/conf/cloud-config.yml:2: hostname:"),
            "{shown:#?}"
        );
        assert!(
            shown[3].starts_with("/var/lib/rancher/conf/cloud-config.yml:5: rancher.ssh.port:"),
            "{shown:#?}"
        );
        assert_eq!(l.value["ssh_authorized_keys"], json!(["k2"]));
        assert_eq!(l.value["rancher"]["ssh"], json!({"daemon": true}));
        assert_eq!(l.value["rancher"]["console"], json!("default"));
    }

    #[test]
    fn debug_and_metadata_steps() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(
            &root,
            CLOUD_CONFIG_FILE,
            "ssh_authorized_keys: [k1]\nrancher:\n  network:\n    interfaces:\n      eth0:\n        address: $private_ipv4/24\n",
        );
        write(&root, CMDLINE_FILE, "rancher.debug\n");
        let md = Metadata {
            hostname: Some("meta-host".into()),
            ssh_public_keys: vec!["k1".into(), "k2".into()],
            private_ipv4: Some("10.0.0.5".into()),
            root_disk: Some("/dev/vda".into()),
            ..Default::default()
        };
        write(&root, METADATA_FILE, &serde_json::to_string(&md).unwrap());
        let l = load(&root, LoadOptions::FULL);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.value["hostname"], json!("meta-host"));
        assert_eq!(l.value["ssh_authorized_keys"], json!(["k1", "k2"]));
        assert_eq!(l.value["rancher"]["resize_device"], json!("/dev/vda"));
        assert_eq!(
            l.value["rancher"]["network"]["interfaces"]["eth0"]["address"],
            json!("10.0.0.5/24")
        );
        assert_eq!(l.value["rancher"]["system_docker"]["debug"], json!(true));
        assert_eq!(l.value["rancher"]["log"], json!(true));
    }

    #[test]
    fn metadata_substitution_only_uses_addresses() {
        let md = Metadata {
            public_ipv4: Some("1.2.3.4\nevil: x".into()),
            private_ipv4: Some("10.1.1.1".into()),
            ..Default::default()
        };
        assert_eq!(
            substitute("a: $public_ipv4 $private_ipv4", &md),
            "a: $public_ipv4 10.1.1.1"
        );
    }
}
