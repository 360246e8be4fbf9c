//! The start order of a set of services.
//!
//! Dependencies, explicit and implicit (RancherOS `pkg/docker/service.go: DependentServices`,
//! `service_factory.go`):
//!
//! - `io.rancher.os.after: a,b` (S after a and b) and `io.rancher.os.before: c` (c after S);
//!   `cloud-init` means `cloud-init-execute`. As in RancherOS these are optional: a name that
//!   is not in the set is ignored (with a note), since e.g. `before: console` must not break a
//!   set without a console.
//! - `depends_on` and `links`: required. A name that is not a service is a *missing
//!   dependency*: the service is blocked.
//! - `volumes_from`, and `container:X` / `service:X` in `net`/`network_mode`, `pid`, `ipc`:
//!   an edge when X is a service (by name or `container_name`). A `container:X` or
//!   `volumes_from` naming no service is taken to be an existing container (a note, no edge),
//!   as compose does; `service:X` naming no service is missing.
//! - Implicit: `syslog` when `log_driver: syslog`; `docker` when the scope is not `system`;
//!   otherwise `network` when the service's image is not present locally (the caller says
//!   which, [`GraphOptions::missing_images`]). Each only when that service is in the set and
//!   is not the service itself.
//!
//! Broken parts never hide the rest: services in a dependency cycle, services with a missing
//! dependency, and every service that depends (transitively) on one of those are *blocked*,
//! reported with the reason, and not started. Every other service gets a place in the order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Warning;
use super::def::ServiceDef;
use super::labels::{RosLabels, Scope};

/// Why one service depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DepKind {
    /// `io.rancher.os.after` on the dependent.
    After,
    /// `io.rancher.os.before` on the dependency.
    Before,
    DependsOn,
    Link,
    VolumesFrom,
    /// `container:X` in net/pid/ipc.
    Namespace,
    /// Implicit: `log_driver: syslog`.
    Syslog,
    /// Implicit: user-scope services need the user Docker.
    UserDocker,
    /// Implicit: the image must be pulled.
    Network,
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DepKind::After => "io.rancher.os.after",
            DepKind::Before => "io.rancher.os.before",
            DepKind::DependsOn => "depends_on",
            DepKind::Link => "links",
            DepKind::VolumesFrom => "volumes_from",
            DepKind::Namespace => "container namespace",
            DepKind::Syslog => "log_driver syslog",
            DepKind::UserDocker => "user scope",
            DepKind::Network => "image to pull",
        })
    }
}

/// Facts about the machine the graph needs.
#[derive(Debug, Clone, Default)]
pub struct GraphOptions {
    /// Services whose image is not present in their engine (they wait for `network`).
    pub missing_images: BTreeSet<String>,
}

/// A required dependency that is not in the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingDep {
    pub service: String,
    pub dependency: String,
    pub kind: DepKind,
}

/// The result of ordering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Services that can start together; every service of a wave depends only on earlier
    /// waves. Sorted by name within a wave.
    pub waves: Vec<Vec<String>>,
    /// Services that will not start, with the reason.
    pub blocked: BTreeMap<String, String>,
    /// Each cycle's services, sorted.
    pub cycles: Vec<Vec<String>>,
    pub missing: Vec<MissingDep>,
    /// Ignored optional dependencies and external containers.
    pub notes: Vec<Warning>,
}

/// The dependency graph of a service set.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// service -> (dependency -> first reason seen).
    deps: BTreeMap<String, BTreeMap<String, DepKind>>,
    order: Order,
}

fn container_ref(v: &str) -> Option<(&str, bool)> {
    if let Some(x) = v.strip_prefix("container:") {
        Some((x, false))
    } else {
        v.strip_prefix("service:").map(|x| (x, true))
    }
}

