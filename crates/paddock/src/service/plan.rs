//! What `up` will do: desired services against the containers that exist.
//!
//! A container belongs to a service when its `com.docker.compose.project` label is the
//! project's and its `com.docker.compose.service` label names the service, in the engine of
//! the service's scope. The decision per service (libcompose `OutOfSync` + RancherOS
//! `shouldRebuild`):
//!
//! - no container: **create**;
//! - `io.docker.compose.rebuild: always`, or forced ([`PlanOptions::force_recreate`], e.g.
//!   `rancher.force_console_rebuild`): **recreate**;
//! - out of sync (config hash differs or is missing, or the image id behind the reference
//!   changed):
//!   - the `console` service whose `io.rancher.os.console` label changed: **recreate**;
//!   - rebuild label `"false"` on both the container and the definition: **keep**, with a
//!     warning that it needs rebuilding;
//!   - otherwise **recreate**;
//! - in sync: **keep** (the executor starts it if it is not running, unless create-only);
//! - a container of the project whose service is not desired: **remove**;
//! - a container that already has the service's container name but is not the service's
//!   (created by someone else, or by another desired service): **conflict**, nothing is
//!   touched and the service is not started.
//!
//! RancherOS kept an out-of-sync console whose console label had not changed whatever its
//! rebuild label said; Paddock applies the general rule to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Warning;
use super::def::ServiceDef;
use super::hash::config_hash;
use super::labels::{self, Rebuild, RosLabels, Scope};

/// A container's run state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Created,
    Running,
    Exited,
    /// Paused, restarting, dead, ... (the engine's word).
    Other(String),
}

impl RunState {
    /// From docker's `State` string.
    pub fn from_docker(s: &str) -> RunState {
        match s {
            "created" => RunState::Created,
            "running" => RunState::Running,
            "exited" => RunState::Exited,
            other => RunState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunState::Created => f.write_str("created"),
            RunState::Running => f.write_str("running"),
            RunState::Exited => f.write_str("exited"),
            RunState::Other(s) => f.write_str(s),
        }
    }
}

/// A container that exists in one of the engines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentContainer {
    pub id: String,
    /// Without docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The id of the image it was created from.
    pub image_id: String,
    pub state: RunState,
    /// Which engine it is in.
    pub scope: Scope,
}

/// A service as it should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    pub def: ServiceDef,
    /// [`config_hash`] of `def`.
    pub hash: String,
    /// The id the engine reports for `def.image`; `None` when the image is not present.
    pub image_id: Option<String>,
}

impl DesiredService {
    /// Computes the hash.
    pub fn new(def: ServiceDef, image_id: Option<String>) -> DesiredService {
        DesiredService {
            hash: config_hash(&def),
            def,
            image_id,
        }
    }

    /// The service's scope.
    pub fn scope(&self) -> Scope {
        RosLabels::from_labels(&self.def.labels).scope
    }
}

/// What happens to one service or container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Create {
        reason: String,
    },
    Recreate {
        reason: String,
    },
    Keep {
        reason: String,
    },
    Remove {
        reason: String,
    },
    /// The name is taken by a container that is not the service's; nothing is done.
    Conflict {
        reason: String,
    },
}

impl Action {
    /// `create`, `recreate`, ...
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Recreate { .. } => "recreate",
            Action::Keep { .. } => "keep",
            Action::Remove { .. } => "remove",
            Action::Conflict { .. } => "conflict",
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Action::Create { reason }
            | Action::Recreate { reason }
            | Action::Keep { reason }
            | Action::Remove { reason }
            | Action::Conflict { reason } => reason,
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    /// The service (for a removal, the service label of the container).
    pub service: String,
    pub container_name: String,
    /// The existing container acted on (kept, recreated, removed).
    pub container_id: Option<String>,
    /// Its state, when a container exists.
    pub state: Option<RunState>,
    pub scope: Scope,
    #[serde(flatten)]
    pub action: Action,
}

/// Every action for one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub project: String,
    /// Removals first, then services by name.
    pub items: Vec<PlanItem>,
    pub warnings: Vec<Warning>,
}

impl Plan {
    /// The item of `service` (not removals).
    pub fn item(&self, service: &str) -> Option<&PlanItem> {
        self.items
            .iter()
            .find(|i| i.service == service && !matches!(i.action, Action::Remove { .. }))
    }

