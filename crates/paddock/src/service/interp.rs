//! `${VAR}` / `$VAR` interpolation and environment resolution, as RancherOS did it
//! (`pkg/docker/env.go` over libcompose's `config/interpolation.go`).
//!
//! - Every string value of a service (not map keys) is interpolated before typing. `$$` is a
//!   literal `$`. `${VAR:-default}` / `${VAR-default}` and `${VAR:?message}` /
//!   `${VAR?message}` are accepted as compose accepts them (libcompose did not). Any other `$`
//!   use (`$1`, `${}`, a lone `$`) makes the service an error, as in compose.
//! - A variable is looked up as `<service>/<KEY>` first, then `<KEY>`, in
//!   `rancher.environment` plus the proxy variables from `rancher.network` (and
//!   `KERNEL_VERSION`, which the caller sets). An unset variable becomes empty with a warning.
//! - In `environment`, an entry without `=` (or a map entry with no value) takes its value
//!   from the same lookup and is left out when the variable is unset (compose's pass-through;
//!   no warning: os-services pass `HTTP_PROXY` and friends this way on every machine). An
//!   entry `PREFIX*` imports every variable whose name starts with PREFIX: the
//!   `<service>/PREFIX` matches if there are any (the `<service>/` is stripped), else the
//!   unqualified ones. Unlike RancherOS, the unqualified pass skips other services'
//!   `<other>/KEY` entries, so `*` cannot leak another service's variables.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ServiceError, Warning};
use crate::config::model::Rancher;