impl Graph {
    /// Builds the graph and the order of `services`.
    pub fn build(services: &BTreeMap<String, ServiceDef>, opts: &GraphOptions) -> Graph {
        let mut g = Graph::default();
        let mut missing: Vec<MissingDep> = Vec::new();
        let mut notes = Vec::new();
        // container name -> service
        let by_container: BTreeMap<&str, &str> = services
            .values()
            .map(|d| (d.container_name(), d.name.as_str()))
            .collect();
        let resolve = |n: &str| -> Option<String> {
            if services.contains_key(n) {
                Some(n.to_string())
            } else {
                by_container.get(n).map(|s| s.to_string())
            }
        };
        for name in services.keys() {
            g.deps.insert(name.clone(), BTreeMap::new());
        }
        let add = |g: &mut Graph, from: &str, to: &str, kind: DepKind| {
            if from != to
                && let Some(d) = g.deps.get_mut(from)
            {
                d.entry(to.to_string()).or_insert(kind);
            }
        };
        for (name, def) in services {
            let labels = RosLabels::from_labels(&def.labels);
            for a in &labels.after {
                match resolve(a) {
                    Some(a) => add(&mut g, name, &a, DepKind::After),
                    None => notes.push(Warning::new(
                        name.as_str(),
                        format!("io.rancher.os.after: {a} is not a service here, ignored"),
                    )),
                }
            }
            for b in &labels.before {
                match resolve(b) {
                    Some(b) => add(&mut g, &b, name, DepKind::Before),
                    None => notes.push(Warning::new(
                        name.as_str(),
                        format!("io.rancher.os.before: {b} is not a service here, ignored"),
                    )),
                }
            }
            let required = def
                .depends_on
                .iter()
                .map(|d| (d.as_str(), DepKind::DependsOn))
                .chain(
                    def.links
                        .iter()
                        .map(|l| (l.service.as_str(), DepKind::Link)),
                );
            for (d, kind) in required {
                match resolve(d) {
                    Some(d) => add(&mut g, name, &d, kind),
                    None => missing.push(MissingDep {
                        service: name.clone(),
                        dependency: d.to_string(),
                        kind,
                    }),
                }
            }
            for vf in &def.volumes_from {
                let base = container_ref(vf).map(|(x, _)| x).unwrap_or(vf);
                let base = base
                    .strip_suffix(":ro")
                    .or_else(|| base.strip_suffix(":rw"))
                    .unwrap_or(base);
                match resolve(base) {
                    Some(d) => add(&mut g, name, &d, DepKind::VolumesFrom),
                    None => notes.push(Warning::new(
                        name.as_str(),
                        format!(
                            "volumes_from: {base} is not a service here, taken as an existing container"
                        ),
                    )),
                }
            }
            for (key, v) in [
                ("network_mode", &def.network_mode),
                ("pid", &def.pid),
                ("ipc", &def.ipc),
            ] {
                let Some((x, is_service)) = v.as_deref().and_then(container_ref) else {
                    continue;
                };
                match resolve(x) {
                    Some(d) => add(&mut g, name, &d, DepKind::Namespace),
                    None if is_service => missing.push(MissingDep {
                        service: name.clone(),
                        dependency: x.to_string(),
                        kind: DepKind::Namespace,
                    }),
                    None => notes.push(Warning::new(
                        name.as_str(),
                        format!("{key}: {x} is not a service here, taken as an existing container"),
                    )),
                }
            }
            if def.log_driver.as_deref() == Some("syslog") && services.contains_key("syslog") {
                add(&mut g, name, "syslog", DepKind::Syslog);
            }
            if labels.scope != Scope::System {
                if services.contains_key("docker") {
                    add(&mut g, name, "docker", DepKind::UserDocker);
                }
            } else if opts.missing_images.contains(name) && services.contains_key("network") {
                add(&mut g, name, "network", DepKind::Network);
            }
        }
        g.order = g.compute(missing, notes);
        g
    }

