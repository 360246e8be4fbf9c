//! The cloud-config: RancherOS's schema, where it comes from, how sources merge, and how it
//! is checked.
//!
//! - [`yaml`] reads YAML 1.1 as RancherOS users wrote it into a generic tree
//!   ([`serde_json::Value`]) with the line of every key;
//! - [`model`] is the typed schema, decoded by [`de`] which names the key of every problem;
//! - [`check_text`] turns one document into a checked tree: broken keys are reported
//!   (file, line, key) and dropped, unknown keys are kept and warned about;
//! - [`sources`] loads every source in RancherOS's order and merges them ([`merge`] has the
//!   rule); [`cmdline`] reads the kernel command line;
//! - [`userdata`] classifies and saves user data; [`datasource`] fetches it from clouds;
//! - [`export`] hides secrets and lists images.
//!
//! Nothing here panics on bad input: this runs inside PID 1.

pub mod cmdline;
pub mod datasource;
pub mod de;
pub mod export;
pub mod merge;
pub mod model;
pub mod path;
pub mod sources;
pub mod types;
pub mod userdata;
pub mod yaml;

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use serde_json::Value;

pub use model::CloudConfig;
pub use path::KeyPath;

/// Where the user's persistent config lives (relative to the root prefix).
pub const CLOUD_CONFIG_FILE: &str = "/var/lib/rancher/conf/cloud-config.yml";
/// Drop-in directory: `boot.yml` from user data, `network.yml` from metadata, ...
pub const CLOUD_CONFIG_DIR: &str = "/var/lib/rancher/conf/cloud-config.d";
/// A `#!` user-data script is saved here.
pub const CLOUD_CONFIG_SCRIPT: &str = "/var/lib/rancher/conf/cloud-config-script";
/// Metadata saved by the datasource that provided the user data (JSON).
pub const METADATA_FILE: &str = "/var/lib/rancher/conf/metadata";
/// Built-in defaults shipped in the image (read in addition to the embedded ones).
pub const OS_CONFIG_FILE: &str = "/usr/share/ros/os-config.yml";
/// The OEM partition's config.
pub const OEM_CONFIG_FILE: &str = "/usr/share/ros/oem/oem-config.yml";
/// The kernel command line.
pub const CMDLINE_FILE: &str = "/proc/cmdline";

/// The built-in defaults (RancherOS's `os-config.yml`), compiled in.
pub const DEFAULT_OS_CONFIG: &str = include_str!("os-config.yml");

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The key is kept and applied, but nothing knows it (often a typo).
    Warning,
    /// The key (or the whole source, for a syntax error) was dropped.
    Error,
}

/// One problem in one source, with everything needed to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `kernel command line`, `<stdin>`) the problem is in.
    pub file: String,
    pub line: Option<usize>,
    /// Dotted key, when the problem belongs to one.
    pub key: Option<String>,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.severity == Severity::Warning {
            write!(f, ": warning")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors of the config library.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{}", join_problems(.0))]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Key(#[from] path::PathError),
    #[error("{0}")]
    UserData(String),
}