/// The variables services are interpolated from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// From a plain map.
    pub fn new(vars: BTreeMap<String, String>) -> Environment {
        Environment { vars }
    }

    /// `rancher.environment` (a key with no value is set and empty) plus `http_proxy`,
    /// `HTTP_PROXY`, `https_proxy`, `HTTPS_PROXY`, `no_proxy`, `NO_PROXY` from
    /// `rancher.network`, as RancherOS's `environmentFromCloudConfig`. `KERNEL_VERSION` is not
    /// known here: set it with [`Environment::set`].
    pub fn from_rancher(rancher: &Rancher) -> Environment {
        let mut vars: BTreeMap<String, String> = rancher
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect();
        let n = &rancher.network;
        for (lower, upper, val) in [
            ("http_proxy", "HTTP_PROXY", &n.http_proxy),
            ("https_proxy", "HTTPS_PROXY", &n.https_proxy),
            ("no_proxy", "NO_PROXY", &n.no_proxy),
        ] {
            if let Some(v) = val.as_ref().filter(|v| !v.is_empty()) {
                vars.insert(lower.to_string(), v.to_string());
                vars.insert(upper.to_string(), v.to_string());
            }
        }
        Environment { vars }
    }

    /// Sets one variable (e.g. `KERNEL_VERSION`).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    /// `<service>/<key>`, else `<key>`.
    pub fn lookup(&self, service: &str, key: &str) -> Option<&str> {
        self.vars
            .get(&format!("{service}/{key}"))
            .or_else(|| self.vars.get(key))
            .map(String::as_str)
    }

    /// The variables matching `prefix*` for `service` (names without the `<service>/`).
    pub fn wildcard(&self, service: &str, prefix: &str) -> Vec<(String, String)> {
        let qualified = format!("{service}/");
        let own: Vec<(String, String)> = self
            .vars
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&qualified)
                    .filter(|rest| rest.starts_with(prefix))
                    .map(|rest| (rest.to_string(), v.clone()))
            })
            .collect();
        if !own.is_empty() {
            return own;
        }
        self.vars
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && !k.contains('/'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Takes the variable name at the front of `it`.
fn read_name(it: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> String {
    let mut name = String::new();
    while let Some(&(_, c)) = it.peek() {
        if !is_name_char(c) {
            break;
        }
        name.push(c);
        it.next();
    }
    name
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Interpolates one string for `service`; unset variables are pushed to `unset`.
pub fn interpolate_str(
    s: &str,
    service: &str,
    env: &Environment,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let bad = || format!("invalid interpolation format in {s:?} (write $$ for a literal $)");
    let mut out = String::with_capacity(s.len());
    let mut it = s.char_indices().peekable();
    while let Some((_, c)) = it.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match it.peek().map(|&(_, c)| c) {
            Some('$') => {
                it.next();
                out.push('$');
            }
            Some('{') => {
                it.next();
                let name = read_name(&mut it);
                if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(bad());
                }
                let mut rest = String::new();
                let mut closed = false;
                for (_, c) in it.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    rest.push(c);
                }
                if !closed {
                    return Err(bad());
                }
                let (op, arg) = [":-", ":?", "-", "?"]
                    .iter()
                    .find_map(|op| rest.strip_prefix(op).map(|a| (*op, a.to_string())))
                    .unwrap_or(("", rest.clone()));
                if op.is_empty() && !arg.is_empty() {
                    return Err(bad());
                }
                let val = env.lookup(service, &name);
                match op {
                    "" => match val {
                        Some(v) => out.push_str(v),
                        None => unset.push(name),
                    },
                    ":-" => match val.filter(|v| !v.is_empty()) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&arg),
                    },
                    "-" => out.push_str(val.unwrap_or(&arg)),
                    ":?" | "?" => {
                        let ok = if op == ":?" {
                            val.filter(|v| !v.is_empty())
                        } else {
                            val
                        };
                        match ok {
                            Some(v) => out.push_str(v),
                            None => {
                                let why = if arg.is_empty() {
                                    "is not set".to_string()
                                } else {
                                    arg.clone()
                                };
                                return Err(format!("required variable {name}: {why}"));
                            }
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            Some(c) if is_name_char(c) && !c.is_ascii_digit() => {
                let name = read_name(&mut it);
                match env.lookup(service, &name) {
                    Some(v) => out.push_str(v),
                    None => unset.push(name),
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn walk(
    v: &mut Value,
    path: &str,
    service: &str,
    env: &Environment,
    warnings: &mut Vec<Warning>,
) -> Result<(), ServiceError> {
    match v {
        Value::String(s) => {
            let mut unset = Vec::new();
            *s = interpolate_str(s, service, env, &mut unset).map_err(|message| ServiceError {
                service: service.to_string(),
                path: path.to_string(),
                message,
            })?;
            for name in unset {
                warnings.push(Warning::new(
                    path,
                    format!("variable {name} is not set, substituting an empty string"),
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), service, env, warnings)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                walk(item, &format!("{path}.{k}"), service, env, warnings)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Resolves bare keys and wildcards of an (interpolated) `environment` value.
fn resolve_environment(v: &Value, service: &str, env: &Environment) -> Value {
    let resolve = |key: &str, out: &mut Vec<(String, String)>| {
        if let Some(prefix) = key.strip_suffix('*') {
            out.extend(env.wildcard(service, prefix));
        } else if let Some(val) = env.lookup(service, key) {
            out.push((key.to_string(), val.to_string()));
        }
    };
    match v {
        Value::Array(items) => {
            let mut out: Vec<Value> = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if !s.contains('=') => {
                        let mut found = Vec::new();
                        resolve(s.trim(), &mut found);
                        out.extend(
                            found
                                .into_iter()
                                .map(|(k, v)| Value::String(format!("{k}={v}"))),
                        );
                    }
                    other => out.push(other.clone()),
                }
            }
            Value::Array(out)
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if val.is_null() {
                    let mut found = Vec::new();
                    resolve(k, &mut found);
                    for (k, v) in found {
                        out.insert(k, Value::String(v));
                    }
                } else {
                    out.insert(k.clone(), val.clone());
                }
            }
            Value::Object(out)
        }
        Value::String(s) if !s.contains('=') => {
            resolve_environment(&Value::Array(vec![v.clone()]), service, env)
        }
        other => other.clone(),
    }
}

/// Interpolates every string of a service map and resolves its `environment` (bare keys,
/// wildcards). `path` is the service's dotted key, for messages.
pub fn interpolate_service(
    service: &str,
    path: &str,
    raw: &Map<String, Value>,
    env: &Environment,
) -> Result<(Map<String, Value>, Vec<Warning>), ServiceError> {
    let mut warnings = Vec::new();
    let mut out = Map::new();
    for (k, v) in raw {
        let mut v = v.clone();
        walk(&mut v, &format!("{path}.{k}"), service, env, &mut warnings)?;
        if k == "environment" {
            v = resolve_environment(&v, service, env);
        }
        out.insert(k.clone(), v);
    }
    Ok((out, warnings))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Environment {
        let mut e = Environment::default();
        for (k, v) in [
            ("A", "a"),
            ("BB", "bb"),
            ("BC", "bc"),
            ("svc/A", "svc-a"),
            ("svc/BX", "svc-bx"),
            ("other/BZ", "leak"),
            ("EMPTY", ""),
        ] {
            e.set(k, v);
        }
        e
    }

    fn interp(s: &str, service: &str) -> (Result<String, String>, Vec<String>) {
        let mut unset = Vec::new();
        (interpolate_str(s, service, &env(), &mut unset), unset)
    }

    #[test]
    fn forms() {
        assert_eq!(interp("${A}-$A.$$A", "x").0.unwrap(), "a-a.$A");
        assert_eq!(interp("${A}", "svc").0.unwrap(), "svc-a");
        assert_eq!(interp("x${BB}y", "svc").0.unwrap(), "xbby");
        let (r, unset) = interp("[${NOPE}]", "x");
        assert_eq!(r.unwrap(), "[]");
        assert_eq!(unset, ["NOPE"]);
        assert_eq!(interp("${NOPE:-d ef}", "x").0.unwrap(), "d ef");
        assert_eq!(interp("${EMPTY:-d}", "x").0.unwrap(), "d");
        assert_eq!(interp("${EMPTY-d}", "x").0.unwrap(), "");
        assert!(
            interp("${NOPE:?needed}", "x")
                .0
                .unwrap_err()
                .contains("needed")
        );
        for bad in ["$", "${}", "${A", "$1", "${A:x}", "a $ b", "${1A}"] {
            assert!(interp(bad, "x").0.is_err(), "{bad}");
        }
    }

    #[test]
    fn service_map() {
        let raw = json!({
            "image": "${A}/img:${NOPE}",
            "environment": ["A", "B*", "C", "K=${BB}", "D=$$x"],
            "labels": {"x": "$A"},
            "privileged": true,
        });
        let Value::Object(m) = raw else { panic!() };
        let (out, w) = interpolate_service("svc", "rancher.services.svc", &m, &env()).unwrap();
        assert_eq!(out["image"], "svc-a/img:");
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].to_string(),
            "rancher.services.svc.image: variable NOPE is not set, substituting an empty string"
        );
        // svc/B* matched svc/BX, so the unqualified BB/BC are not imported
        assert_eq!(
            out["environment"],
            json!(["A=svc-a", "BX=svc-bx", "K=bb", "D=$x"])
        );
        assert_eq!(out["labels"]["x"], "svc-a");
        assert_eq!(out["privileged"], true);
    }

    #[test]
    fn wildcard_unqualified_skips_other_services() {
        let raw = json!({"environment": ["B*"], "image": "x"});
        let Value::Object(m) = raw else { panic!() };
        let (out, _) = interpolate_service("env", "p", &m, &env()).unwrap();
        assert_eq!(out["environment"], json!(["BB=bb", "BC=bc"]));
        let raw = json!({"environment": {"A": null, "NOPE": null, "K": "v"}});
        let Value::Object(m) = raw else { panic!() };
        let (out, _) = interpolate_service("env", "p", &m, &env()).unwrap();
        assert_eq!(out["environment"], json!({"A": "a", "K": "v"}));
    }

    #[test]
    fn errors_carry_path() {
        let raw = json!({"command": ["ok", "echo $1"]});
        let Value::Object(m) = raw else { panic!() };
        let e = interpolate_service("svc", "rancher.services.svc", &m, &env()).unwrap_err();
        assert_eq!(e.path, "rancher.services.svc.command[1]");
        assert_eq!(e.service, "svc");
    }
}
