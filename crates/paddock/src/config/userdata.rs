//! User data from a datasource: what it is and where it is saved.
//!
//! - gzip (`1f 8b`) is decompressed first (at most [`super::MAX_DECODED`] bytes);
//! - `#cloud-config` on the first line: a cloud-config, saved as `cloud-config.d/boot.yml`
//!   if it parses. `# cloud-config` (RancherOS's own docs print it with a space) and other
//!   spacing or case variants are accepted with a warning; RancherOS silently dropped them;
//! - `#!`: a script, saved as `/var/lib/rancher/conf/cloud-config-script` (mode 0700);
//! - `#compose`: compose YAML, saved as `boot.yml` under `rancher.services`;
//! - anything else is rejected, with the reason.

use serde_json::{Map, Value};

use super::{CLOUD_CONFIG_DIR, CLOUD_CONFIG_SCRIPT, ConfigError, check_text, gunzip, yaml};
use crate::fsutil::write_atomic;
use crate::root::Root;

/// What a user-data blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// A cloud-config; `warning` says what was odd about its header.
    CloudConfig {
        text: String,
        warning: Option<String>,
    },
    Script(Vec<u8>),
    /// The compose YAML after the `#compose` line.
    Compose(String),
}

/// Classifies user data.
pub fn classify(bytes: &[u8]) -> Result<UserData, ConfigError> {
    let owned;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        owned = gunzip(bytes).map_err(|e| ConfigError::UserData(format!("gzip user data: {e}")))?;
        &owned[..]
    } else {
        bytes
    };
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ConfigError::UserData("user data is empty".into()));
    }
    if bytes.starts_with(b"#!") {
        return Ok(UserData::Script(bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ConfigError::UserData("user data is neither a #! script nor UTF-8 text".into())
    })?;
    let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if first == "#cloud-config" {
        return Ok(UserData::CloudConfig {
            text: text.to_string(),
            warning: None,
        });
    }
    let squeezed: String = first
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if squeezed == "#cloud-config" {
        return Ok(UserData::CloudConfig {
            text: text.to_string(),
            warning: Some(format!(
                "user data header {first:?} should be exactly \"#cloud-config\"; accepted anyway"
            )),
        });
    }
    if first.trim_end() == "#compose" {
        let rest = text.split_once('\n').map(|(_, r)| r).unwrap_or("");
        return Ok(UserData::Compose(rest.to_string()));
    }
    let shown: String = first.chars().take(40).collect();
    Err(ConfigError::UserData(format!(
        "unrecognized user data: the first line {shown:?} is not \"#cloud-config\", \"#!\" (a script) or \"#compose\""
    )))
}

/// What [`save`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The file written (as the running system sees it).
    pub path: String,
    pub warnings: Vec<String>,
}

/// Classifies user data and saves it below `root`. A cloud-config that does not parse is not
/// saved (its keys with problems are reported in `warnings` but the file is kept as written).
pub fn save(root: &Root, bytes: &[u8]) -> Result<Saved, ConfigError> {
    let boot = format!("{CLOUD_CONFIG_DIR}/boot.yml");
    match classify(bytes)? {
        UserData::CloudConfig { text, warning } => {
            let checked =
                check_text("user data", &text).map_err(|p| ConfigError::Invalid(vec![p]))?;
            let mut warnings: Vec<String> = warning.into_iter().collect();
            warnings.extend(checked.problems.iter().map(|p| p.to_string()));
            write(root, &boot, text.as_bytes(), 0o600)?;
            Ok(Saved {
                path: boot,
                warnings,
            })
        }
        UserData::Script(bytes) => {
            write(root, CLOUD_CONFIG_SCRIPT, &bytes, 0o700)?;
            Ok(Saved {
                path: CLOUD_CONFIG_SCRIPT.into(),
                warnings: Vec::new(),
            })
        }
        UserData::Compose(text) => {
            let parsed = yaml::parse(&text).map_err(|e| ConfigError::Syntax {
                file: "user data (#compose)".into(),
                line: e.line + 1,
                message: e.message,
            })?;
            if !parsed.value.is_object() {
                return Err(ConfigError::UserData(
                    "#compose user data must be a map of services".into(),
                ));
            }
            let mut rancher = Map::new();
            rancher.insert("services".into(), parsed.value);
            let mut top = Map::new();
            top.insert("rancher".into(), Value::Object(rancher));
            let out = format!("#cloud-config\n{}", yaml::to_yaml(&Value::Object(top)));
            let checked = check_text("user data (#compose)", &out)
                .map_err(|p| ConfigError::Invalid(vec![p]))?;
            write(root, &boot, out.as_bytes(), 0o600)?;
            Ok(Saved {
                path: boot,
                warnings: checked.problems.iter().map(|p| p.to_string()).collect(),
            })
        }
    }
}

fn write(root: &Root, abs: &str, data: &[u8], mode: u32) -> Result<(), ConfigError> {
    let p = root.path(abs);
    write_atomic(&p, data, mode).map_err(|source| ConfigError::Io { path: p, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn formats() {
        assert!(matches!(
            classify(b"#cloud-config\na: 1\n").unwrap(),
            UserData::CloudConfig { warning: None, .. }
        ));
        assert!(matches!(
            classify(b"# cloud-config\na: 1\n").unwrap(),
            UserData::CloudConfig {
                warning: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(b"#!/bin/sh\necho hi\n").unwrap(),
            UserData::Script(_)
        ));
        assert_eq!(
            classify(b"#compose\nweb:\n  image: nginx\n").unwrap(),
            UserData::Compose("web:\n  image: nginx\n".into())
        );
        assert!(matches!(
            classify(&gz(b"#cloud-config\nhostname: a\n")).unwrap(),
            UserData::CloudConfig { .. }
        ));
        let e = classify(b"hostname: a\n").unwrap_err().to_string();
        assert!(
            e.contains("unrecognized user data") && e.contains("hostname: a"),
            "{e}"
        );
        assert!(classify(b"").is_err());
        assert!(classify(&[0x1f, 0x8b, 0, 1]).is_err());
        assert!(classify(&[0xff, 0xfe, 0x00]).is_err());
    }

    #[test]
    fn save_writes_the_right_files() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        let s = save(&root, b"#cloud-config\nhostname: h\n").unwrap();
        assert_eq!(s.path, "/var/lib/rancher/conf/cloud-config.d/boot.yml");
        assert_eq!(
            std::fs::read_to_string(root.path(&s.path)).unwrap(),
            "#cloud-config\nhostname: h\n"
        );
        let s = save(&root, b"#!/bin/sh\ntrue\n").unwrap();
        assert_eq!(s.path, CLOUD_CONFIG_SCRIPT);
        let s = save(&root, b"#compose\nweb:\n  image: nginx\n").unwrap();
        let text = std::fs::read_to_string(root.path(&s.path)).unwrap();
        let c = check_text("x", &text).unwrap();
        assert_eq!(c.config.rancher.services["web"].image(), Some("nginx"));
        // A cloud-config that does not parse is not saved.
        std::fs::remove_file(root.path(&s.path)).unwrap();
        assert!(save(&root, b"#cloud-config\na: [\n").is_err());
        assert!(!root.path(&s.path).exists());
    }
}
