//! Decoding the generic tree into the typed model, with the path of every problem.
//!
//! [`decode`] walks a [`serde_json::Value`] with a serde `Deserializer` that knows where it is.
//! A type error names its dotted key; a key a struct does not know is recorded as an unknown
//! key (struct field lists come from serde's derive). To find *every* problem rather than the
//! first, a failing key is pruned from a copy of the tree and decoding is retried, so the
//! caller also gets the tree with only the broken keys removed.
//!
//! Scalars are converted the way go-yaml's weak decoding did for RancherOS: a number or a
//! boolean where a string is expected becomes its text (`extra_args: [--mtu, 1460]`), and a
//! string of digits where a number is expected is read as the number. A null where a map or
//! list is expected is an empty one.

use std::cell::RefCell;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde_json::Value;

use super::path::{self, KeyPath, Seg};

/// An error while decoding, with the path where it happened once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub path: Option<KeyPath>,
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            message: msg.to_string(),
        }
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError {
            path: None,
            message: format!("expected {exp}, found {}", unexpected(unexp)),
        }
    }
}

fn unexpected(u: de::Unexpected) -> String {
    match u {
        de::Unexpected::Map => "a map".into(),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Unit => "nothing (null)".into(),
        other => other.to_string(),
    }
}

impl DeError {
    fn at(mut self, p: &KeyPath) -> Self {
        if self.path.is_none() {
            self.path = Some(p.clone());
        }
        self
    }
}

/// A problem found while decoding: its path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: KeyPath,
    pub message: String,
    /// An unknown key (kept, warned about) rather than a value of the wrong type (dropped).
    pub unknown_key: bool,
}

/// What [`decode`] found.
#[derive(Debug)]
pub struct Decoded<T> {
    /// The typed model, from the tree with the broken keys removed.
    pub value: T,
    /// The tree with the broken keys removed (unknown keys are kept).
    pub pruned: Value,
    /// Every problem: type errors (their keys were removed) and unknown keys.
    pub issues: Vec<Issue>,
}

/// The most problems reported for one document; past that the document is hopeless.
const MAX_ERRORS: usize = 200;

/// Decodes `tree` into `T`, pruning every key that does not fit and retrying, so all problems
/// are found. Fails only when nothing usable is left (more than [`MAX_ERRORS`] problems, or the
/// root itself does not fit).
pub fn decode<T: DeserializeOwned>(tree: &Value) -> Result<Decoded<T>, Vec<Issue>> {
    let mut pruned = tree.clone();
    let mut errors: Vec<Issue> = Vec::new();
    // List items removed so far (the list's path and the index, in the coordinates of the
    // time), to give later problems the index they have in the original tree.
    let mut removed_items: Vec<(KeyPath, usize)> = Vec::new();
    loop {
        let unknown = RefCell::new(Vec::new());
        let d = PathDe {
            v: &pruned,
            path: KeyPath::root(),
            unknown: &unknown,
        };
        match T::deserialize(d) {
            Ok(value) => {
                let mut issues = errors;
                issues.extend(unknown.into_inner());
                return Ok(Decoded {
                    value,
                    pruned,
                    issues,
                });
            }
            Err(e) => {
                let p = e.path.clone().unwrap_or_default();
                let original = to_original(&p, &removed_items);
                errors.push(Issue {
                    path: original,
                    message: e.message,
                    unknown_key: false,
                });
                if p.is_empty()
                    || errors.len() > MAX_ERRORS
                    || path::remove(&mut pruned, &p).is_none()
                {
                    return Err(errors);
                }
                if let Some(Seg::Index(i)) = p.segs().last() {
                    let mut parent = p.clone();
                    parent.pop();
                    removed_items.push((parent, *i));
                }
            }
        }
    }
}

