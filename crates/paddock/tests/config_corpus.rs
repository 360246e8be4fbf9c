//! Every config of the RancherOS corpus (a copy of ../shared/reference/rancheros-corpus/configs
//! in tests/corpus/rancheros-configs, so the tests do not depend on shared/), judged
//! as its INDEX.md says Paddock should, then merged and exported. Golden files live in
//! tests/golden/config; regenerate them with `UPDATE_GOLDEN=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use paddock::config::sources::{self, LoadOptions};
use paddock::config::userdata::{self, UserData};
use paddock::config::{self, Severity, export, yaml};
use paddock::root::Root;

fn corpus_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/rancheros-configs");
    assert!(
        d.join("INDEX.md").exists(),
        "the corpus is missing at {}",
        d.display()
    );
    d
}

/// (file name, published text without the provenance line)
fn corpus() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yml"))
        .map(|n| {
            let text = fs::read_to_string(corpus_dir().join(&n)).unwrap();
            let (first, rest) = text.split_once('\n').unwrap();
            assert!(first.starts_with("# source: "), "{n}: no provenance line");
            (n, rest.to_string())
        })
        .collect();
    out.sort();
    out
}

/// What INDEX.md says Paddock does with each file.
enum Expect {
    /// Valid; `header` says whether it is accepted as boot user-data as published.
    Valid { header: bool },
    /// `ros config validate` must name this key.
    Rejected {
        key: &'static str,
        severity: Severity,
    },
}

fn expect(name: &str) -> Expect {
    match &name[..2] {
        // no-header files: valid for merge/validate/cloud-config.d, not as boot user-data
        "13" | "25" => Expect::Valid { header: false },
        // "# cloud-config" with a space: accepted with a warning (checked below)
        "36" => Expect::Valid { header: true },
        "37" => Expect::Rejected {
            key: "bad_key",
            severity: Severity::Warning,
        },
        "38" => Expect::Rejected {
            key: "rancher",
            severity: Severity::Error,
        },
        _ => Expect::Valid { header: true },
    }
}

#[test]
fn the_corpus_is_complete() {
    let names: Vec<String> = corpus().into_iter().map(|(n, _)| n).collect();
    let index = fs::read_to_string(corpus_dir().join("INDEX.md")).unwrap();
    for n in &names {
        assert!(
            index.contains(&format!("| {n} |")),
            "{n} is not in INDEX.md"
        );
    }
    assert_eq!(names.len(), 34, "{names:?}");
}

#[test]
fn every_config_is_judged_as_the_index_says() {
    for (name, text) in corpus() {
        let checked = config::check_text(&name, &text);
        match expect(&name) {
            Expect::Valid { header } => {
                let c = checked.unwrap_or_else(|p| panic!("{name}: {p}"));
                assert!(c.problems.is_empty(), "{name}: {:#?}", c.problems);
                match (header, userdata::classify(text.as_bytes())) {
                    (true, Ok(UserData::CloudConfig { warning, .. })) => {
                        assert_eq!(
                            warning.is_some(),
                            name.starts_with("36"),
                            "{name}: header warning {warning:?}"
                        );
                    }
                    (false, Err(e)) => assert!(
                        e.to_string().contains("unrecognized user data"),
                        "{name}: {e}"
                    ),
                    (_, other) => panic!("{name}: as user data: {other:?}"),
                }
            }
            Expect::Rejected { key, severity } => {
                let c = checked.unwrap_or_else(|p| panic!("{name}: {p}"));
                assert_eq!(c.problems.len(), 1, "{name}: {:#?}", c.problems);
                let p = &c.problems[0];
                assert_eq!(p.key.as_deref(), Some(key), "{name}: {p}");
                assert_eq!(p.severity, severity, "{name}: {p}");
                assert_eq!(p.line, Some(1), "{name}: {p}");
                assert!(p.to_string().starts_with(&format!("{name}:1: ")), "{p}");
            }
        }
    }
}