fn join_problems(p: &[Problem]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A document after checking.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The tree with broken keys removed and values normalised (see [`check_text`]).
    pub value: Value,
    /// The typed model of `value`.
    pub config: CloudConfig,
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// Parses and checks one cloud-config document (`file` names it in problems).
///
/// - A YAML syntax error, or a document that is not a map, is an `Err`: nothing of it is usable.
/// - A key whose value does not fit the schema is reported as an [`Severity::Error`] and
///   removed; the rest of the document stays.
/// - An unknown key is reported as a [`Severity::Warning`] and kept.
///
/// Normalisation: `write_files[].permissions` given as a number (YAML 1.1 read `0755` as 493)
/// becomes the string `"0755"`; `content: !!binary` becomes base64 text with the encoding
/// saying so (`gzip` → `gzip+base64`, none → `b64`).
pub fn check_text(file: &str, text: &str) -> Result<Checked, Problem> {
    let parsed = yaml::parse(text).map_err(|e| Problem {
        file: file.to_string(),
        line: (e.line > 0).then_some(e.line),
        key: None,
        severity: Severity::Error,
        message: format!("not valid YAML: {}", e.message),
    })?;
    check_value(file, parsed.value, &parsed.lines, &parsed.binary)
}

/// [`check_text`] for a tree that did not come from a file (the kernel command line).
pub fn check_value(
    file: &str,
    mut value: Value,
    lines: &yaml::LineIndex,
    binary: &[KeyPath],
) -> Result<Checked, Problem> {
    let problem = |path: &KeyPath, severity, message: String| Problem {
        file: file.to_string(),
        line: lines.line_of(path),
        key: (!path.is_empty()).then(|| path.to_string()),
        severity,
        message,
    };
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    if depth(&value) > yaml::MAX_NESTING {
        return Err(problem(
            &KeyPath::root(),
            Severity::Error,
            format!("nested more than {} levels deep", yaml::MAX_NESTING),
        ));
    }
    if !value.is_object() {
        return Err(problem(
            &KeyPath::root(),
            Severity::Error,
            format!(
                "a cloud-config must be a map of keys, found {}",
                kind(&value)
            ),
        ));
    }
    normalize(&mut value, binary);
    let decoded = de::decode::<CloudConfig>(&value).map_err(|issues| {
        let i = issues.into_iter().next_back().unwrap_or(de::Issue {
            path: KeyPath::root(),
            message: "does not fit the schema".into(),
            unknown_key: false,
        });
        problem(&i.path, Severity::Error, i.message)
    })?;
    let mut problems: Vec<Problem> = decoded
        .issues
        .iter()
        .map(|i| {
            problem(
                &i.path,
                if i.unknown_key {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                i.message.clone(),
            )
        })
        .collect();
    let mut value = decoded.pruned;
    let mut config = decoded.value;
    // Content that cannot be decoded would fail at boot: report and drop the entry.
    let mut bad_files = Vec::new();
    for (i, f) in config.write_files.iter().enumerate() {
        if let Err(msg) = decode_content(&f.content, f.encoding) {
            let p = KeyPath::root().key("write_files").index(i).key("content");
            problems.push(problem(&p, Severity::Error, msg));
            bad_files.push(i);
        }
    }
    for i in bad_files.iter().rev() {
        config.write_files.remove(*i);
        path::remove(&mut value, &KeyPath::root().key("write_files").index(*i));
    }
    problems.sort_by_key(|p| (p.line.unwrap_or(0), p.key.clone()));
    Ok(Checked {
        value,
        config,
        problems,
    })
}

/// How deeply collections nest (a scalar is 0). Trees only reach here from the YAML parser
/// (at most [`yaml::MAX_NESTING`]) or the command line (keys of at most
/// [`path::MAX_DEPTH`] segments), so the recursion is bounded.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The YAML kind of a value, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn normalize(value: &mut Value, binary: &[KeyPath]) {
    let Some(files) = value.get_mut("write_files").and_then(Value::as_array_mut) else {
        return;
    };
    for (i, f) in files.iter_mut().enumerate() {
        let Some(obj) = f.as_object_mut() else {
            continue;
        };
        if let Some(n) = obj.get("permissions").and_then(Value::as_u64)
            && n <= 0o7777
        {
            obj.insert("permissions".into(), Value::String(format!("{n:04o}")));
        }
        let content_path = KeyPath::root().key("write_files").index(i).key("content");
        if binary.contains(&content_path) {
            let enc = obj
                .get("encoding")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            let new = match enc.as_deref() {
                None | Some("") => Some("b64"),
                Some("gz") | Some("gzip") => Some("gzip+base64"),
                _ => None,
            };
            if let Some(e) = new {
                obj.insert("encoding".into(), Value::String(e.into()));
            }
        }
    }
}

/// Limit on a decoded `write_files` content (and on gunzipped user data).
pub const MAX_DECODED: u64 = 64 * 1024 * 1024;

/// Decodes `write_files[].content` according to its encoding.
pub fn decode_content(content: &str, enc: Option<model::Encoding>) -> Result<Vec<u8>, String> {
    use model::Encoding;
    let b64 = |s: &str| {
        let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map_err(|e| format!("content is not valid base64: {e}"))
    };
    match enc {
        None => Ok(content.as_bytes().to_vec()),
        Some(Encoding::Base64) => b64(content),
        Some(Encoding::GzipBase64) => gunzip(&b64(content)?),
        Some(Encoding::Gzip) => Err(
            "encoding gzip needs binary content: write it as `content: !!binary |` \
                                     followed by base64, or use encoding gzip+base64"
                .into(),
        ),
    }
}

/// Decompresses gzip data, refusing more than [`MAX_DECODED`] bytes of output.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("content is not valid gzip: {e}"))?;
    if out.len() as u64 > MAX_DECODED {
        return Err(format!(
            "content decompresses to more than {MAX_DECODED} bytes"
        ));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_clean() {
        let c = check_text("os-config.yml", DEFAULT_OS_CONFIG).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn type_errors_name_file_line_and_key_and_drop_only_that_key() {
        let text = "#cloud-config\nhostname: bad_host\nrancher:\n  network:\n    interfaces:\n      eth0:\n        mtu: big\n        dhcp: true\n  bogus: 1\nssh_authorized_keys:\n- ssh-rsa AAA\n";
        let c = check_text("/x.yml", text).unwrap();
        let shown: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert!(
            shown[0].starts_with("/x.yml:2: hostname: hostname \"bad_host\""),
            "{shown:#?}"
        );
        assert!(
            shown[1]
                .starts_with("/x.yml:7: rancher.network.interfaces.eth0.mtu: expected an integer"),
            "{shown:#?}"
        );
        assert_eq!(
            shown[2],
            "/x.yml:9: warning: rancher.bogus: unknown key (kept, but nothing uses it)"
        );
        assert_eq!(
            c.value["rancher"]["network"]["interfaces"]["eth0"],
            json!({"dhcp": true})
        );
        assert_eq!(c.value["rancher"]["bogus"], json!(1));
        assert!(c.value.get("hostname").is_none());
        assert_eq!(c.config.ssh_authorized_keys.len(), 1);
    }

    #[test]
    fn a_list_is_not_a_config() {
        let e = check_text("f", "- a\n").unwrap_err();
        assert!(e.message.contains("must be a map"), "{e}");
        let e = check_text("f", "a: [\n").unwrap_err();
        assert!(e.message.starts_with("not valid YAML"), "{e}");
    }

    #[test]
    fn permissions_and_binary_content_are_normalised() {
        let text = "write_files:\n- path: /a\n  permissions: 0755\n  encoding: gzip\n  content: !!binary |\n    H4sIAKgdh1QAAwtITM5WyK1USMqvUCjPLMlQSMssS1VIya9KzVPIySwszS9SyCpNLwYARQFQ5CcAAAA=\n";
        let c = check_text("f", text).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.value["write_files"][0]["permissions"], json!("0755"));
        assert_eq!(c.value["write_files"][0]["encoding"], json!("gzip+base64"));
        let f = &c.config.write_files[0];
        assert_eq!(f.permissions.map(|m| m.0), Some(0o755));
        let bytes = decode_content(&f.content, f.encoding).unwrap();
        assert!(String::from_utf8(bytes).unwrap().starts_with("Pack my box"));
    }

    #[test]
    fn undecodable_content_is_an_error_and_dropped() {
        let text = "write_files:\n- path: /a\n  encoding: b64\n  content: '@@@'\n- path: /b\n  content: ok\n";
        let c = check_text("f", text).unwrap();
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.problems[0].key.as_deref(), Some("write_files.0.content"));
        assert_eq!(c.problems[0].line, Some(4));
        assert_eq!(
            c.value["write_files"],
            json!([{"path": "/b", "content": "ok"}])
        );
    }
}
