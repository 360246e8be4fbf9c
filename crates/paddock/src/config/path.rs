//! Dotted key paths (`rancher.network.dns.nameservers`, `write_files.0.path`) and get/set on
//! the generic tree.
//!
//! A segment that itself contains a dot (the sysctl key `kernel.domainname`, a registry URL)
//! can be written in double quotes: `rancher.sysctl."kernel.domainname"`. Lookups also accept
//! it unquoted: when a segment is not found, it is joined with the following ones until a key
//! matches, so `rancher.sysctl.kernel.domainname` finds it too.

use std::fmt;

use serde_json::{Map, Value};

/// Keys deeper than this are refused, so a hostile key cannot build a tree deep enough to
/// exhaust the stack.
pub const MAX_DEPTH: usize = 32;

/// One step of a path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the root of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(Vec<Seg>);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty key")]
    Empty,
    #[error("key {0:?}: empty segment")]
    EmptySegment(String),
    #[error("key {0:?}: unterminated quote")]
    Unterminated(String),
    #[error("key {0:?}: more than {MAX_DEPTH} segments")]
    TooDeep(String),
    #[error("key {key}: {at} is a {kind}, not a map or list")]
    NotContainer {
        key: String,
        at: String,
        kind: &'static str,
    },
    #[error("key {key}: index {index} is past the end of the list at {at} (length {len})")]
    BadIndex {
        key: String,
        at: String,
        index: usize,
        len: usize,
    },
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn segs(&self) -> &[Seg] {
        &self.0
    }

    pub fn push(&mut self, s: Seg) {
        self.0.push(s);
    }

    pub fn pop(&mut self) -> Option<Seg> {
        self.0.pop()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self` with one more key.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    /// `self` with one more index.
    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.starts_with(&other.0)
    }

    /// Parses `a.b."c.d".0`. Segments made of digits are indexes when they meet a list and keys
    /// when they meet a map, so they are kept as text here ([`Seg::Key`]) and resolved later.
    pub fn parse(s: &str) -> Result<KeyPath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        let mut segs = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted => quoted = false,
                '"' if cur.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                '\\' if quoted => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                '.' if !quoted => {
                    if cur.is_empty() && !was_quoted {
                        return Err(PathError::EmptySegment(s.to_string()));
                    }
                    segs.push(Seg::Key(std::mem::take(&mut cur)));
                    was_quoted = false;
                }
                c => cur.push(c),
            }
        }
        if quoted {
            return Err(PathError::Unterminated(s.to_string()));
        }
        if cur.is_empty() && !was_quoted {
            return Err(PathError::EmptySegment(s.to_string()));
        }
        segs.push(Seg::Key(cur));
        if segs.len() > MAX_DEPTH {
            return Err(PathError::TooDeep(s.to_string()));
        }
        Ok(KeyPath(segs))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match s {
                Seg::Index(n) => write!(f, "{n}")?,
                Seg::Key(k) if k.is_empty() || k.contains(['.', '"', ' ', '\n', '\t']) => {
                    write!(f, "\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))?
                }
                Seg::Key(k) => f.write_str(k)?,
            }
        }
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// Resolves a user-written path against `tree`: digit segments index lists, and dotted keys
/// written without quotes are found by joining segments. Returns the concrete path (which may
/// end in segments that do not exist yet) or `None` when it runs into a scalar.
pub fn resolve(tree: &Value, path: &KeyPath) -> KeyPath {
    let segs = path.segs();
    let mut out = KeyPath::root();
    let mut cur = Some(tree);
    let mut i = 0;
    while i < segs.len() {
        let text = match &segs[i] {
            Seg::Key(k) => k.clone(),
            Seg::Index(n) => n.to_string(),
        };
        match cur {
            Some(Value::Array(items)) => {
                if let Ok(n) = text.parse::<usize>() {
                    out.push(Seg::Index(n));
                    cur = items.get(n);
                } else {
                    out.push(Seg::Key(text));
                    cur = None;
                }
                i += 1;
            }
            Some(Value::Object(map)) if !map.contains_key(&text) => {
                // Try joining with the following segments: `kernel` + `domainname`.
                let mut joined = text.clone();
                let mut found = None;
                for (j, s) in segs.iter().enumerate().skip(i + 1) {
                    joined.push('.');
                    match s {
                        Seg::Key(k) => joined.push_str(k),
                        Seg::Index(n) => joined.push_str(&n.to_string()),
                    }
                    if map.contains_key(&joined) {
                        found = Some((j, joined.clone()));
                        break;
                    }
                }
                match found {
                    Some((j, key)) => {
                        cur = map.get(&key);
                        out.push(Seg::Key(key));
                        i = j + 1;
                    }
                    None => {
                        out.push(Seg::Key(text));
                        cur = None;
                        i += 1;
                    }
                }
            }
            Some(Value::Object(map)) => {
                cur = map.get(&text);
                out.push(Seg::Key(text));
                i += 1;
            }
            _ => {
                out.push(Seg::Key(text));
                cur = None;
                i += 1;
            }
        }
    }
    out
}

/// The value at a concrete path.
pub fn get<'a>(tree: &'a Value, path: &KeyPath) -> Option<&'a Value> {
    let mut cur = tree;
    for s in path.segs() {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Sets the value at a concrete path, creating maps on the way. An index may name an existing
/// item or the end of the list (to append). Refuses to replace a scalar on the way by a map.
pub fn set(tree: &mut Value, path: &KeyPath, value: Value) -> Result<(), PathError> {
    let full = path.to_string();
    let segs = path.segs();
    if segs.len() > MAX_DEPTH {
        return Err(PathError::TooDeep(full));
    }
    let Some((last, parents)) = segs.split_last() else {
        *tree = value;
        return Ok(());
    };
    let mut cur = tree;
    let mut at = KeyPath::root();
    for s in parents {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        let kind_here = kind(cur);
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.entry(k.clone()).or_insert(Value::Null),
            (Seg::Index(i), Value::Array(a)) => {
                let len = a.len();
                if *i == len {
                    a.push(Value::Null);
                }
                match a.get_mut(*i) {
                    Some(v) => v,
                    None => {
                        return Err(PathError::BadIndex {
                            key: full,
                            at: at.to_string(),
                            index: *i,
                            len,
                        });
                    }
                }
            }
            _ => {
                return Err(PathError::NotContainer {
                    key: full,
                    at: at.to_string(),
                    kind: kind_here,
                });
            }
        };
        at.push(s.clone());
    }
    if cur.is_null() {
        *cur = Value::Object(Map::new());
    }
    let kind_here = kind(cur);
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => {
            m.insert(k.clone(), value);
            Ok(())
        }
        (Seg::Index(i), Value::Array(a)) => {
            let len = a.len();
            if *i < len {
                a[*i] = value;
                Ok(())
            } else if *i == len {
                a.push(value);
                Ok(())
            } else {
                Err(PathError::BadIndex {
                    key: full,
                    at: at.to_string(),
                    index: *i,
                    len,
                })
            }
        }
        _ => Err(PathError::NotContainer {
            key: full,
            at: at.to_string(),
            kind: kind_here,
        }),
    }
}

/// Removes the value at a concrete path; returns it if it was there.
pub fn remove(tree: &mut Value, path: &KeyPath) -> Option<Value> {
    let (last, parents) = path.segs().split_last()?;
    let mut cur = tree;
    for s in parents {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => Some(a.remove(*i)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_display_round_trip() {
        let p = KeyPath::parse("rancher.sysctl.\"kernel.domainname\"").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.to_string(), "rancher.sysctl.\"kernel.domainname\"");
        assert_eq!(KeyPath::parse(&p.to_string()).unwrap(), p);
        assert!(KeyPath::parse("a..b").is_err());
        assert!(KeyPath::parse("").is_err());
        assert!(KeyPath::parse("a.\"b").is_err());
        assert!(KeyPath::parse(&vec!["a"; 40].join(".")).is_err());
    }

    #[test]
    fn resolve_handles_indexes_and_dotted_keys() {
        let t = json!({"rancher": {"sysctl": {"kernel.domainname": "x"}}, "w": [{"p": 1}]});
        let r = resolve(
            &t,
            &KeyPath::parse("rancher.sysctl.kernel.domainname").unwrap(),
        );
        assert_eq!(get(&t, &r), Some(&json!("x")));
        let r = resolve(&t, &KeyPath::parse("w.0.p").unwrap());
        assert_eq!(get(&t, &r), Some(&json!(1)));
    }

    #[test]
    fn set_creates_maps_and_refuses_to_descend_into_scalars() {
        let mut t = json!({"a": 1});
        set(&mut t, &KeyPath::parse("b.c").unwrap(), json!(2)).unwrap();
        assert_eq!(t, json!({"a": 1, "b": {"c": 2}}));
        let e = set(&mut t, &KeyPath::parse("a.x").unwrap(), json!(3)).unwrap_err();
        assert!(e.to_string().contains("a is a number"), "{e}");
        assert_eq!(
            remove(&mut t, &KeyPath::parse("b.c").unwrap()),
            Some(json!(2))
        );
    }
}