#[test]
fn specific_verdicts() {
    let get = |prefix: &str| {
        corpus()
            .into_iter()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap()
            .1
    };
    // 09: the integer in a string list is the string "1460".
    let c = config::check_text("09", &get("09")).unwrap();
    let args: Vec<&str> = c
        .config
        .rancher
        .docker
        .extra_args
        .iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(args, vec!["--mtu", "1460"]);
    // 34: append is a real key.
    let c = config::check_text("34", &get("34")).unwrap();
    assert!(c.config.write_files[0].append);
    // 21: every encoding decodes.
    let c = config::check_text("21", &get("21")).unwrap();
    let decoded: Vec<String> = c
        .config
        .write_files
        .iter()
        .map(|f| {
            String::from_utf8(config::decode_content(&f.content, f.encoding).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(decoded[2], "Pack my box with five dozen liquor jugs");
    assert_eq!(decoded[3], decoded[2]);
    assert_eq!(decoded[4], "Pack my box with five dozen liquor jugs");
    // 07: vlans as an integer and as a string.
    let c = config::check_text("07", &get("07")).unwrap();
    let ifs = &c.config.rancher.network.interfaces;
    assert_eq!(ifs["br0"].vlans.as_deref(), Some("100"));
    assert_eq!(ifs["eth1"].vlans.as_deref(), Some("100,200:foobar"));
    // 02: bridge is a bool in one place and a name in the other.
    let c = config::check_text("02", &get("02")).unwrap();
    let ifs = &c.config.rancher.network.interfaces;
    assert_eq!(
        ifs["br0"].bridge,
        Some(paddock::config::model::Bridge::Is(true))
    );
    assert!(
        matches!(&ifs["eth0"].bridge, Some(paddock::config::model::Bridge::MemberOf(n)) if n.as_str() == "br0")
    );
    // 27: mounts with empty fstype/options.
    let c = config::check_text("27", &get("27")).unwrap();
    assert_eq!(c.config.mounts.len(), 5);
    assert_eq!(c.config.mounts[1].fstype.as_deref(), Some("ext4"));
    assert_eq!(c.config.mounts[2].fstype, None);
    // 22: runcmd mixes [], an argv list and a shell string.
    let c = config::check_text("22", &get("22")).unwrap();
    assert_eq!(c.config.runcmd.len(), 4);
    assert_eq!(
        c.config.runcmd[0],
        paddock::config::model::Command::Argv(vec![])
    );
    // 28: dotted sysctl keys, integer values as text.
    let c = config::check_text("28", &get("28")).unwrap();
    assert_eq!(c.config.rancher.sysctl["dev.cdrom.debug"].as_str(), "1");
}

fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Root) {
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    for (abs, text) in files {
        let p = root.path(abs);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    (d, root)
}

#[test]
fn every_config_merges_and_exports_cleanly() {
    for (name, text) in corpus() {
        let (_d, root) = root_with(&[(config::CLOUD_CONFIG_FILE, &text)]);
        let loaded = sources::load(&root, LoadOptions::FULL);
        let unexpected: Vec<_> = loaded
            .problems
            .iter()
            .filter(|_| matches!(expect(&name), Expect::Valid { .. }))
            .collect();
        assert!(unexpected.is_empty(), "{name}: {unexpected:#?}");
        for opts in [LoadOptions::USER, LoadOptions::FULL] {
            let l = sources::load(&root, opts);
            let mut value = l.value.clone();
            export::hide_secrets(&mut value);
            let out = yaml::to_yaml(&value);
            let back = config::check_text("export", &out)
                .unwrap_or_else(|p| panic!("{name}: export does not parse: {p}"));
            assert_eq!(
                back.value, value,
                "{name}: export does not read back identically"
            );
            // The private export is exactly the merged config.
            let back = yaml::parse(&yaml::to_yaml(&l.value)).unwrap();
            assert_eq!(back.value, l.value, "{name}");
        }
    }
}

fn golden(name: &str, actual: &str) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/config")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&p, actual).unwrap();
    }
    let expected = fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", p.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        p.display()
    );
}

#[test]
fn golden_exports() {
    for (prefix, golden_name) in [
        ("11", "export-11-tls.yml"),
        ("21", "export-21-encodings.yml"),
        ("31", "export-31-registry-auths.yml"),
    ] {
        let (name, text) = corpus()
            .into_iter()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap();
        let (_d, root) = root_with(&[(config::CLOUD_CONFIG_FILE, &text)]);
        let mut value = sources::load(&root, LoadOptions::USER).value;
        let hidden = export::hide_secrets(&mut value);
        let out = format!(
            "# export of {name}; hidden: {}\n{}",
            hidden.join(", "),
            yaml::to_yaml(&value)
        );
        golden(golden_name, &out);
    }
}

#[test]
fn golden_merge_of_several_sources() {
    // Four corpus files as cloud-config.d drop-ins plus one as cloud-config.yml: the append
    // keys collect from all, everything else follows the order.
    let get = |prefix: &str| {
        corpus()
            .into_iter()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap()
            .1
    };
    let (_d, root) = root_with(&[
        (
            "/var/lib/rancher/conf/cloud-config.d/10-net.yml",
            &get("03"),
        ),
        (
            "/var/lib/rancher/conf/cloud-config.d/20-files.yml",
            &get("20"),
        ),
        (
            "/var/lib/rancher/conf/cloud-config.d/30-mounts.yml",
            &get("27"),
        ),
        (
            "/var/lib/rancher/conf/cloud-config.d/40-env.yml",
            &get("06"),
        ),
        (config::CLOUD_CONFIG_FILE, &get("24")),
    ]);
    let l = sources::load(&root, LoadOptions::USER);
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert_eq!(l.value["write_files"].as_array().unwrap().len(), 6);
    assert_eq!(l.value["ssh_authorized_keys"].as_array().unwrap().len(), 1);
    assert_eq!(l.value["hostname"], serde_json::json!("rancher-test"));
    golden("merge-03-20-27-06-24.yml", &yaml::to_yaml(&l.value));
}