    fn compute(&self, missing: Vec<MissingDep>, notes: Vec<Warning>) -> Order {
        let mut order = Order {
            missing,
            notes,
            ..Order::default()
        };
        for m in &order.missing {
            order.blocked.entry(m.service.clone()).or_insert_with(|| {
                format!(
                    "needs {} ({}), which is not a service",
                    m.dependency, m.kind
                )
            });
        }
        self.propagate(&mut order.blocked);
        // Kahn over what is not blocked.
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut left: BTreeSet<String> = self
            .deps
            .keys()
            .filter(|s| !order.blocked.contains_key(*s))
            .cloned()
            .collect();
        loop {
            let wave: Vec<String> = left
                .iter()
                .filter(|s| {
                    self.deps
                        .get(*s)
                        .is_some_and(|d| d.keys().all(|d| done.contains(d)))
                })
                .cloned()
                .collect();
            if wave.is_empty() {
                break;
            }
            for s in &wave {
                left.remove(s);
                done.insert(s.clone());
            }
            order.waves.push(wave);
        }
        if !left.is_empty() {
            // What is left is in a cycle or depends on one (or on something blocked, which
            // propagate() already caught). Strongly connected parts by mutual reachability.
            let reach: BTreeMap<&String, BTreeSet<String>> =
                left.iter().map(|s| (s, self.reachable(s, &left))).collect();
            let mut seen = BTreeSet::new();
            for s in &left {
                if seen.contains(s) || !reach.get(s).is_some_and(|r| r.contains(s)) {
                    continue;
                }
                let cycle: Vec<String> = left
                    .iter()
                    .filter(|t| {
                        reach.get(s).is_some_and(|r| r.contains(*t))
                            && reach.get(t).is_some_and(|r| r.contains(s))
                    })
                    .cloned()
                    .collect();
                for t in &cycle {
                    seen.insert(t.clone());
                    order.blocked.insert(
                        t.clone(),
                        format!("in a dependency cycle: {}", cycle.join(" -> ")),
                    );
                }
                order.cycles.push(cycle);
            }
            self.propagate(&mut order.blocked);
        }
        order
    }

    /// Services reachable from `s` through dependencies, within `within`.
    fn reachable(&self, s: &str, within: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<&str> = vec![s];
        while let Some(x) = stack.pop() {
            for d in self.deps.get(x).into_iter().flat_map(|d| d.keys()) {
                if within.contains(d) && out.insert(d.clone()) {
                    stack.push(d);
                }
            }
        }
        out
    }

    /// Marks every service depending on a blocked one as blocked.
    fn propagate(&self, blocked: &mut BTreeMap<String, String>) {
        loop {
            let mut new = Vec::new();
            for (s, deps) in &self.deps {
                if blocked.contains_key(s) {
                    continue;
                }
                if let Some(d) = deps.keys().find(|d| blocked.contains_key(*d)) {
                    new.push((s.clone(), format!("depends on {d}, which is blocked")));
                }
            }
            if new.is_empty() {
                return;
            }
            blocked.extend(new);
        }
    }

    /// The order computed by [`Graph::build`].
    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The direct dependencies of `service`, with why.
    pub fn dependencies(&self, service: &str) -> Vec<(&str, DepKind)> {
        self.deps
            .get(service)
            .map(|d| d.iter().map(|(k, v)| (k.as_str(), *v)).collect())
            .unwrap_or_default()
    }

