//! YAML in and out, the way RancherOS users wrote it (YAML 1.1: `dhcp: yes` is a boolean,
//! `permissions: 0755` is the octal number 493).
//!
//! A document is parsed once into the generic tree ([`serde_json::Value`]) together with a
//! [`LineIndex`] that says on which line every dotted key was written, so later problems
//! (type errors, unknown keys) can name the file, the line and the key.
//!
//! Values tagged `!!binary` keep their base64 text; [`Parsed::binary`] lists where they were,
//! so `write_files` can treat that content as base64 (what go-yaml did by decoding it).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Spanned, Tagged};

use super::path::{KeyPath, Seg};

/// A YAML syntax error: the parser's message and where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Line numbers (1-based) of every key and list item in a document, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineIndex(BTreeMap<String, usize>);

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut p = path.clone();
        loop {
            if let Some(l) = self.0.get(&p.to_string()) {
                return Some(*l);
            }
            p.pop()?;
        }
    }

    fn insert(&mut self, path: KeyPath, line: usize) {
        if line > 0 {
            self.0.insert(path.to_string(), line);
        }
    }
}

/// A parsed document.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The generic tree. An empty document or a comment-only one is `{}`.
    pub value: Value,
    pub lines: LineIndex,
    /// Paths of scalars that carried the `!!binary` tag (their text is base64).
    pub binary: Vec<KeyPath>,
}

/// How deeply collections may nest. Real cloud-configs stay under 10 levels
/// (`rancher.services.NAME.logging.options.KEY`); the limit keeps the recursive decoders far
/// from the end of even a small thread stack (an overflow would abort PID 1).
pub const MAX_NESTING: usize = 24;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_NESTING;
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        ignore_binary_tag_for_string: true,
        with_snippet: false,
        budget: Some(budget),
    }
}

/// Parses one YAML document. Multiple documents, syntax errors and alias bombs are errors;
/// nothing here panics on any input.
pub fn parse(text: &str) -> Result<Parsed, SyntaxError> {
    let node: Spanned<Tagged<Node>> = serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((0, 0));
            SyntaxError {
                line,
                column,
                message: first_line(&e.to_string()),
            }
        })?;
    let mut lines = LineIndex::default();
    let mut binary = Vec::new();
    let mut path = KeyPath::root();
    let value = match node.value.0 {
        Node::Null => Value::Object(Map::new()),
        n => convert(n, &mut path, &mut lines, &mut binary),
    };
    Ok(Parsed {
        value,
        lines,
        binary,
    })
}

/// Parses a single YAML value, as `ros config set` and the kernel command line give them.
/// Text that is not valid YAML on its own is taken as a plain string.
pub fn parse_scalar_or_yaml(text: &str) -> Value {
    match serde_saphyr::from_str_with_options::<Spanned<Tagged<Node>>>(text, options()) {
        Ok(n) => {
            let mut lines = LineIndex::default();
            let mut path = KeyPath::root();
            convert(n.value.0, &mut path, &mut lines, &mut Vec::new())
        }
        Err(_) => Value::String(text.to_string()),
    }
}

/// Serialises a tree as YAML. Strings that YAML 1.1 would read as something else (`"yes"`,
/// `"0755"`, `"1460"`) are quoted, so reading the output back gives the same tree.
pub fn to_yaml(value: &Value) -> String {
    // Long single-line strings (ssh keys) stay on one line instead of being folded.
    let opts = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX / 2 };
    match serde_saphyr::to_string_with_options(value, opts) {
        Ok(s) => s,
        // Serialising a serde_json::Value cannot fail in practice; fall back to JSON, which is
        // also YAML, rather than losing the data.
        Err(_) => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    // saphyr prefixes "error: line N column M: "; the location is reported separately.
    let l = l.strip_prefix("error: ").unwrap_or(l);
    match l.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
        _ => l.to_string(),
    }
}

fn convert(
    node: Node,
    path: &mut KeyPath,
    lines: &mut LineIndex,
    binary: &mut Vec<KeyPath>,
) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(Number::from(i)),
        Node::UInt(u) => Value::Number(Number::from(u)),
        Node::Float(f) => Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                path.push(Seg::Index(i));
                lines.insert(path.clone(), item.referenced.line() as usize);
                if is_binary(&item.value.1) {
                    binary.push(path.clone());
                }
                out.push(convert(item.value.0, path, lines, binary));
                path.pop();
            }
            Value::Array(out)
        }
        Node::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = key_string(k.value.0);
                path.push(Seg::Key(key.clone()));
                lines.insert(path.clone(), k.referenced.line() as usize);
                if is_binary(&v.value.1) {
                    binary.push(path.clone());
                }
                let val = convert(v.value.0, path, lines, binary);
                path.pop();
                // A YAML merge (`<<`) or two keys spelled differently but equal as strings
                // (`1` and `"1"`): the later one wins, as in go-yaml.
                out.insert(key, val);
            }
            Value::Object(out)
        }
    }
}