    /// How many items have the verb.
    pub fn count(&self, verb: &str) -> usize {
        self.items
            .iter()
            .filter(|i| i.action.verb() == verb)
            .count()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "project {}: {} to create, {} to recreate, {} kept, {} to remove, {} in conflict",
            self.project,
            self.count("create"),
            self.count("recreate"),
            self.count("keep"),
            self.count("remove"),
            self.count("conflict"),
        )?;
        let width = self
            .items
            .iter()
            .map(|i| i.service.len())
            .max()
            .unwrap_or(0);
        for i in &self.items {
            let id = i
                .container_id
                .as_deref()
                .map(|id| format!(" [{}]", id.get(..12).unwrap_or(id)))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<9} {:<width$} {:<6} {}{}",
                i.action.verb(),
                i.service,
                i.scope.to_string(),
                i.action.reason(),
                id,
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Knobs of [`plan`].
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Services recreated whatever their state (`rancher.force_console_rebuild` for the console).
    pub force_recreate: BTreeSet<String>,
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

fn owner<'a>(c: &'a CurrentContainer, project: &str) -> Option<&'a str> {
    (c.labels.get(labels::PROJECT).map(String::as_str) == Some(project))
        .then(|| c.labels.get(labels::SERVICE).map(String::as_str))
        .flatten()
}

/// Plans `project`: `desired` services against `current` containers (of both engines).
pub fn plan(
    project: &str,
    desired: &[DesiredService],
    current: &[CurrentContainer],
    opts: &PlanOptions,
) -> Plan {
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    let wanted: BTreeMap<(Scope, &str), &DesiredService> = desired
        .iter()
        .map(|d| ((d.scope(), d.def.name.as_str()), d))
        .collect();
    // Containers by owning service.
    let mut owned: BTreeMap<(Scope, &str), Vec<&CurrentContainer>> = BTreeMap::new();
    let mut removed_ids: BTreeSet<&str> = BTreeSet::new();
    for c in current {
        let Some(svc) = owner(c, project) else {
            continue;
        };
        if wanted.contains_key(&(c.scope, svc)) {
            owned.entry((c.scope, svc)).or_default().push(c);
        } else {
            removed_ids.insert(&c.id);
            items.push(PlanItem {
                service: svc.to_string(),
                container_name: c.name.clone(),
                container_id: Some(c.id.clone()),
                state: Some(c.state.clone()),
                scope: c.scope,
                action: Action::Remove {
                    reason: format!("service {svc} is no longer enabled"),
                },
            });
        }
    }
    let mut services: Vec<&DesiredService> = desired.iter().collect();
    services.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    for d in services {
        let scope = d.scope();
        let name = d.def.name.as_str();
        let cname = d.def.container_name();
        let mut mine = owned.get(&(scope, name)).cloned().unwrap_or_default();
        // Prefer the one with the right name, then a running one.
        mine.sort_by_key(|c| (c.name != cname, c.state != RunState::Running, c.id.clone()));
        let mut it = mine.into_iter();
        let existing = it.next();
        for dup in it {
            items.push(PlanItem {
                service: name.to_string(),
                container_name: dup.name.clone(),
                container_id: Some(dup.id.clone()),
                state: Some(dup.state.clone()),
                scope,
                action: Action::Remove {
                    reason: format!("a second container of service {name}"),
                },
            });
        }
        // Someone else holding the name?
        let squatter = current.iter().find(|c| {
            c.scope == scope
                && c.name == cname
                && existing.is_none_or(|e| e.id != c.id)
                && !removed_ids.contains(c.id.as_str())
        });
        if let Some(s) = squatter
            && existing.is_none_or(|e| e.name != cname)
        {
            let who = match owner(s, project) {
                Some(other) => format!("service {other} of project {project}"),
                None => "a container paddock did not create".to_string(),
            };
            items.push(PlanItem {
                service: name.to_string(),
                container_name: cname.to_string(),
                container_id: Some(s.id.clone()),
                state: Some(s.state.clone()),
                scope,
                action: Action::Conflict {
                    reason: format!("the name {cname} is taken by {who}"),
                },
            });
            continue;
        }
        let new_labels = RosLabels::from_labels(&d.def.labels);
        let action = match existing {
            None => Action::Create {
                reason: if new_labels.create_only {
                    "not created yet (create only)".to_string()
                } else {
                    "not created yet".to_string()
                },
            },
            Some(c) => decide(d, c, &new_labels, opts, &mut warnings),
        };
        items.push(PlanItem {
            service: name.to_string(),
            container_name: cname.to_string(),
            container_id: existing.map(|c| c.id.clone()),
            state: existing.map(|c| c.state.clone()),
            scope,
            action,
        });
    }
    Plan {
        project: project.to_string(),
        items,
        warnings,
    }
}

