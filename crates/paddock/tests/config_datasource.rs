//! Datasources against local imitations: directories for configdrive/NoCloud/file, and an
//! HTTP server on 127.0.0.1 that answers the metadata paths of EC2 (IMDSv2), GCE and
//! DigitalOcean. No traffic leaves the machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock::config::datasource::{self, Datasource, Endpoints, Fetched, Vmware};
use paddock::config::sources::{self, LoadOptions};
use paddock::root::Root;

/// A tiny HTTP/1.1 server: `routes` maps "METHOD /path" to (status, body); requests are
/// recorded with their headers.
struct Server {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(
    routes: Vec<(&str, u16, &str)>,
    required_header: Option<(&'static str, &'static str)>,
) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let routes: BTreeMap<String, (u16, String)> = routes
        .into_iter()
        .map(|(k, s, b)| (k.to_string(), (s, b.to_string())))
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                headers.push(h.trim().to_ascii_lowercase());
            }
            let mut parts = first.split_whitespace();
            let key = format!(
                "{} {}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            );
            log2.lock()
                .unwrap()
                .push(format!("{key} {}", headers.join("|")));
            let ok_header = key.starts_with("PUT ")
                || required_header.is_none_or(|(k, v)| {
                    headers.iter().any(|h| {
                        *h == format!("{}: {}", k.to_ascii_lowercase(), v.to_ascii_lowercase())
                    })
                });
            let (status, body) = match routes.get(&key) {
                Some(x) if ok_header => x.clone(),
                Some(_) => (401, "unauthorized".into()),
                None => (404, "not found".into()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Server { base, log }
}

fn endpoints(base: &str) -> Endpoints {
    Endpoints {
        ec2: base.into(),
        gce: base.into(),
        digitalocean: base.into(),
        timeout: Duration::from_secs(5),
    }
}

fn one(spec: &str, root: &Root, ep: &Endpoints) -> Box<dyn Datasource> {
    datasource::from_spec(spec, root, ep)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

#[test]
fn ec2_uses_an_imdsv2_token() {
    let s = serve(
        vec![
            ("PUT /latest/api/token", 200, "TOKEN123"),
            ("GET /latest/meta-data/local-hostname", 200, "ip-10-0-0-5"),
            ("GET /latest/meta-data/public-ipv4", 200, "1.2.3.4"),
            ("GET /latest/meta-data/local-ipv4", 200, "10.0.0.5"),
            (
                "GET /latest/meta-data/public-keys/",
                200,
                "0=my-key\n1=other",
            ),
            (
                "GET /latest/meta-data/public-keys/0/openssh-key",
                200,
                "ssh-rsa AAA0 a\n",
            ),
            (
                "GET /latest/meta-data/public-keys/1/openssh-key",
                200,
                "ssh-rsa AAA1 b",
            ),
            (
                "GET /latest/user-data",
                200,
                "#cloud-config\nhostname: from-ec2\n",
            ),
        ],
        Some(("x-aws-ec2-metadata-token", "TOKEN123")),
    );
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    let f = one("ec2", &root, &endpoints(&s.base)).fetch().unwrap();
    assert_eq!(f.metadata.hostname.as_deref(), Some("ip-10-0-0-5"));
    assert_eq!(f.metadata.public_ipv4.as_deref(), Some("1.2.3.4"));
    assert_eq!(f.metadata.private_ipv4.as_deref(), Some("10.0.0.5"));
    assert_eq!(
        f.metadata.ssh_public_keys,
        vec!["ssh-rsa AAA0 a", "ssh-rsa AAA1 b"]
    );
    assert_eq!(
        f.user_data.as_deref(),
        Some(&b"#cloud-config\nhostname: from-ec2\n"[..])
    );
    let log = s.log.lock().unwrap().clone();
    assert!(
        log[0].starts_with("PUT /latest/api/token")
            && log[0].contains("x-aws-ec2-metadata-token-ttl-seconds: 21600"),
        "{log:?}"
    );
}

#[test]
fn gce_and_digitalocean() {
    let s = serve(
        vec![
            (
                "GET /computeMetadata/v1/instance/hostname",
                200,
                "vm1.c.project.internal",
            ),
            (
                "GET /computeMetadata/v1/instance/network-interfaces/0/ip",
                200,
                "10.128.0.2",
            ),
            (
                "GET /computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
                200,
                "35.1.2.3",
            ),
            (
                "GET /computeMetadata/v1/project/attributes/ssh-keys",
                200,
                "alice:ssh-rsa AAAA alice\nbob:ssh-ed25519 BBBB bob",
            ),
            (
                "GET /computeMetadata/v1/instance/attributes/user-data",
                200,
                "#!/bin/sh\necho gce\n",
            ),
        ],
        Some(("metadata-flavor", "google")),
    );
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    let f = one("gce", &root, &endpoints(&s.base)).fetch().unwrap();
    assert_eq!(
        f.metadata.hostname.as_deref(),
        Some("vm1.c.project.internal")
    );
    assert_eq!(f.metadata.public_ipv4.as_deref(), Some("35.1.2.3"));
    assert_eq!(
        f.metadata.ssh_public_keys,
        vec!["ssh-rsa AAAA alice", "ssh-ed25519 BBBB bob"]
    );
    assert!(f.user_data.unwrap().starts_with(b"#!/bin/sh"));

    let json = r##"{"hostname":"droplet","public_keys":["ssh-rsa DO"],"user_data":"#cloud-config\nrancher:\n  console: debian\n",
        "interfaces":{"public":[{"ipv4":{"ip_address":"203.0.113.5"},"ipv6":{"ip_address":"2001:db8::5"}}],"private":[{"ipv4":{"ip_address":"10.10.0.5"}}]}}"##;
    let s = serve(vec![("GET /metadata/v1.json", 200, json)], None);
    let f = one("digitalocean", &root, &endpoints(&s.base))
        .fetch()
        .unwrap();
    assert_eq!(f.metadata.hostname.as_deref(), Some("droplet"));
    assert_eq!(f.metadata.public_ipv4.as_deref(), Some("203.0.113.5"));
    assert_eq!(f.metadata.public_ipv6.as_deref(), Some("2001:db8::5"));
    assert_eq!(f.metadata.private_ipv4.as_deref(), Some("10.10.0.5"));
    assert!(f.user_data.unwrap().starts_with(b"#cloud-config"));
}

#[test]
fn url_and_cmdline_and_unavailable_servers() {
    let s = serve(
        vec![("GET /ud", 200, "#cloud-config\nhostname: from-url\n")],
        None,
    );
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    let ep = endpoints(&s.base);
    let f = one(&format!("url:{}/ud", s.base), &root, &ep)
        .fetch()
        .unwrap();
    assert!(f.user_data.unwrap().ends_with(b"from-url\n"));
    fs::create_dir_all(root.path("/proc")).unwrap();
    fs::write(
        root.path("/proc/cmdline"),
        format!("quiet cloud-config-url={}/ud\n", s.base),
    )
    .unwrap();
    let f = one("cmdline", &root, &ep).fetch().unwrap();
    assert!(f.user_data.unwrap().ends_with(b"from-url\n"));
    // A URL that is 404 is broken; a server that is not there is unavailable.
    assert!(matches!(
        one(&format!("url:{}/nope", s.base), &root, &ep).fetch(),
        Err(datasource::DatasourceError::Failed(..))
    ));
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_base = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let e = one("ec2", &root, &endpoints(&dead_base))
        .fetch()
        .unwrap_err();
    assert!(
        matches!(e, datasource::DatasourceError::Unavailable(..)),
        "{e}"
    );
    assert!(datasource::from_spec("azure", &root, &ep).is_err());
    assert!(datasource::from_spec("bogus", &root, &ep).is_err());
    assert_eq!(datasource::from_spec("*", &root, &ep).unwrap().len(), 5);
}

#[test]
fn configdrive_nocloud_file_and_fetch_first() {
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    let ep = Endpoints::default();
    let cd = root.path("/media/config-2/openstack/latest");
    fs::create_dir_all(&cd).unwrap();
    fs::write(
        cd.join("meta_data.json"),
        r#"{"hostname":"os-vm","public_keys":{"k":"ssh-rsa OS"}}"#,
    )
    .unwrap();
    fs::write(cd.join("user_data"), "#cloud-config\nrancher:\n  network:\n    interfaces:\n      eth0:\n        address: $public_ipv4/32\n").unwrap();
    let nc = root.path("/media/cidata");
    fs::create_dir_all(&nc).unwrap();
    fs::write(
        nc.join("meta-data"),
        "instance-id: i-1\nlocal-hostname: nocloud-vm\npublic-keys:\n- ssh-rsa NC\n",
    )
    .unwrap();
    fs::write(nc.join("user-data"), "#!/bin/sh\ntrue\n").unwrap();
    let f = one("nocloud", &root, &ep).fetch().unwrap();
    assert_eq!(f.metadata.hostname.as_deref(), Some("nocloud-vm"));
    assert_eq!(f.metadata.ssh_public_keys, vec!["ssh-rsa NC"]);
    assert!(matches!(
        one("file:/nope", &root, &ep).fetch(),
        Err(datasource::DatasourceError::Unavailable(..))
    ));
    let sources = vec![
        one("configdrive:/missing", &root, &ep),
        one("configdrive", &root, &ep),
        one("nocloud", &root, &ep),
    ];
    let (won, errors) = datasource::fetch_first(&sources, Duration::from_secs(1));
    let (name, mut fetched): (String, Fetched) = won.unwrap();
    assert_eq!(name, "configdrive:/media/config-2");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(fetched.metadata.hostname.as_deref(), Some("os-vm"));
    // Saved user data and metadata feed the next load: hostname and keys from metadata,
    // $public_ipv4 substituted.
    fetched.metadata.public_ipv4 = Some("198.51.100.7".into());
    datasource::save(&root, &fetched).unwrap();
    let l = sources::load(&root, LoadOptions::FULL);
    assert!(l.problems.is_empty(), "{:?}", l.problems);
    assert_eq!(l.value["hostname"], serde_json::json!("os-vm"));
    assert_eq!(
        l.value["ssh_authorized_keys"],
        serde_json::json!(["ssh-rsa OS"])
    );
    assert_eq!(
        l.value["rancher"]["network"]["interfaces"]["eth0"]["address"],
        serde_json::json!("198.51.100.7/32")
    );
    // Nothing available: fetch_first gives up at its deadline.
    let start = std::time::Instant::now();
    let (won, _) =
        datasource::fetch_first(&[one("file:/nope", &root, &ep)], Duration::from_millis(300));
    assert!(won.is_none());
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn vmware_guestinfo() {
    let mut gi = BTreeMap::new();
    gi.insert(
        "cloud-init.config.data".to_string(),
        "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogdm13Cg==".to_string(),
    );
    gi.insert("cloud-init.data.encoding".to_string(), "base64".to_string());
    gi.insert("hostname".to_string(), "vmw".to_string());
    let f = Vmware {
        guestinfo: Box::new(gi),
    }
    .fetch()
    .unwrap();
    assert_eq!(
        f.user_data.as_deref(),
        Some(&b"#cloud-config\nhostname: vmw\n"[..])
    );
    assert_eq!(f.metadata.hostname.as_deref(), Some("vmw"));
    let e = Vmware {
        guestinfo: Box::new(BTreeMap::new()),
    }
    .fetch()
    .unwrap_err();
    assert!(
        matches!(e, datasource::DatasourceError::Unavailable(..)),
        "{e}"
    );
}
