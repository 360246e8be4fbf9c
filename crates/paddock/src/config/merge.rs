//! Merging cloud-config trees.
//!
//! The rule, applied source after source in RancherOS's order (later sources win):
//!
//! - **maps merge deeply**: keys of the later map are merged into the earlier one, key by key;
//! - **lists are replaced** by the later source's list, as RancherOS did, **except** the four
//!   top-level lists `ssh_authorized_keys`, `write_files`, `runcmd` and `mounts`, which are
//!   **appended** (earlier source's items first). RancherOS replaced those too, so a
//!   `write_files` in `cloud-config.d/boot.yml` was silently lost when `cloud-config.yml` had
//!   one as well (rancher/os#2415). A key already in `ssh_authorized_keys` is not added twice;
//!   the other three keep duplicates (running a command twice may be intended);
//! - **a null never erases**: `rancher:` with nothing after it, or `key: ~`, leaves what the
//!   earlier sources said; in the result a map never holds a null (`{}` is the identity of
//!   the merge);
//! - anything else (scalars, or a value whose type differs from the earlier one) replaces.
//!
//! Over sources that passed validation (the append keys hold lists, and a key is a map in every
//! source or in none) the merge is associative: merging sources one by one or in any grouping
//! gives the same result. (A key that is a map in one source and a scalar in another cannot be
//! merged associatively by any replace-on-conflict rule.)

use serde_json::Value;

/// The top-level keys whose lists are appended across sources instead of replaced.
pub const APPEND_KEYS: [&str; 4] = ["ssh_authorized_keys", "write_files", "runcmd", "mounts"];

/// Merges `overlay` (a later source) into `base` (the earlier sources) in place.
pub fn merge_into(base: &mut Value, overlay: Value) {
    let mut overlay = overlay;
    strip_nulls(base);
    strip_nulls(&mut overlay);
    merge_at(base, overlay, 0, None);
}

/// Removes map entries whose value is null (at any depth): after a merge, `key: ~` and an
/// absent key are the same thing.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `merge_into` on copies: the merge of `a` then `b`.
pub fn merged(a: &Value, b: &Value) -> Value {
    let mut out = a.clone();
    merge_into(&mut out, b.clone());
    out
}

fn merge_at(base: &mut Value, overlay: Value, depth: usize, key: Option<&str>) {
    match (base, overlay) {
        (_, Value::Null) => {}
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                let append = depth == 0 && APPEND_KEYS.contains(&k.as_str());
                match b.get_mut(&k) {
                    Some(slot) => merge_at(
                        slot,
                        v,
                        depth + 1,
                        if append { Some(k.as_str()) } else { None },
                    ),
                    None => {
                        let mut v = v;
                        strip_nulls(&mut v);
                        if !v.is_null() {
                            b.insert(k, v);
                        }
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if key == Some("ssh_authorized_keys") => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if key.is_some() => b.extend(o),
        (b, mut o) => {
            strip_nulls(&mut o);
            *b = o;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_deeply_and_later_scalars_win() {
        let a = json!({"rancher": {"network": {"dns": {"nameservers": ["8.8.8.8"]}, "mtu": 1}}});
        let b = json!({"rancher": {"network": {"mtu": 2, "x": true}}});
        assert_eq!(
            merged(&a, &b),
            json!({"rancher": {"network": {"dns": {"nameservers": ["8.8.8.8"]}, "mtu": 2, "x": true}}})
        );
    }

    #[test]
    fn lists_replace_except_the_four_append_keys() {
        let a = json!({"ssh_authorized_keys": ["k1"], "write_files": [{"path": "/a"}], "runcmd": ["a"],
                       "mounts": [["/dev/a"]], "rancher": {"modules": ["m1"], "network": {"dns": {"nameservers": ["1"]}}}});
        let b = json!({"ssh_authorized_keys": ["k2", "k1"], "write_files": [{"path": "/b"}], "runcmd": ["b"],
                       "mounts": [["/dev/b"]], "rancher": {"modules": ["m2"], "network": {"dns": {"nameservers": ["2"]}}}});
        let m = merged(&a, &b);
        assert_eq!(m["ssh_authorized_keys"], json!(["k1", "k2"]));
        assert_eq!(m["write_files"], json!([{"path": "/a"}, {"path": "/b"}]));
        assert_eq!(m["runcmd"], json!(["a", "b"]));
        assert_eq!(m["mounts"], json!([["/dev/a"], ["/dev/b"]]));
        assert_eq!(m["rancher"]["modules"], json!(["m2"]));
        assert_eq!(m["rancher"]["network"]["dns"]["nameservers"], json!(["2"]));
    }

    #[test]
    fn append_applies_only_at_the_top_level() {
        let a = json!({"rancher": {"runcmd": ["a"]}});
        let b = json!({"rancher": {"runcmd": ["b"]}});
        assert_eq!(merged(&a, &b)["rancher"]["runcmd"], json!(["b"]));
    }

    #[test]
    fn null_never_erases() {
        let a = json!({"rancher": {"console": "default"}, "hostname": "h"});
        let b = json!({"rancher": null, "hostname": null, "new": null});
        assert_eq!(merged(&a, &b), a);
    }
}
