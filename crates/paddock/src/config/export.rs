//! What `ros config export` hides and what `ros config images` lists.

use std::collections::BTreeSet;

use serde_json::Value;

use super::path::{self, KeyPath};

const DOCKERS: [&str; 3] = ["docker", "system_docker", "bootstrap_docker"];
const DOCKER_SECRETS: [&str; 4] = ["ca_key", "ca_cert", "server_key", "server_cert"];
const AUTH_SECRETS: [&str; 4] = ["auth", "password", "identitytoken", "registrytoken"];
const WIFI_SECRETS: [&str; 3] = ["psk", "password", "private_key_passwds"];

/// Removes secrets from a tree (they are removed, not masked, so an export can be merged back
/// without writing a placeholder over the real value):
///
/// - `rancher.ssh.keys` (host private keys);
/// - `rancher.password`, `rancher.autologin`, `rancher.environment.EXTRA_CMDLINE` (may hold a
///   password from the kernel command line);
/// - the TLS keys and certificates of the three dockers (also under `rancher.defaults.docker`);
/// - `rancher.registry_auths.*.{auth,password,identitytoken,registrytoken}`;
/// - `rancher.network.wifi_networks.*.{psk,password,private_key_passwds}`.
///
/// Returns the dotted keys removed.
pub fn hide_secrets(tree: &mut Value) -> Vec<String> {
    let r = KeyPath::root().key("rancher");
    let mut targets: Vec<KeyPath> = vec![
        r.key("ssh").key("keys"),
        r.key("password"),
        r.key("autologin"),
        r.key("environment").key("EXTRA_CMDLINE"),
    ];
    for d in DOCKERS {
        for s in DOCKER_SECRETS {
            targets.push(r.key(d).key(s));
        }
    }
    for s in DOCKER_SECRETS {
        targets.push(r.key("defaults").key("docker").key(s));
    }
    for (map, secrets) in [
        (r.key("registry_auths"), &AUTH_SECRETS[..]),
        (r.key("network").key("wifi_networks"), &WIFI_SECRETS[..]),
    ] {
        let names: Vec<String> = path::get(tree, &map)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for n in names {
            for s in secrets {
                targets.push(map.key(&n).key(s));
            }
        }
    }
    let mut removed = Vec::new();
    for t in targets {
        if path::remove(tree, &t).is_some() {
            removed.push(t.to_string());
        }
    }
    removed
}

/// The images a config references: `image` of every service in `rancher.services`,
/// `rancher.bootstrap` and `rancher.cloud_init_services`, sorted and without duplicates.
pub fn images(tree: &Value) -> Vec<String> {
    let mut out = BTreeSet::new();
    for group in ["services", "bootstrap", "cloud_init_services"] {
        let Some(services) = tree
            .get("rancher")
            .and_then(|r| r.get(group))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for svc in services.values() {
            if let Some(img) = svc.get("image").and_then(Value::as_str) {
                let img = img.trim();
                if !img.is_empty() && !img.contains(['\n', '\r', '\0']) {
                    out.insert(img.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_removed_and_the_rest_kept() {
        let mut t = json!({"rancher": {
            "ssh": {"keys": {"rsa": "PRIVATE"}, "port": 22},
            "password": "pw",
            "docker": {"ca_key": "K", "tls": true},
            "registry_auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz", "email": "a@b"}},
            "network": {"wifi_networks": {"home": {"ssid": "s", "psk": "p"}}}
        }, "ssh_authorized_keys": ["ssh-rsa AAA"]});
        let removed = hide_secrets(&mut t);
        assert_eq!(removed.len(), 5, "{removed:?}");
        let text = t.to_string();
        for secret in ["PRIVATE", "pw", "\"K\"", "dXNlcjpwYXNz", "\"p\""] {
            assert!(!text.contains(secret), "{secret} still in {text}");
        }
        assert_eq!(t["rancher"]["ssh"]["port"], json!(22));
        assert_eq!(
            t["rancher"]["registry_auths"]["https://index.docker.io/v1/"]["email"],
            json!("a@b")
        );
        assert_eq!(t["ssh_authorized_keys"], json!(["ssh-rsa AAA"]));
    }

    #[test]
    fn images_from_all_service_groups() {
        let t = json!({"rancher": {"services": {"a": {"image": "busybox"}, "b": {"image": "alpine"}, "c": {}},
                                   "bootstrap": {"u": {"image": "udev:1"}}, "cloud_init_services": {"x": {"image": "busybox"}}}});
        assert_eq!(images(&t), vec!["alpine", "busybox", "udev:1"]);
    }
}