fn decide(
    d: &DesiredService,
    c: &CurrentContainer,
    new_labels: &RosLabels,
    opts: &PlanOptions,
    warnings: &mut Vec<Warning>,
) -> Action {
    let name = d.def.name.as_str();
    if opts.force_recreate.contains(name) {
        return Action::Recreate {
            reason: "rebuild forced".to_string(),
        };
    }
    if new_labels.rebuild == Rebuild::Always {
        return Action::Recreate {
            reason: "io.docker.compose.rebuild is always".to_string(),
        };
    }
    let mut why = Vec::new();
    match labels::container_hash(&c.labels) {
        Some(h) if h == d.hash => {}
        Some(h) => why.push(format!(
            "config changed ({} -> {})",
            short(h),
            short(&d.hash)
        )),
        None => why.push("the container has no config hash".to_string()),
    }
    if let Some(img) = &d.image_id
        && *img != c.image_id
    {
        why.push(format!(
            "image {} changed ({} -> {})",
            d.def.image,
            short(c.image_id.trim_start_matches("sha256:")),
            short(img.trim_start_matches("sha256:"))
        ));
    }
    if c.name != d.def.container_name() {
        why.push(format!("container is named {}", c.name));
    }
    if why.is_empty() {
        return Action::Keep {
            reason: format!("up to date ({})", c.state),
        };
    }
    let why = why.join(", ");
    let old_labels = RosLabels::from_labels(&c.labels);
    if name == "console" && old_labels.console != new_labels.console {
        return Action::Recreate {
            reason: format!(
                "console changed from {} to {}",
                old_labels.console.as_deref().unwrap_or("none"),
                new_labels.console.as_deref().unwrap_or("none")
            ),
        };
    }
    if new_labels.rebuild == Rebuild::Never && old_labels.rebuild_raw == new_labels.rebuild_raw {
        warnings.push(Warning::new(
            name,
            format!("needs rebuilding ({why}) but io.docker.compose.rebuild is false"),
        ));
        return Action::Keep {
            reason: format!("out of date but io.docker.compose.rebuild is false ({why})"),
        };
    }
    Action::Recreate { reason: why }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn desired(name: &str, v: Value, image_id: Option<&str>) -> DesiredService {
        let Value::Object(m) = v else { panic!() };
        let def = ServiceDef::from_map(name, name, &m).unwrap().0;
        DesiredService::new(def, image_id.map(str::to_string))
    }

    fn sys(extra: &[(&str, &str)]) -> Value {
        let mut l = serde_json::Map::new();
        l.insert("io.rancher.os.scope".into(), "system".into());
        for (k, v) in extra {
            l.insert((*k).into(), (*v).into());
        }
        json!({"image": "img", "labels": l})
    }

    fn container(
        d: &DesiredService,
        id: &str,
        image_id: &str,
        state: RunState,
    ) -> CurrentContainer {
        let mut labels = d.def.labels.clone();
        labels::stamp(&mut labels, "os", &d.def.name, &d.hash);
        CurrentContainer {
            id: id.into(),
            name: d.def.container_name().into(),
            labels,
            image_id: image_id.into(),
            state,
            scope: d.scope(),
        }
    }

    #[test]
    fn create_keep_recreate_remove() {
        let a = desired("a", sys(&[]), Some("sha256:1"));
        let b = desired("b", sys(&[]), Some("sha256:1"));
        let c = desired("c", sys(&[]), Some("sha256:2"));
        let d = desired("d", sys(&[]), Some("sha256:1"));
        let old_d = desired(
            "d",
            json!({"image": "img", "labels": {"io.rancher.os.scope": "system", "x": "1"}}),
            None,
        );
        let gone = desired("gone", sys(&[]), None);
        let current = vec![
            container(&b, "bbbb", "sha256:1", RunState::Exited),
            container(&c, "cccc", "sha256:1", RunState::Running),
            container(&old_d, "dddd", "sha256:1", RunState::Running),
            container(&gone, "gggg", "sha256:1", RunState::Running),
        ];
        let p = plan("os", &[a, b, c, d], &current, &PlanOptions::default());
        assert!(matches!(p.item("a").unwrap().action, Action::Create { .. }));
        assert!(matches!(p.item("b").unwrap().action, Action::Keep { .. }));
        assert_eq!(p.item("b").unwrap().action.reason(), "up to date (exited)");
        let c = p.item("c").unwrap();
        assert!(matches!(c.action, Action::Recreate { .. }));
        assert!(c.action.reason().contains("image img changed"));
        assert!(
            p.item("d")
                .unwrap()
                .action
                .reason()
                .contains("config changed")
        );
        assert_eq!(p.items[0].service, "gone");
        assert!(matches!(p.items[0].action, Action::Remove { .. }));
        let text = p.to_string();
        assert!(
            text.starts_with("project os: 1 to create, 2 to recreate, 1 kept, 1 to remove"),
            "{text}"
        );
        assert!(text.contains("  remove    gone"), "{text}");
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["items"][0]["action"], "remove");
        assert_eq!(j["items"][0]["scope"], "system");
        let back: Plan = serde_json::from_value(j).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn rebuild_labels() {
        let always = desired(
            "all-volumes",
            sys(&[("io.docker.compose.rebuild", "always")]),
            None,
        );
        let cur = container(&always, "1", "i", RunState::Created);
        let p = plan(
            "os",
            std::slice::from_ref(&always),
            &[cur],
            &PlanOptions::default(),
        );
        assert!(matches!(p.items[0].action, Action::Recreate { .. }));

        let old = desired(
            "debian",
            sys(&[("io.docker.compose.rebuild", "false")]),
            None,
        );
        let new = desired(
            "debian",
            json!({"image": "img2", "labels": {"io.rancher.os.scope": "system", "io.docker.compose.rebuild": "false"}}),
            None,
        );
        let cur = container(&old, "1", "i", RunState::Running);
        let p = plan(
            "os",
            std::slice::from_ref(&new),
            &[cur],
            &PlanOptions::default(),
        );
        assert!(matches!(p.items[0].action, Action::Keep { .. }), "{p}");
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].to_string().contains("needs rebuilding"));

        // label changed from "false" to absent: recreate
        let old2 = desired(
            "debian",
            sys(&[("io.docker.compose.rebuild", "false")]),
            None,
        );
        let new2 = desired(
            "debian",
            json!({"image": "img2", "labels": {"io.rancher.os.scope": "system"}}),
            None,
        );
        let cur = container(&old2, "1", "i", RunState::Running);
        let p = plan("os", &[new2], &[cur], &PlanOptions::default());
        assert!(matches!(p.items[0].action, Action::Recreate { .. }));

        // forced
        let mut o = PlanOptions::default();
        o.force_recreate.insert("debian".into());
        let cur = container(&new, "1", "i", RunState::Running);
        let p = plan("os", &[new], &[cur], &o);
        assert_eq!(p.items[0].action.reason(), "rebuild forced");
    }

    #[test]
    fn console_switch_recreates_even_when_rebuild_false() {
        let old = desired(
            "console",
            sys(&[
                ("io.rancher.os.console", "debian"),
                ("io.docker.compose.rebuild", "false"),
            ]),
            None,
        );
        let new = desired(
            "console",
            json!({"image": "ubuntu", "labels": {"io.rancher.os.scope": "system", "io.rancher.os.console": "ubuntu", "io.docker.compose.rebuild": "false"}}),
            None,
        );
        let cur = container(&old, "1", "i", RunState::Running);
        let p = plan("os", &[new], &[cur], &PlanOptions::default());
        assert_eq!(
            p.items[0].action.reason(),
            "console changed from debian to ubuntu"
        );
    }

    #[test]
    fn conflicts_and_duplicates() {
        let a = desired("a", sys(&[]), None);
        let foreign = CurrentContainer {
            id: "ffff".into(),
            name: "a".into(),
            labels: BTreeMap::new(),
            image_id: "i".into(),
            state: RunState::Running,
            scope: Scope::System,
        };
        let p = plan(
            "os",
            std::slice::from_ref(&a),
            std::slice::from_ref(&foreign),
            &PlanOptions::default(),
        );
        assert!(matches!(p.items[0].action, Action::Conflict { .. }));
        assert!(p.items[0].action.reason().contains("did not create"));
        // the same name in the other engine is no conflict
        let mut user = foreign;
        user.scope = Scope::User;
        let p = plan(
            "os",
            std::slice::from_ref(&a),
            &[user],
            &PlanOptions::default(),
        );
        assert!(matches!(p.items[0].action, Action::Create { .. }));
        // two containers of one service
        let c1 = container(&a, "1", "i", RunState::Running);
        let mut c2 = container(&a, "2", "i", RunState::Exited);
        c2.name = "a_old".into();
        let p = plan("os", &[a], &[c2, c1], &PlanOptions::default());
        assert_eq!(p.items.len(), 2);
        assert!(
            p.items
                .iter()
                .any(|i| i.container_id.as_deref() == Some("2")
                    && matches!(i.action, Action::Remove { .. }))
        );
        assert!(
            matches!(p.item("a").unwrap().action, Action::Keep { .. })
                || p.items
                    .iter()
                    .any(|i| matches!(i.action, Action::Keep { .. }))
        );
    }
}