    /// The services that depend directly on `service`.
    pub fn dependents(&self, service: &str) -> Vec<&str> {
        self.deps
            .iter()
            .filter(|(_, d)| d.contains_key(service))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// A ready-set scheduler over the services that are not blocked.
    pub fn scheduler(&self) -> Scheduler {
        let blocked = &self.order.blocked;
        let pending = self
            .deps
            .iter()
            .filter(|(s, _)| !blocked.contains_key(*s))
            .map(|(s, d)| (s.clone(), d.keys().cloned().collect()))
            .collect();
        Scheduler {
            pending,
            dependents: self
                .deps
                .keys()
                .map(|s| {
                    (
                        s.clone(),
                        self.dependents(s).into_iter().map(str::to_string).collect(),
                    )
                })
                .collect(),
            in_flight: BTreeSet::new(),
            skipped: blocked.clone(),
        }
    }
}

/// Hands out services as their dependencies complete, so independent services run in
/// parallel. A failed service skips everything that depends on it, transitively.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Not yet handed out: service -> dependencies not yet completed.
    pending: BTreeMap<String, BTreeSet<String>>,
    dependents: BTreeMap<String, Vec<String>>,
    in_flight: BTreeSet<String>,
    skipped: BTreeMap<String, String>,
}

impl Scheduler {
    /// Services that may start now; each is handed out once.
    pub fn ready(&mut self) -> Vec<String> {
        let ready: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        for s in &ready {
            self.pending.remove(s);
            self.in_flight.insert(s.clone());
        }
        ready
    }

    /// `service` is up (or exited 0 for a one-shot): its dependents may go on.
    pub fn complete(&mut self, service: &str) {
        self.in_flight.remove(service);
        for d in self.dependents.get(service).into_iter().flatten() {
            if let Some(p) = self.pending.get_mut(d) {
                p.remove(service);
            }
        }
    }

    /// `service` failed: every pending service depending on it (transitively) is skipped.
    /// Returns the newly skipped services.
    pub fn fail(&mut self, service: &str) -> Vec<String> {
        self.in_flight.remove(service);
        let mut out = Vec::new();
        let mut stack = vec![(service.to_string(), service.to_string())];
        while let Some((failed, root)) = stack.pop() {
            for d in self.dependents.get(&failed).cloned().unwrap_or_default() {
                if self.pending.remove(&d).is_some() {
                    let why = if failed == root {
                        format!("depends on {failed}, which failed")
                    } else {
                        format!("depends on {failed}, skipped because {root} failed")
                    };
                    self.skipped.insert(d.clone(), why);
                    out.push(d.clone());
                    stack.push((d, root.clone()));
                }
            }
        }
        out
    }