/// Translates a path in the pruned tree back to the original tree.
fn to_original(p: &KeyPath, removed_items: &[(KeyPath, usize)]) -> KeyPath {
    let mut segs: Vec<Seg> = p.segs().to_vec();
    for (parent, idx) in removed_items.iter().rev() {
        let n = parent.len();
        if segs.len() > n
            && segs[..n] == *parent.segs()
            && let Seg::Index(k) = &mut segs[n]
            && *k >= *idx
        {
            *k += 1;
        }
    }
    let mut out = KeyPath::root();
    for s in segs {
        out.push(s);
    }
    out
}

struct PathDe<'a> {
    v: &'a Value,
    path: KeyPath,
    unknown: &'a RefCell<Vec<Issue>>,
}

impl<'a> PathDe<'a> {
    fn child(&self, v: &'a Value, seg: Seg) -> PathDe<'a> {
        let mut path = self.path.clone();
        path.push(seg);
        PathDe {
            v,
            path,
            unknown: self.unknown,
        }
    }

    fn err(&self, message: String) -> DeError {
        DeError {
            path: Some(self.path.clone()),
            message,
        }
    }

    fn found(&self) -> &'static str {
        match self.v {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "a map",
        }
    }

    fn expected(&self, what: &str) -> DeError {
        self.err(format!("expected {what}, found {}", self.found()))
    }

    fn int<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        let r = match self.v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    return Err(self.expected("an integer"));
                }
            }
            Value::String(s) => match (s.trim().parse::<u64>(), s.trim().parse::<i64>()) {
                (Ok(u), _) => visitor.visit_u64(u),
                (_, Ok(i)) => visitor.visit_i64(i),
                _ => return Err(self.err(format!("expected an integer, found the string {s:?}"))),
            },
            _ => return Err(self.expected("an integer")),
        };
        r.map_err(|e: DeError| e.at(&p))
    }
}

