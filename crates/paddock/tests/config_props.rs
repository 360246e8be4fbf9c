//! Property tests: set-then-get round-trips, the merge is associative, and the parsers never
//! panic on arbitrary input (the stand-in for fuzzing in `cargo test`; the cargo-fuzz targets
//! are in fuzz/).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use paddock::config::merge::{self, APPEND_KEYS};
use paddock::config::path::{self, KeyPath};
use paddock::config::{check_text, cmdline, yaml};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9 :#'\"\\-]{0,12}".prop_map(Value::String),
        Just(Value::String("yes".into())),
        Just(Value::String("0755".into())),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A map in which the keys `m*` always hold maps (or null) and the keys `s*` never do, the
/// way the schema types every key: the merge is associative over such sources (a key that is
/// a map in one source and a scalar in another cannot be merged associatively by any
/// replace-on-conflict rule, and validation drops such a value).
fn shaped(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        scalar(),
        prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
    ];
    if depth == 0 {
        return prop::collection::btree_map(prop::sample::select(vec!["s1", "s2"]), leaf, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            .boxed();
    }
    let sub = prop_oneof![Just(Value::Null), shaped(depth - 1)];
    (
        prop::collection::btree_map(prop::sample::select(vec!["s1", "s2"]), leaf, 0..3),
        prop::collection::btree_map(prop::sample::select(vec!["m1", "m2"]), sub, 0..3),
    )
        .prop_map(|(a, b)| {
            let mut m: Map<String, Value> =
                a.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.extend(b.into_iter().map(|(k, v)| (k.to_string(), v)));
            Value::Object(m)
        })
        .boxed()
}

/// A source as validation leaves it: shaped, and the append keys (if present) are lists.
fn source() -> impl Strategy<Value = Value> {
    (
        shaped(3),
        prop::collection::btree_map(
            prop::sample::select(APPEND_KEYS.to_vec()),
            prop::collection::vec(tree(), 0..3),
            0..3,
        ),
    )
        .prop_map(|(base, lists)| {
            let mut out = match base {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in lists {
                out.insert(k.to_string(), Value::Array(v));
            }
            Value::Object(out)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_associative(a in source(), b in source(), c in source()) {
        let left = merge::merged(&merge::merged(&a, &b), &c);
        let right = merge::merged(&a, &merge::merged(&b, &c));
        prop_assert_eq!(left, right);
    }

    #[test]
    fn empty_map_is_the_identity(a in source()) {
        let empty = Value::Object(Map::new());
        prop_assert_eq!(merge::merged(&merge::merged(&empty, &a), &empty), merge::merged(&empty, &a));
    }

    #[test]
    fn set_then_get_round_trips(base in source(), keys in prop::collection::vec("[a-z_]{1,8}", 1..5), v in tree()) {
        let mut t = base;
        let key = KeyPath::parse(&keys.join(".")).unwrap();
        let concrete = path::resolve(&t, &key);
        if path::set(&mut t, &concrete, v.clone()).is_ok() {
            prop_assert_eq!(path::get(&t, &path::resolve(&t, &key)), Some(&v));
            // And through YAML, as `ros config set` writes it and `get` reads it back.
            let back = yaml::parse(&yaml::to_yaml(&t)).unwrap().value;
            prop_assert_eq!(path::get(&back, &path::resolve(&back, &key)), Some(&v));
        }
    }

    #[test]
    fn yaml_output_reads_back(t in tree()) {
        let back = yaml::parse(&yaml::to_yaml(&t)).unwrap().value;
        let expected = if t.is_null() { Value::Object(Map::new()) } else { t };
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = check_text("x", &s);
        let _ = yaml::parse_scalar_or_yaml(&s);
        let c = cmdline::parse(&s);
        let _ = paddock::config::check_value("c", c.config, &Default::default(), &[]);
        let _ = KeyPath::parse(&s);
    }

    #[test]
    fn parsers_never_panic_on_yamlish_text(s in "([a-z]{1,3}|[:\\-\\[\\]{}&*!|>'\"#%@` ,?]|\n {0,4}|0755|yes|~){0,60}") {
        let _ = check_text("x", &s);
        let _ = cmdline::parse(&s);
        let _ = paddock::config::userdata::classify(s.as_bytes());
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = paddock::config::userdata::classify(&b);
        let s = String::from_utf8_lossy(&b);
        let _ = check_text("x", &s);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(check_text("x", &deep).is_err());
    let deep = format!("a: {}1{}", "{b: ".repeat(10_000), "}".repeat(10_000));
    assert!(check_text("x", &deep).is_err());
    let c = cmdline::parse(&format!("rancher.{}=1", vec!["a"; 10_000].join(".")));
    assert_eq!(c.problems.len(), 1);
}

#[test]
fn alias_bombs_are_refused() {
    let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(check_text("x", &s).is_err());
}