    /// Nothing pending and nothing running.
    pub fn is_finished(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// Services handed out and not completed or failed yet.
    pub fn in_flight(&self) -> &BTreeSet<String> {
        &self.in_flight
    }

    /// Blocked and skipped services with the reason.
    pub fn skipped(&self) -> &BTreeMap<String, String> {
        &self.skipped
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn set(v: Value) -> BTreeMap<String, ServiceDef> {
        let Value::Object(m) = v else { panic!() };
        m.iter()
            .map(|(k, v)| {
                let Value::Object(s) = v else { panic!() };
                (k.clone(), ServiceDef::from_map(k, k, s).unwrap().0)
            })
            .collect()
    }

    fn sys(extra: Value) -> Value {
        let mut m = json!({"image": "x", "labels": {"io.rancher.os.scope": "system"}});
        if let (Value::Object(m), Value::Object(e)) = (&mut m, extra) {
            for (k, v) in e {
                if k == "labels" {
                    if let (Some(Value::Object(l)), Value::Object(el)) = (m.get_mut("labels"), v) {
                        l.extend(el);
                    }
                } else {
                    m.insert(k, v);
                }
            }
        }
        m
    }

    #[test]
    fn rancheros_core_order() {
        let s = set(json!({
            "udev-cold": sys(json!({"labels": {"io.rancher.os.detach": "false"}})),
            "udev": sys(json!({"labels": {"io.rancher.os.after": "udev-cold"}})),
            "syslog": sys(json!({})),
            "network": sys(json!({"labels": {"io.rancher.os.after": "udev"}})),
            "ntp": sys(json!({"labels": {"io.rancher.os.after": "network"}})),
            "cloud-init-execute": sys(json!({"labels": {"io.rancher.os.after": "ntp"}})),
            "console": sys(json!({"labels": {"io.rancher.os.after": "cloud-init"}, "log_driver": "syslog"})),
            "all-volumes": sys(json!({})),
            "docker": sys(json!({"labels": {"io.rancher.os.after": "console"}, "volumes_from": ["all-volumes"]})),
            "zfs": sys(json!({"labels": {"io.rancher.os.after": "console", "io.rancher.os.before": "docker"}})),
            "ecs": {"image": "y"},
        }));
        let mut opts = GraphOptions::default();
        opts.missing_images.insert("syslog".into());
        let g = Graph::build(&s, &opts);
        let o = g.order();
        assert!(o.blocked.is_empty(), "{:?}", o.blocked);
        let pos = |n: &str| {
            o.waves
                .iter()
                .position(|w| w.iter().any(|x| x == n))
                .unwrap()
        };
        assert!(pos("udev") > pos("udev-cold"));
        assert!(pos("console") > pos("cloud-init-execute"));
        assert!(pos("console") > pos("syslog"));
        assert!(
            pos("syslog") > pos("network"),
            "missing image waits for network"
        );
        assert!(pos("docker") > pos("zfs"));
        assert!(pos("ecs") > pos("docker"), "user scope waits for docker");
        assert_eq!(pos("all-volumes"), 0);
        assert_eq!(pos("udev-cold"), 0);
        assert!(
            g.dependencies("ecs")
                .contains(&("docker", DepKind::UserDocker))
        );
        assert!(g.dependents("console").contains(&"docker"));
    }

    #[test]
    fn cycles_and_missing_are_reported_rest_still_ordered() {
        let s = set(json!({
            "a": sys(json!({"labels": {"io.rancher.os.after": "b"}})),
            "b": sys(json!({"labels": {"io.rancher.os.after": "a"}})),
            "c": sys(json!({"depends_on": ["a"]})),
            "d": sys(json!({"links": ["nope"]})),
            "e": sys(json!({"labels": {"io.rancher.os.after": "d"}})),
            "f": sys(json!({"labels": {"io.rancher.os.after": "ghost", "io.rancher.os.before": "c"}})),
            "g": sys(json!({"volumes_from": ["external"], "net": "container:f"})),
        }));
        let g = Graph::build(&s, &GraphOptions::default());
        let o = g.order();
        assert_eq!(o.cycles, vec![vec!["a".to_string(), "b".to_string()]]);
        assert_eq!(o.missing.len(), 1);
        assert_eq!(o.missing[0].dependency, "nope");
        assert!(o.blocked["a"].contains("cycle"));
        assert!(o.blocked["c"].contains("depends on a"));
        assert!(o.blocked["d"].contains("nope"));
        assert!(o.blocked["e"].contains("depends on d"));
        assert_eq!(o.waves, vec![vec!["f".to_string()], vec!["g".to_string()]]);
        assert!(o.notes.iter().any(|n| n.message.contains("ghost")));
        assert!(o.notes.iter().any(|n| n.message.contains("external")));
    }

    #[test]
    fn scheduler_runs_and_skips() {
        let s = set(json!({
            "a": sys(json!({})),
            "b": sys(json!({})),
            "c": sys(json!({"labels": {"io.rancher.os.after": "a,b"}})),
            "d": sys(json!({"labels": {"io.rancher.os.after": "c"}})),
            "e": sys(json!({"labels": {"io.rancher.os.after": "b"}})),
        }));
        let g = Graph::build(&s, &GraphOptions::default());
        let mut sch = g.scheduler();
        assert_eq!(sch.ready(), ["a", "b"]);
        assert!(sch.ready().is_empty());
        sch.complete("b");
        assert_eq!(sch.ready(), ["e"]);
        assert_eq!(sch.fail("a"), ["c", "d"]);
        assert!(sch.skipped()["d"].contains("because a failed"));
        sch.complete("e");
        assert!(sch.ready().is_empty());
        assert!(sch.is_finished());
    }
}
