//! The kernel command line as a config source.
//!
//! - Arguments are separated by spaces, except inside quotes (`'...'`, `"..."`) and brackets
//!   (`[...]`, `{...}`): `rancher.modules=[nbd nbds_max=1024, nfs]` is one argument.
//! - `rancher.a.b=VALUE` sets `rancher.a.b`; `cc.a.b=VALUE` sets the top-level `a.b`. VALUE is
//!   YAML (`[a,b]` is a list, `"a b"` a string with a space, `yes` a boolean); a key without
//!   `=VALUE` is `true`. A key given twice collects its values in a list (`rancher.autologin`).
//! - Everything after `--` is the "extra" command line: it is kept as the string
//!   `rancher.environment.EXTRA_CMDLINE` and its `rancher.*`/`cc.*` keys form a later source.
//! - `cloud-config-url=URL` names the user data to fetch (the `cmdline` datasource).

use serde_json::{Map, Value};

use super::path::{self, KeyPath};
use super::{Problem, Severity};

/// What a command line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cmdline {
    /// The `rancher.*`/`cc.*` keys before `--`.
    pub config: Value,
    /// The `rancher.*`/`cc.*` keys after `--`, plus `rancher.environment.EXTRA_CMDLINE`.
    pub extra: Value,
    /// The raw arguments after `--`, if there was a `--`.
    pub extra_text: Option<String>,
    /// `cloud-config-url=`.
    pub cloud_config_url: Option<String>,
    /// Keys that could not be used.
    pub problems: Vec<Problem>,
}

/// Splits a command line into arguments. Quotes and brackets are kept in the arguments (the
/// YAML value parser needs them); they only stop a space from splitting.
pub fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut depth: usize = 0;
    for c in s.chars() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '[' | '{' => {
                    depth = depth.saturating_add(1);
                    cur.push(c);
                }
                ']' | '}' => {
                    depth = depth.saturating_sub(1);
                    cur.push(c);
                }
                c if c.is_whitespace() && depth == 0 => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            },
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Reads a kernel command line.
pub fn parse(s: &str) -> Cmdline {
    let tokens = tokenize(s);
    let split = tokens.iter().position(|t| t == "--");
    let (before, after) = match split {
        Some(i) => (&tokens[..i], Some(&tokens[i + 1..])),
        None => (&tokens[..], None),
    };
    let mut problems = Vec::new();
    let mut url = None;
    let config = keys_to_tree(before, "kernel command line", &mut problems, &mut url);
    let mut extra = Value::Object(Map::new());
    let mut extra_text = None;
    if let Some(after) = after {
        extra = keys_to_tree(
            after,
            "kernel command line (after --)",
            &mut problems,
            &mut url,
        );
        let text = after.join(" ");
        let p = KeyPath::root()
            .key("rancher")
            .key("environment")
            .key("EXTRA_CMDLINE");
        if path::set(&mut extra, &p, Value::String(text.clone())).is_err() {
            problems.push(problem(
                "kernel command line (after --)",
                &p,
                "conflicts with another key".into(),
            ));
        }
        extra_text = Some(text);
    }
    Cmdline {
        config,
        extra,
        extra_text,
        cloud_config_url: url,
        problems,
    }
}

fn problem(file: &str, key: &KeyPath, message: String) -> Problem {
    Problem {
        file: file.into(),
        line: None,
        key: Some(key.to_string()),
        severity: Severity::Error,
        message,
    }
}

fn keys_to_tree(
    tokens: &[String],
    file: &str,
    problems: &mut Vec<Problem>,
    url: &mut Option<String>,
) -> Value {
    let mut tree = Value::Object(Map::new());
    let mut seen: Vec<KeyPath> = Vec::new();
    for t in tokens {
        let (key, raw) = match t.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (t.as_str(), None),
        };
        if key == "cloud-config-url" {
            if let Some(v) = raw {
                *url = Some(unquote(v).to_string());
            }
            continue;
        }
        let dotted = if key.starts_with("rancher.") {
            key
        } else if let Some(rest) = key.strip_prefix("cc.") {
            rest
        } else {
            continue;
        };
        let p = match KeyPath::parse(dotted) {
            Ok(p) => p,
            Err(e) => {
                problems.push(Problem {
                    file: file.into(),
                    line: None,
                    key: Some(key.to_string()),
                    severity: Severity::Error,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let value = match raw {
            None => Value::Bool(true),
            Some(v) => super::yaml::parse_scalar_or_yaml(v),
        };
        let value = if seen.contains(&p) {
            match path::get(&tree, &p).cloned() {
                Some(Value::Array(mut items)) if seen.iter().filter(|s| **s == p).count() > 1 => {
                    items.push(value);
                    Value::Array(items)
                }
                Some(prev) => Value::Array(vec![prev, value]),
                None => value,
            }
        } else {
            value
        };
        match path::set(&mut tree, &p, value) {
            Ok(()) => seen.push(p),
            Err(e) => problems.push(problem(file, &p, e.to_string())),
        }
    }
    tree
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotes_and_brackets_keep_spaces() {
        let t = tokenize(
            r#"BOOT=x rancher.modules=[nbd nbds_max=1024, nfs] rancher.password="a b"  cc.x='c d' z"#,
        );
        assert_eq!(
            t,
            vec![
                "BOOT=x",
                "rancher.modules=[nbd nbds_max=1024, nfs]",
                "rancher.password=\"a b\"",
                "cc.x='c d'",
                "z"
            ]
        );
        assert_eq!(tokenize("a [unclosed b"), vec!["a", "[unclosed b"]);
        assert_eq!(tokenize("a \"unclosed b"), vec!["a", "\"unclosed b"]);
    }

    #[test]
    fn keys_become_yaml_values() {
        let c = parse(
            "console=tty0 rancher.debug rancher.modules=[nbd nbds_max=1024, nfs] rancher.password=\"a b\" \
                       rancher.network.interfaces.eth0.dhcp=yes rancher.state.dev=LABEL=RANCHER_STATE cc.hostname=h1 \
                       rancher.autologin=tty1 rancher.autologin=ttyS0 rancher.autologin=ttyS1 cloud-config-url=http://x/y",
        );
        assert_eq!(
            c.config,
            json!({"rancher": {"debug": true, "modules": ["nbd nbds_max=1024", "nfs"], "password": "a b",
                               "network": {"interfaces": {"eth0": {"dhcp": true}}}, "state": {"dev": "LABEL=RANCHER_STATE"},
                               "autologin": ["tty1", "ttyS0", "ttyS1"]},
                   "hostname": "h1"})
        );
        assert_eq!(c.cloud_config_url.as_deref(), Some("http://x/y"));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.extra_text, None);
    }

    #[test]
    fn arguments_after_double_dash_are_extra() {
        let c = parse("rancher.a=1 -- rancher.a=2 foo=bar");
        assert_eq!(c.config, json!({"rancher": {"a": 1}}));
        assert_eq!(
            c.extra,
            json!({"rancher": {"a": 2, "environment": {"EXTRA_CMDLINE": "rancher.a=2 foo=bar"}}})
        );
        assert_eq!(c.extra_text.as_deref(), Some("rancher.a=2 foo=bar"));
    }

    #[test]
    fn conflicting_and_malformed_keys_are_problems_not_panics() {
        let c = parse("rancher.a=1 rancher.a.b=2 rancher..x=1 cc.=3");
        assert_eq!(c.config, json!({"rancher": {"a": 1}}));
        assert_eq!(c.problems.len(), 3, "{:?}", c.problems);
    }
}