fn is_binary(tag: &Option<String>) -> bool {
    tag.as_deref()
        .is_some_and(|t| t == "tag:yaml.org,2002:binary" || t == "!!binary")
}

/// Map keys become strings, the way go-yaml turned them into `map[string]interface{}` keys.
fn key_string(node: Node) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::UInt(u) => u.to_string(),
        Node::Float(f) => f.to_string(),
        Node::Str(s) => s,
        // Complex keys are legal YAML but meaningless in a cloud-config; keep them visible.
        other => {
            let mut p = KeyPath::root();
            let v = convert(other, &mut p, &mut LineIndex::default(), &mut Vec::new());
            v.to_string()
        }
    }
}

type Child = Spanned<Tagged<Node>>;

/// The raw YAML node, with locations and tags on every child.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Child>),
    Map(Vec<(Child, Child)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(i64::try_from(v)
            .map(Node::Int)
            .unwrap_or_else(|_| Node::Str(v.to_string())))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(u64::try_from(v)
            .map(Node::UInt)
            .unwrap_or_else(|_| Node::Str(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element::<Spanned<Tagged<Node>>>()? {
            v.push(x);
        }
        Ok(Node::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = a.next_key::<Spanned<Tagged<Node>>>()? {
            let val = a.next_value::<Spanned<Tagged<Node>>>()?;
            v.push((k, val));
        }
        Ok(Node::Map(v))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _a: A) -> Result<Node, A::Error> {
        Err(de::Error::custom("unsupported YAML node"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_1_1_booleans_and_octal() {
        let p = parse("a: yes\nb: 0755\nc: \"0755\"\nd: off\ne: 1.5\n").unwrap();
        assert_eq!(
            p.value,
            json!({"a": true, "b": 493, "c": "0755", "d": false, "e": 1.5})
        );
    }

    #[test]
    fn lines_are_recorded_per_key_and_item() {
        let p =
            parse("#cloud-config\nrancher:\n  network:\n    mtu: 1\nlist:\n- a\n- b\n").unwrap();
        let line = |s: &str| p.lines.line_of(&KeyPath::parse(s).unwrap());
        assert_eq!(line("rancher"), Some(2));
        assert_eq!(line("rancher.network.mtu"), Some(4));
        assert_eq!(line("list.1"), Some(7));
        assert_eq!(line("rancher.network.mtu.deeper"), Some(4));
    }

    #[test]
    fn empty_and_comment_only_documents_are_empty_maps() {
        assert_eq!(parse("").unwrap().value, json!({}));
        assert_eq!(parse("#cloud-config\n").unwrap().value, json!({}));
    }

    #[test]
    fn errors_carry_a_location() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("duplicate"), "{e}");
        let e = parse("a: [1\n").unwrap_err();
        assert!(e.line >= 1, "{e:?}");
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn binary_tag_is_kept_as_base64_and_remembered() {
        let p = parse("f:\n- content: !!binary |\n    aGVsbG8=\n").unwrap();
        assert_eq!(p.value["f"][0]["content"], json!("aGVsbG8=\n"));
        assert_eq!(
            p.binary,
            vec![KeyPath::root().key("f").index(0).key("content")]
        );
    }

    #[test]
    fn output_reads_back_identically() {
        let v = json!({"a": "yes", "b": "0755", "c": "1460", "d": "", "e": null, "f": "x\ny\n",
                       "mac=52:54:00:12:34:59": {"k": [1, "2", true]}, "g": ":v1.9.0"});
        assert_eq!(parse(&to_yaml(&v)).unwrap().value, v);
    }

    #[test]
    fn scalar_values_are_yaml() {
        assert_eq!(parse_scalar_or_yaml("[a, b]"), json!(["a", "b"]));
        assert_eq!(parse_scalar_or_yaml("yes"), json!(true));
        assert_eq!(parse_scalar_or_yaml("\"a b\""), json!("a b"));
        assert_eq!(parse_scalar_or_yaml("a: b: c"), json!("a: b: c"));
        assert_eq!(parse_scalar_or_yaml(""), json!(null));
    }
}