impl<'a> de::Deserializer<'a> for PathDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        let r = match self.v {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(_) => return self.deserialize_seq(visitor),
            Value::Object(_) => return self.deserialize_map(visitor),
        };
        r.map_err(|e: DeError| e.at(&p))
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Bool(b) => visitor.visit_bool(*b).map_err(|e: DeError| e.at(&p)),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => visitor.visit_bool(true).map_err(|e: DeError| e.at(&p)),
                "false" | "no" | "off" => visitor.visit_bool(false).map_err(|e: DeError| e.at(&p)),
                _ => Err(self.err(format!("expected a boolean, found the string {s:?}"))),
            },
            _ => Err(self.expected("a boolean")),
        }
    }

    fn deserialize_i8<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_i16<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_i32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_i64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_u8<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_u16<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_u32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }
    fn deserialize_u64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.int(visitor)
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Number(n) => visitor
                .visit_f64(n.as_f64().unwrap_or(0.0))
                .map_err(|e: DeError| e.at(&p)),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) => visitor.visit_f64(f).map_err(|e: DeError| e.at(&p)),
                Err(_) => Err(self.err(format!("expected a number, found the string {s:?}"))),
            },
            _ => Err(self.expected("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::String(s) => visitor.visit_borrowed_str(s).map_err(|e: DeError| e.at(&p)),
            Value::Number(n) => visitor
                .visit_string(n.to_string())
                .map_err(|e: DeError| e.at(&p)),
            Value::Bool(b) => visitor
                .visit_string(b.to_string())
                .map_err(|e: DeError| e.at(&p)),
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Null => visitor.visit_none().map_err(|e: DeError| e.at(&p)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Null => visitor.visit_unit().map_err(|e: DeError| e.at(&p)),
            _ => Err(self.expected("nothing")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DeError| e.at(&p))
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Array(items) => {
                let seq = Seq {
                    items,
                    next: 0,
                    parent: &self,
                };
                visitor.visit_seq(seq).map_err(|e: DeError| e.at(&p))
            }
            Value::Null => {
                let empty: &[Value] = &[];
                let seq = Seq {
                    items: empty,
                    next: 0,
                    parent: &self,
                };
                visitor.visit_seq(seq).map_err(|e: DeError| e.at(&p))
            }
            _ => Err(self.expected("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::Object(m) => {
                let entries: Vec<(&'a String, &'a Value)> = m.iter().collect();
                visitor
                    .visit_map(MapIn {
                        entries,
                        next: 0,
                        parent: &self,
                    })
                    .map_err(|e: DeError| e.at(&p))
            }
            Value::Null => visitor
                .visit_map(MapIn {
                    entries: Vec::new(),
                    next: 0,
                    parent: &self,
                })
                .map_err(|e: DeError| e.at(&p)),
            _ => Err(self.expected("a map")),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if let Value::Object(m) = self.v {
            for k in m.keys() {
                if !fields.contains(&k.as_str()) {
                    self.unknown.borrow_mut().push(Issue {
                        path: self.path.key(k),
                        message: "unknown key (kept, but nothing uses it)".into(),
                        unknown_key: true,
                    });
                }
            }
        }
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let p = self.path.clone();
        match self.v {
            Value::String(s) => {
                let d: BorrowedStrDeserializer<'a, DeError> = BorrowedStrDeserializer::new(s);
                visitor.visit_enum(d).map_err(|e: DeError| e.at(&p))
            }
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct Seq<'a, 'p> {
    items: &'a [Value],
    next: usize,
    parent: &'p PathDe<'a>,
}

impl<'a> de::SeqAccess<'a> for Seq<'a, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let i = self.next;
        let Some(v) = self.items.get(i) else {
            return Ok(None);
        };
        self.next += 1;
        let child = self.parent.child(v, Seg::Index(i));
        let p = child.path.clone();
        seed.deserialize(child)
            .map(Some)
            .map_err(|e: DeError| e.at(&p))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len().saturating_sub(self.next))
    }
}

struct MapIn<'a, 'p> {
    entries: Vec<(&'a String, &'a Value)>,
    next: usize,
    parent: &'p PathDe<'a>,
}

impl<'a> de::MapAccess<'a> for MapIn<'a, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let p = self.parent.path.key(k);
        let d: BorrowedStrDeserializer<'a, DeError> = BorrowedStrDeserializer::new(k.as_str());
        seed.deserialize(d).map(Some).map_err(|e: DeError| e.at(&p))
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((k, v)) = self.entries.get(self.next) else {
            return Err(self.parent.err("internal: value without key".into()));
        };
        self.next += 1;
        let child = self.parent.child(v, Seg::Key((*k).clone()));
        let p = child.path.clone();
        seed.deserialize(child).map_err(|e: DeError| e.at(&p))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len().saturating_sub(self.next))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Inner {
        mtu: Option<u32>,
        name: String,
        on: bool,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Outer {
        inner: Inner,
        list: Vec<String>,
    }

    #[test]
    fn finds_every_problem_and_keeps_the_rest() {
        let t = json!({"inner": {"mtu": "big", "name": 5, "on": [1], "typo": 1}, "list": ["a", [], 1, {"x": 1}], "zzz": 0});
        let d = decode::<Outer>(&t).unwrap();
        let errors: Vec<String> = d
            .issues
            .iter()
            .filter(|i| !i.unknown_key)
            .map(|i| i.path.to_string())
            .collect();
        assert_eq!(errors, vec!["inner.mtu", "inner.on", "list.1", "list.3"]);
        let mut unknown: Vec<String> = d
            .issues
            .iter()
            .filter(|i| i.unknown_key)
            .map(|i| i.path.to_string())
            .collect();
        unknown.sort();
        assert_eq!(unknown, vec!["inner.typo", "zzz"]);
        assert_eq!(d.value.inner.name, "5");
        assert_eq!(d.value.list, vec!["a", "1"]);
        assert_eq!(d.pruned["inner"], json!({"name": 5, "typo": 1}));
        assert!(
            d.issues[0].message.contains("expected an integer"),
            "{:?}",
            d.issues[0]
        );
    }

    #[test]
    fn root_of_the_wrong_type_fails() {
        let e = decode::<Outer>(&json!([1])).unwrap_err();
        assert!(e[0].message.contains("expected"), "{e:?}");
    }
}
