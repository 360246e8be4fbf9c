//! `ros config ...` end to end: the built binary against a temporary root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const FILE: &str = "var/lib/rancher/conf/cloud-config.yml";

fn ros(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ros"));
    c.arg("--root").arg(root).args(args).env_remove("ROS_ROOT");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn set_then_get_and_yaml_values() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let o = ros(
        r,
        &[
            "config",
            "set",
            "rancher.modules",
            "[nbd nbds_max=1024, nfs]",
        ],
        None,
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = ros(
        r,
        &[
            "config",
            "set",
            "rancher.network.interfaces.eth0.dhcp",
            "yes",
        ],
        None,
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        out(&ros(
            r,
            &["config", "get", "rancher.network.interfaces.eth0.dhcp"],
            None
        )),
        "true\n"
    );
    assert_eq!(
        out(&ros(r, &["config", "get", "rancher.modules"], None)),
        "- nbd nbds_max=1024\n- nfs\n"
    );
    assert_eq!(
        out(&ros(r, &["config", "get", "rancher.modules.1"], None)),
        "nfs\n"
    );
    // Defaults are part of the merged config; unset keys print nothing.
    assert_eq!(
        out(&ros(
            r,
            &["config", "get", "rancher.shutdown_timeout"],
            None
        )),
        "60\n"
    );
    assert_eq!(
        out(&ros(r, &["c", "get", "rancher.sysctl.fs.file-max"], None)),
        "1000000000\n"
    );
    let o = ros(r, &["config", "get", "rancher.nothing.here"], None);
    assert!(o.status.success());
    assert_eq!(out(&o), "");
    let text = fs::read_to_string(r.join(FILE)).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert!(text.contains("dhcp: true"), "{text}");
}

#[test]
fn rejected_set_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    assert!(
        ros(r, &["config", "set", "hostname", "good-name"], None)
            .status
            .success()
    );
    let before = fs::read(r.join(FILE)).unwrap();
    for (key, value, why) in [
        ("hostname", "bad_name!", "hostname"),
        (
            "rancher.network.interfaces.eth0.mtu",
            "big",
            "expected an integer",
        ),
        ("rancher.netwrok", "{}", "unknown key rancher.netwrok"),
        ("hostname.sub", "x", "is a string"),
        ("rancher.console", "\"a\\nb\"", "single line"),
    ] {
        let o = ros(r, &["config", "set", key, value], None);
        assert!(!o.status.success(), "{key}={value} was accepted");
        assert!(err(&o).contains(why), "{key}: {}", err(&o));
        assert_eq!(
            fs::read(r.join(FILE)).unwrap(),
            before,
            "{key} changed the file"
        );
    }
}

#[test]
fn merge_appends_the_append_keys_and_refuses_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let o = ros(
        r,
        &["config", "merge"],
        Some("ssh_authorized_keys: [k1]\nrancher:\n  modules: [a]\n"),
    );
    assert!(o.status.success(), "{}", err(&o));
    let input = d.path().join("in.yml");
    fs::write(
        &input,
        "# cloud-config\nssh_authorized_keys: [k2]\nrancher:\n  modules: [b]\n",
    )
    .unwrap();
    let o = ros(r, &["config", "merge", "-i", input.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        out(&ros(r, &["config", "get", "ssh_authorized_keys"], None)),
        "- k1\n- k2\n"
    );
    assert_eq!(
        out(&ros(r, &["config", "get", "rancher.modules"], None)),
        "- b\n"
    );
    let before = fs::read(r.join(FILE)).unwrap();
    let o = ros(
        r,
        &["config", "merge"],
        Some("rancher:\n  ssh:\n    port: [1]\nbad_key: {}\n"),
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains("<stdin>:3: rancher.ssh.port: expected an integer"),
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains("<stdin>:4: warning: bad_key"),
        "{}",
        err(&o)
    );
    let o = ros(r, &["config", "merge"], Some("a: [\n"));
    assert!(!o.status.success());
    assert!(err(&o).contains("not valid YAML"), "{}", err(&o));
    assert_eq!(fs::read(r.join(FILE)).unwrap(), before);
}

#[test]
fn export_hides_secrets_unless_private() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let o = ros(
        r,
        &["config", "merge"],
        Some(
            "rancher:\n  password: hunter2\n  registry_auths:\n    reg.example:\n      auth: c2VjcmV0\n  ssh:\n    keys:\n      rsa: PRIVATEKEY\n",
        ),
    );
    assert!(o.status.success(), "{}", err(&o));
    let public = out(&ros(r, &["config", "export"], None));
    for s in ["hunter2", "c2VjcmV0", "PRIVATEKEY"] {
        assert!(!public.contains(s), "{s} leaked:\n{public}");
    }
    assert!(public.contains("reg.example"), "{public}");
    assert!(
        !public.contains("shutdown_timeout"),
        "defaults without --full:\n{public}"
    );
    let private = out(&ros(r, &["config", "export", "--private", "--full"], None));
    for s in ["hunter2", "c2VjcmV0", "PRIVATEKEY", "shutdown_timeout: 60"] {
        assert!(private.contains(s), "{s} missing:\n{private}");
    }
    let file = d.path().join("out.yml");
    assert!(
        ros(r, &["config", "export", "-o", file.to_str().unwrap()], None)
            .status
            .success()
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), public);
}

#[test]
fn validate_lists_every_problem() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let o = ros(
        r,
        &["config", "validate"],
        Some("#cloud-config\nhostname: ok\n"),
    );
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(out(&o), "");
    let o = ros(
        r,
        &["config", "validate"],
        Some("hostname: -bad\nrancher:\n  ssh:\n    port: x\n  typo: 1\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<String> = out(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("<stdin>:1: hostname: "), "{lines:#?}");
    assert!(
        lines[1].starts_with("<stdin>:4: rancher.ssh.port: "),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("<stdin>:5: warning: rancher.typo: unknown key"),
        "{lines:#?}"
    );
    let f = d.path().join("x.yml");
    fs::write(&f, "rancher: []\n").unwrap();
    let o = ros(r, &["config", "validate", "-i", f.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("x.yml:1: rancher: expected a map, found a list"),
        "{}",
        out(&o)
    );
}

#[test]
fn images_lists_service_images() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let f = d.path().join("s.yml");
    fs::write(&f, "rancher:\n  services:\n    a: {image: 'busybox:1'}\n    b: {image: alpine}\n  bootstrap:\n    u: {image: alpine}\n").unwrap();
    let o = ros(r, &["config", "images", "-i", f.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "alpine\nbusybox:1\n");
    assert!(
        ros(r, &["config", "merge", "-i", f.to_str().unwrap()], None)
            .status
            .success()
    );
    assert_eq!(
        out(&ros(r, &["config", "images"], None)),
        "alpine\nbusybox:1\n"
    );
}

#[test]
fn closed_stdout_is_not_an_error() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_ros"));
    c.arg("--root")
        .arg(d.path())
        .args(["config", "export", "--full", "--private"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("panicked"), "{}", err(&o));
}
