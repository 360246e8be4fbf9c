//! `netconf`: the network service. It applies `rancher.network` to the machine's links and then
//! supervises one DHCP client per DHCP interface until it is stopped.
//!
//! The plan ([`plan`]) is pure: the config and the links in, the steps out, so the matching
//! rules are unit-tested without a network. [`run`] carries the steps out with busybox `ip` and
//! `udhcpc` (the network image's tools) and stays as the container's PID 1.
//!
//! Matching, as RancherOS did it: an interface entry's pattern is its `match:` value or else its
//! key; a pattern is a name, a glob (`eth*`) or `mac=` followed by a MAC glob. A link takes the
//! entry whose pattern is exactly its name, else the first (in key order) whose glob or MAC
//! matches. Links that no `rancher.network.interfaces` entry matches take the entry of
//! `rancher.defaults.network.interfaces` (Paddock's default: `eth*` with DHCP); links that
//! match nothing are left as they are.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::config::model::{Bridge, Interface, Network};

/// The DHCP client's event script in the network image.
pub const DHCP_SCRIPT: &str = "/usr/share/udhcpc/default.script";

/// A network link as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An `ip` command (arguments after `ip`); `must` steps are reported when they fail.
    Ip(Vec<String>),
    /// A user command (`pre_up`, `post_up`, `pre_cmds`, `post_cmds`), run by `sh -c`.
    Shell(String),
    /// A DHCP client kept running on the interface.
    Dhcp { iface: String, args: Vec<String> },
    /// A setting Paddock does not apply yet.
    Unsupported { iface: String, what: &'static str },
}

/// `*` and `?` globs, the rest literal.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

fn pattern<'a>(key: &'a str, iface: &'a Interface) -> &'a str {
    iface.match_.as_ref().map_or(key, |m| m.as_str())
}

fn matches(pattern: &str, link: &Link) -> bool {
    match pattern.strip_prefix("mac=") {
        Some(mac) => glob(&mac.to_ascii_lowercase(), &link.mac.to_ascii_lowercase()),
        None => glob(pattern, &link.name),
    }
}

/// The entry of `interfaces` that configures `link`, with its key.
pub fn select<'a>(
    interfaces: &'a BTreeMap<String, Interface>,
    link: &Link,
) -> Option<(&'a str, &'a Interface)> {
    interfaces
        .iter()
        .find(|(k, i)| pattern(k, i) == link.name)
        .or_else(|| {
            interfaces
                .iter()
                .find(|(k, i)| matches(pattern(k, i), link))
        })
        .map(|(k, i)| (k.as_str(), i))
}

fn ip(args: &[&str]) -> Step {
    Step::Ip(args.iter().map(|s| s.to_string()).collect())
}

