//! The config hash stamped on a service's container (`com.docker.compose.config-hash`).
//!
//! sha256 (hex) over a canonical JSON form of the normalised [`ServiceDef`]: object keys
//! sorted, maps already sorted (they are `BTreeMap`s, so `environment` as a list or a map
//! hashes equally), lists whose order means nothing (volumes, capabilities, devices,
//! dependencies, ports, ...) sorted and deduplicated, capabilities upper-cased without a
//! `CAP_` prefix, and the labels Paddock stamps itself left out. `command`, `entrypoint`, `dns`
//! and `tmpfs` options keep their order. The service name is part of the hash, as in
//! libcompose.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::def::ServiceDef;
use super::labels::STAMPED;

/// The normalised copy of `def` that is hashed.
pub fn normalise(def: &ServiceDef) -> ServiceDef {
    let mut d = def.clone();
    for k in STAMPED {
        d.labels.remove(*k);
    }
    fn set<T: Ord>(v: &mut Vec<T>) {
        v.sort();
        v.dedup();
    }
    let caps = |v: &mut Vec<String>| {
        for c in v.iter_mut() {
            let up = c.trim().to_ascii_uppercase();
            *c = up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up);
        }
        set(v);
    };
    caps(&mut d.cap_add);
    caps(&mut d.cap_drop);
    set(&mut d.volumes);
    set(&mut d.volumes_from);
    set(&mut d.devices);
    set(&mut d.depends_on);
    set(&mut d.links);
    set(&mut d.ports);
    set(&mut d.expose);
    set(&mut d.security_opt);
    set(&mut d.group_add);
    set(&mut d.extra_hosts);
    d
}

/// Writes `v` as JSON with object keys sorted, whatever map type serde_json was built with.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(val) = m.get(*k) {
                    canonical(val, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The config hash of a service: 64 lower-case hex digits.
pub fn config_hash(def: &ServiceDef) -> String {
    let v = serde_json::to_value(normalise(def)).unwrap_or(Value::Null);
    let mut text = String::new();
    canonical(&v, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> ServiceDef {
        let Value::Object(m) = v else { panic!() };
        ServiceDef::from_map("svc", "p", &m).unwrap().0
    }

    #[test]
    fn stable_and_hex() {
        let h = config_hash(&def(json!({"image": "x"})));
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, config_hash(&def(json!({"image": "x"}))));
    }

    #[test]
    fn order_and_spelling_independent() {
        let a = def(json!({
            "image": "x", "environment": ["A=1", "B=2"], "labels": ["l=1"],
            "volumes": ["/a:/a", "/b:/b"], "cap_add": ["net_admin", "SYS_ADMIN"],
            "privileged": true, "restart": "no",
        }));
        let b = def(json!({
            "restart": false, "privileged": "true", "cap_add": ["CAP_SYS_ADMIN", "NET_ADMIN"],
            "volumes": ["/b:/b", "/a:/a"], "labels": {"l": "1"},
            "environment": {"B": "2", "A": 1}, "image": "x",
        }));
        assert_eq!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn stamped_labels_excluded_and_changes_seen() {
        let a = def(json!({"image": "x", "labels": {"a": "1"}}));
        let mut b = a.clone();
        b.labels
            .insert("com.docker.compose.config-hash".into(), "zzz".into());
        assert_eq!(config_hash(&a), config_hash(&b));
        let c = def(json!({"image": "x", "labels": {"a": "2"}}));
        assert_ne!(config_hash(&a), config_hash(&c));
        let d = def(json!({"image": "x", "labels": {"a": "1"}, "command": "b a"}));
        let e = def(json!({"image": "x", "labels": {"a": "1"}, "command": "a b"}));
        assert_ne!(config_hash(&d), config_hash(&e));
        let mut f = a.clone();
        f.name = "other".into();
        assert_ne!(config_hash(&a), config_hash(&f));
    }
}