/// What applying `net` (with `defaults` for unmatched links) to `links` takes, in order.
pub fn plan(net: &Network, defaults: &Network, links: &[Link]) -> Vec<Step> {
    let mut steps: Vec<Step> = net.pre_cmds.iter().cloned().map(Step::Shell).collect();
    steps.push(ip(&["link", "set", "dev", "lo", "up"]));
    let timeout = net
        .dhcp_timeout
        .as_ref()
        .or(defaults.dhcp_timeout.as_ref())
        .map_or(10, |s| s.0.max(1));
    for link in links.iter().filter(|l| l.name != "lo") {
        let Some((_, c)) =
            select(&net.interfaces, link).or_else(|| select(&defaults.interfaces, link))
        else {
            continue;
        };
        let name = link.name.as_str();
        steps.extend(c.pre_up.iter().cloned().map(Step::Shell));
        if let Some(mtu) = c.mtu {
            steps.push(ip(&["link", "set", "dev", name, "mtu", &mtu.to_string()]));
        }
        steps.push(ip(&["link", "set", "dev", name, "up"]));
        let addresses: Vec<&str> = c
            .address
            .iter()
            .chain(&c.addresses)
            .map(|a| a.as_str())
            .collect();
        if !addresses.is_empty() {
            // Restarting the service re-applies the config: old static IPv4 addresses go.
            steps.push(ip(&["-4", "addr", "flush", "dev", name]));
        }
        for a in addresses {
            let family = if a.contains(':') { "-6" } else { "-4" };
            steps.push(ip(&[family, "addr", "add", a, "dev", name]));
        }
        for (family, gw) in [("-4", &c.gateway), ("-6", &c.gateway_ipv6)] {
            if let Some(gw) = gw {
                let route = [
                    "route",
                    "replace",
                    "default",
                    "via",
                    gw.as_str(),
                    "dev",
                    name,
                ];
                steps.push(ip(&[&[family][..], &route].concat()));
            }
        }
        if c.dhcp == Some(true) {
            let mut args: Vec<String> = [
                "-f",
                "-i",
                name,
                "-s",
                DHCP_SCRIPT,
                "-t",
                &timeout.div_ceil(2).to_string(),
                "-T",
                "2",
                "-A",
                "5",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(extra) = &c.dhcp_args {
                args.extend(extra.as_str().split_whitespace().map(str::to_owned));
            }
            steps.push(Step::Dhcp {
                iface: name.to_owned(),
                args,
            });
        }
        let unsupported = [
            (c.bond.is_some() || !c.bond_opts.is_empty(), "bond"),
            (
                c.bridge.as_ref().is_some_and(|b| *b != Bridge::Is(false)),
                "bridge",
            ),
            (c.vlans.is_some(), "vlans"),
            (c.ipv4ll == Some(true), "ipv4ll"),
            (c.wifi_network.is_some(), "wifi_network"),
        ];
        for (_, what) in unsupported.into_iter().filter(|(set, _)| *set) {
            steps.push(Step::Unsupported {
                iface: name.to_owned(),
                what,
            });
        }
        steps.extend(c.post_up.iter().cloned().map(Step::Shell));
    }
    steps.extend(net.post_cmds.iter().cloned().map(Step::Shell));
    steps
}

/// The links under `sys` (normally `/sys/class/net`), sorted by name.
pub fn links(sys: &Path) -> Vec<Link> {
    let mut out: Vec<Link> = std::fs::read_dir(sys)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| Link {
            name: e.file_name().to_string_lossy().into_owned(),
            mac: std::fs::read_to_string(e.path().join("address"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn say(msg: impl AsRef<str>) {
    eprintln!("netconf: {}", msg.as_ref());
}

struct DhcpClient {
    iface: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl DhcpClient {
    fn spawn(&mut self) {
        let mut cmd = Command::new("udhcpc");
        paddock_sys::unblock_signals_on_exec(&mut cmd);
        cmd.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match cmd.spawn() {
            Ok(c) => self.child = Some(c),
            Err(e) => say(format!("{}: starting udhcpc: {e}", self.iface)),
        }
    }
}

/// Applies the config and supervises the DHCP clients until SIGTERM or SIGINT.
/// `user_dns` keeps the DHCP clients from rewriting /etc/resolv.conf.
pub fn run(net: &Network, defaults: &Network, user_dns: bool) -> i32 {
    // Signals are taken synchronously (children start with a clean mask: std resets it).
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    let links = links(Path::new("/sys/class/net"));
    say(format!(
        "links: {}",
        links
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut clients = vec![];
    for step in plan(net, defaults, &links) {
        match step {
            Step::Ip(args) => match paddock_sys::unblock_signals_on_exec(&mut Command::new("ip"))
                .args(&args)
                .stdin(Stdio::null())
                .status()
            {
                Ok(st) if st.success() => say(format!("ip {}", args.join(" "))),
                Ok(st) => say(format!("ip {}: {st}", args.join(" "))),
                Err(e) => say(format!("ip {}: {e}", args.join(" "))),
            },
            Step::Shell(cmd) => {
                match paddock_sys::unblock_signals_on_exec(&mut Command::new("sh"))
                    .args(["-c", &cmd])
                    .stdin(Stdio::null())
                    .status()
                {
                    Ok(st) if st.success() => say(format!("ran {cmd:?}")),
                    Ok(st) => say(format!("{cmd:?}: {st}")),
                    Err(e) => say(format!("{cmd:?}: {e}")),
                }
            }
            Step::Dhcp { iface, args } => {
                say(format!("{iface}: dhcp"));
                let mut env = vec![];
                if user_dns {
                    env.push(("NO_RESOLV_CONF".to_owned(), "1".to_owned()));
                }
                let mut c = DhcpClient {
                    iface,
                    args,
                    env,
                    child: None,
                };
                c.spawn();
                clients.push(c);
            }
            Step::Unsupported { iface, what } => {
                say(format!("{iface}: {what} is not supported yet; ignored"))
            }
        }
    }
    say("configured");
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    let pid = match st {
                        WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _) => p,
                        _ => break,
                    };
                    if let Some(c) = clients
                        .iter_mut()
                        .find(|c| c.child.as_ref().map(|ch| ch.id() as i32) == Some(pid.as_raw()))
                    {
                        c.child = None;
                        say(format!("{}: udhcpc ended ({st:?}); restarting it", c.iface));
                        std::thread::sleep(Duration::from_secs(1));
                        c.spawn();
                    }
                }
            }
            Ok(Signal::SIGHUP) => {}
            Ok(_) | Err(_) => break,
        }
    }
    for c in &mut clients {
        if let Some(ch) = &mut c.child {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(ch.id() as i32), Signal::SIGTERM);
            let _ = ch.wait();
        }
    }
    say("stopped");
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn network(yaml: &str) -> Network {
        let v = crate::config::yaml::parse(yaml).unwrap().value;
        crate::config::de::decode::<Network>(&v).unwrap().value
    }

    fn link(name: &str, mac: &str) -> Link {
        Link {
            name: name.into(),
            mac: mac.into(),
        }
    }

    fn ips(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Ip(a) => Some(a.join(" ")),
                _ => None,
            })
            .collect()
    }

    fn dhcp(steps: &[Step]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Dhcp { iface, .. } => Some(iface.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn globs() {
        assert!(glob("eth*", "eth0"));
        assert!(glob("eth*", "eth"));
        assert!(!glob("eth*", "veth0"));
        assert!(glob("e?h1", "eth1"));
        assert!(glob("*", "anything"));
        assert!(!glob("eth0", "eth01"));
    }

    #[test]
    fn exact_name_beats_glob_and_defaults_cover_the_rest() {
        let defaults = network("interfaces: {'eth*': {dhcp: true}}");
        let net = network(
            "interfaces:\n  'e*': {mtu: 1400}\n  eth1: {address: 10.0.3.50/24, gateway: 10.0.3.2, mtu: 1500, dhcp: false}\n",
        );
        let links = [
            link("lo", "00:00:00:00:00:00"),
            link("eth0", "52:54:00:12:34:56"),
            link("eth1", "52:54:00:12:34:57"),
            link("wlan0", "52:54:00:12:34:58"),
        ];
        let steps = plan(&net, &defaults, &links);
        let ips = ips(&steps);
        // eth0 takes the user's glob (not the default's DHCP), eth1 its exact entry.
        assert!(
            ips.contains(&"link set dev eth0 mtu 1400".to_owned()),
            "{ips:?}"
        );
        assert!(ips.contains(&"-4 addr add 10.0.3.50/24 dev eth1".to_owned()));
        assert!(ips.contains(&"-4 route replace default via 10.0.3.2 dev eth1".to_owned()));
        assert!(ips.contains(&"link set dev eth1 mtu 1500".to_owned()));
        assert!(!ips.iter().any(|s| s.contains("wlan0")), "{ips:?}");
        assert!(dhcp(&steps).is_empty());
        // The flush comes before the adds.
        let flush = ips
            .iter()
            .position(|s| s == "-4 addr flush dev eth1")
            .unwrap();
        let add = ips
            .iter()
            .position(|s| s.contains("addr add 10.0.3.50"))
            .unwrap();
        assert!(flush < add);
    }

    #[test]
    fn default_dhcp_on_every_eth_and_user_dhcp_args() {
        let defaults = network("dhcp_timeout: 10\ninterfaces: {'eth*': {dhcp: true}}");
        let net = network("interfaces: {eth2: {dhcp: true, dhcp_args: '-x hostname:h1'}}");
        let links = [
            link("eth0", ""),
            link("eth1", ""),
            link("eth2", ""),
            link("docker0", ""),
        ];
        let steps = plan(&net, &defaults, &links);
        assert_eq!(dhcp(&steps), ["eth0", "eth1", "eth2"]);
        let eth2 = steps
            .iter()
            .find_map(|s| match s {
                Step::Dhcp { iface, args } if iface == "eth2" => Some(args.join(" ")),
                _ => None,
            })
            .unwrap();
        assert!(
            eth2.starts_with("-f -i eth2 -s /usr/share/udhcpc/default.script -t 5"),
            "{eth2}"
        );
        assert!(eth2.ends_with("-x hostname:h1"), "{eth2}");
    }

    #[test]
    fn mac_match_ipv6_hooks_and_unsupported() {
        let net = network(
            "pre_cmds: [echo pre]\npost_cmds: [echo post]\ninterfaces:\n  lan:\n    match: mac=52:54:00:AB:*\n    addresses: [192.168.9.2/24, 'fd00::2/64']\n    gateway_ipv6: 'fd00::1'\n    pre_up: [echo up1]\n    post_up: [echo up2]\n    vlans: '100'\n",
        );
        let links = [
            link("ens3", "52:54:00:ab:cd:ef"),
            link("ens4", "52:54:00:00:00:01"),
        ];
        let steps = plan(&net, &Network::default(), &links);
        assert_eq!(steps.first(), Some(&Step::Shell("echo pre".into())));
        assert_eq!(steps.last(), Some(&Step::Shell("echo post".into())));
        let ips = ips(&steps);
        assert!(
            ips.contains(&"-6 addr add fd00::2/64 dev ens3".to_owned()),
            "{ips:?}"
        );
        assert!(ips.contains(&"-4 addr add 192.168.9.2/24 dev ens3".to_owned()));
        assert!(ips.contains(&"-6 route replace default via fd00::1 dev ens3".to_owned()));
        assert!(!ips.iter().any(|s| s.contains("ens4")));
        assert!(steps.contains(&Step::Unsupported {
            iface: "ens3".into(),
            what: "vlans"
        }));
        let up1 = steps
            .iter()
            .position(|s| *s == Step::Shell("echo up1".into()));
        let link_up = steps
            .iter()
            .position(|s| *s == ip(&["link", "set", "dev", "ens3", "up"]));
        let up2 = steps
            .iter()
            .position(|s| *s == Step::Shell("echo up2".into()));
        assert!(up1 < link_up && link_up < up2);
    }

    #[test]
    fn links_are_read_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for (n, m) in [
            ("eth1", "52:54:00:00:00:02\n"),
            ("eth0", "52:54:00:00:00:01\n"),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("address"), m).unwrap();
        }
        assert_eq!(
            links(d.path()),
            [
                link("eth0", "52:54:00:00:00:01"),
                link("eth1", "52:54:00:00:00:02")
            ]
        );
    }
}
