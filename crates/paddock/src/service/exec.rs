//! Applies a [`Plan`] through a small, synchronous engine interface.
//!
//! Order: removals first (stop, then remove), then services as the dependency graph allows,
//! independent ones in parallel (one thread each). For each service:
//!
//! - **create**: pull the image if it is missing, create; **recreate**: stop and remove the
//!   old container, then the same; **keep**: the existing container; **conflict**: fails;
//! - create-only services are not started (they count as done at once);
//! - otherwise the container is started unless already running;
//! - a one-shot (`io.rancher.os.detach: "false"`) is waited for; a non-zero exit fails it;
//! - with an enabled `healthcheck`, dependents wait until the probe passes. The deadline is
//!   `start_period + interval * retries` (defaults: interval 1 s, retries 3), capped at
//!   [`ExecOptions::health_timeout`] (60 s); the probe runs at once and then every
//!   `min(interval, ExecOptions::probe_poll)`, so a healthy service is seen early.
//!
//! A failed service skips everything depending on it (reported with the reason); services
//! blocked by the graph (cycles, missing dependencies) are reported as skipped too. Nothing
//! stops the other services. A service with `io.rancher.os.reloadconfig: "true"` that came up
//! sets [`Report::reload_requested`]: the caller reloads the config and runs `up` again, as
//! RancherOS's `ErrRestart` did.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::convert::to_create_body_with;
use super::graph::{Graph, GraphOptions};
use super::labels::{RosLabels, Scope};
use super::plan::{Action, CurrentContainer, DesiredService, Plan, PlanItem, RunState};
use crate::engine::api::types::ContainerCreateBody;

/// An engine call that failed; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

/// What the executor needs from an engine (the system engine or the user Docker). All calls
/// block; the executor calls them from several threads at once.
pub trait ServiceEngine: Send + Sync {
    /// Every container, with labels and state; `scope` set to this engine's.
    fn list_containers(&self) -> Result<Vec<CurrentContainer>, EngineError>;
    /// The id of the image `reference` names, `None` if it is not present.
    fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError>;
    /// Pulls `reference`; returns the image id.
    fn pull(&self, reference: &str) -> Result<String, EngineError>;
    /// Creates a container named `name`; returns its id.
    fn create(&self, name: &str, body: &ContainerCreateBody) -> Result<String, EngineError>;
    fn start(&self, id: &str) -> Result<(), EngineError>;
    /// Stops (SIGTERM, then SIGKILL after `timeout`); a stopped container is fine.
    fn stop(&self, id: &str, timeout: Duration) -> Result<(), EngineError>;
    /// Removes a stopped container.
    fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// Blocks until the container exits; returns the exit code.
    fn wait(&self, id: &str) -> Result<i64, EngineError>;
    /// Runs `argv` in the running container (exec); true if it exits 0 within `timeout`.
    fn probe(&self, id: &str, argv: &[String], timeout: Duration) -> Result<bool, EngineError>;
}

/// The engines services are routed to by scope.
#[derive(Clone, Copy)]
pub struct Engines<'a> {
    pub system: &'a dyn ServiceEngine,
    /// `None` while there is no user Docker: user-scope services then fail.
    pub user: Option<&'a dyn ServiceEngine>,
}

impl<'a> Engines<'a> {
    /// The engine of `scope`.
    pub fn get(&self, scope: Scope) -> Option<&'a dyn ServiceEngine> {
        match scope {
            Scope::System => Some(self.system),
            Scope::User => self.user,
        }
    }
}

/// Knobs of [`execute`].
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Grace period when stopping a container to remove it.
    pub stop_timeout: Duration,
    /// The longest a dependent waits for a healthcheck.
    pub health_timeout: Duration,
    /// The longest pause between two probes.
    pub probe_poll: Duration,
    /// Print each step on stderr as it happens (`service: message`), e.g. for the boot
    /// timeline on the console.
    pub progress: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            stop_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(60),
            probe_poll: Duration::from_secs(1),
            progress: false,
        }
    }
}

/// How a service ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Started (and healthy, if it has a healthcheck).
    Started {
        container_id: String,
    },
    /// Was already running and kept.
    Running {
        container_id: String,
    },
    /// Create-only: created (or kept), not started.
    Created {
        container_id: String,
    },
    /// A one-shot that exited 0.
    Completed {
        container_id: String,
    },
    Failed {
        error: String,
    },
    /// Not attempted: blocked by the graph or by a failed dependency.
    Skipped {
        reason: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Started { .. } => f.write_str("started"),
            Outcome::Running { .. } => f.write_str("running"),
            Outcome::Created { .. } => f.write_str("created"),
            Outcome::Completed { .. } => f.write_str("completed"),
            Outcome::Failed { error } => write!(f, "failed: {error}"),
            Outcome::Skipped { reason } => write!(f, "skipped: {reason}"),
        }
    }
}

/// One thing the executor did, with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: SystemTime,
    /// Since the start of [`execute`].
    pub elapsed: Duration,
    pub service: String,
    pub message: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:.3}s {}: {}",
            self.elapsed.as_secs_f64(),
            self.service,
            self.message
        )
    }
}

/// A removal of the plan and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub service: String,
    pub container_id: String,
    /// `None` when it worked.
    pub error: Option<String>,
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub outcomes: BTreeMap<String, Outcome>,
    pub removals: Vec<Removal>,
    pub events: Vec<Event>,
    /// A service with `io.rancher.os.reloadconfig` came up.
    pub reload_requested: bool,
}

impl Report {
    /// No service failed or was skipped and every removal worked.
    pub fn ok(&self) -> bool {
        self.removals.iter().all(|r| r.error.is_none())
            && self
                .outcomes
                .values()
                .all(|o| !matches!(o, Outcome::Failed { .. } | Outcome::Skipped { .. }))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.removals {
            match &r.error {
                None => writeln!(f, "{}: removed", r.service)?,
                Some(e) => writeln!(f, "{}: removal failed: {e}", r.service)?,
            }
        }
        for (s, o) in &self.outcomes {
            writeln!(f, "{s}: {o}")?;
        }
        if self.reload_requested {
            writeln!(f, "config reload requested")?;
        }
        Ok(())
    }
}

struct Log {
    start: Instant,
    events: Mutex<Vec<Event>>,
    progress: bool,
}

impl Log {
    fn note(&self, service: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(service, "{message}");
        if self.progress {
            eprintln!("{service}: {message}");
        }
        let ev = Event {
            at: SystemTime::now(),
            elapsed: self.start.elapsed(),
            service: service.to_string(),
            message,
        };
        match self.events.lock() {
            Ok(mut g) => g.push(ev),
            Err(p) => p.into_inner().push(ev),
        }
    }
}

/// Applies `plan` (made from `desired`) through `engines`.
pub fn execute(
    plan: &Plan,
    desired: &[DesiredService],
    engines: &Engines,
    opts: &ExecOptions,
) -> Report {
    let log = Log {
        start: Instant::now(),
        events: Mutex::new(Vec::new()),
        progress: opts.progress,
    };
    let mut report = Report::default();

    for item in &plan.items {
        if let (Action::Remove { reason }, Some(id)) = (&item.action, &item.container_id) {
            log.note(&item.service, format!("removing {id}: {reason}"));
            let res = match engines.get(item.scope) {
                None => Err(EngineError(format!("no {} engine", item.scope))),
                Some(e) => e.stop(id, opts.stop_timeout).and_then(|()| e.remove(id)),
            };
            if let Err(e) = &res {
                log.note(&item.service, format!("removal failed: {e}"));
            }
            report.removals.push(Removal {
                service: item.service.clone(),
                container_id: id.clone(),
                error: res.err().map(|e| e.0),
            });
        }
    }

    let defs: BTreeMap<String, super::def::ServiceDef> = desired
        .iter()
        .map(|d| (d.def.name.clone(), d.def.clone()))
        .collect();
    let by_name: BTreeMap<&str, &DesiredService> =
        desired.iter().map(|d| (d.def.name.as_str(), d)).collect();
    let missing_images: BTreeSet<String> = desired
        .iter()
        .filter(|d| d.image_id.is_none())
        .map(|d| d.def.name.clone())
        .collect();
    let graph = Graph::build(&defs, &GraphOptions { missing_images });
    let containers: BTreeMap<String, String> = desired
        .iter()
        .map(|d| (d.def.name.clone(), d.def.container_name().to_string()))
        .collect();
    let mut sched = graph.scheduler();
    for (s, reason) in sched.skipped().clone() {
        log.note(&s, format!("skipped: {reason}"));
        report.outcomes.insert(s, Outcome::Skipped { reason });
    }

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(String, Result<Outcome, String>)>();
        let mut running = 0usize;
        loop {
            for s in sched.ready() {
                let tx = tx.clone();
                let d = by_name.get(s.as_str()).copied();
                let item = plan.item(&s);
                let log = &log;
                let containers = &containers;
                running += 1;
                scope.spawn(move || {
                    let res = match (d, item) {
                        (Some(d), Some(item)) => {
                            run_one(d, item, engines, opts, &plan.project, containers, log)
                        }
                        _ => Err("not in the plan".to_string()),
                    };
                    // The receiver outlives every sender: a failed send is impossible.
                    let _ = tx.send((s, res));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((s, res)) = rx.recv() else { break };
            running -= 1;
            match res {
                Ok(outcome) => {
                    sched.complete(&s);
                    if matches!(
                        outcome,
                        Outcome::Started { .. }
                            | Outcome::Running { .. }
                            | Outcome::Completed { .. }
                    ) && by_name
                        .get(s.as_str())
                        .is_some_and(|d| RosLabels::from_labels(&d.def.labels).reload_config)
                    {
                        report.reload_requested = true;
                    }
                    report.outcomes.insert(s, outcome);
                }
                Err(error) => {
                    log.note(&s, format!("failed: {error}"));
                    let skipped = sched.fail(&s);
                    report.outcomes.insert(s, Outcome::Failed { error });
                    for d in skipped {
                        let reason = sched.skipped().get(&d).cloned().unwrap_or_default();
                        log.note(&d, format!("skipped: {reason}"));
                        report.outcomes.insert(d, Outcome::Skipped { reason });
                    }
                }
            }
        }
    });

    report.events = match log.events.into_inner() {
        Ok(v) => v,
        Err(p) => p.into_inner(),
    };
    report
}

fn run_one(
    d: &DesiredService,
    item: &PlanItem,
    engines: &Engines,
    opts: &ExecOptions,
    project: &str,
    containers: &BTreeMap<String, String>,
    log: &Log,
) -> Result<Outcome, String> {
    let name = d.def.name.as_str();
    let labels = RosLabels::from_labels(&d.def.labels);
    let engine = engines
        .get(labels.scope)
        .ok_or_else(|| match labels.scope {
            Scope::User => "waiting for docker: the user Docker is not running, so this \
                            user-scope service cannot start yet"
                .to_string(),
            Scope::System => "no system engine to run it in".to_string(),
        })?;
    let e = |err: EngineError| err.0;
    let create = |log: &Log| -> Result<String, String> {
        if d.image_id.is_none() && engine.image_id(&d.def.image).map_err(e)?.is_none() {
            log.note(name, format!("pulling {}", d.def.image));
            engine
                .pull(&d.def.image)
                .map_err(|err| format!("pull {}: {err}", d.def.image))?;
        }
        let (cname, body) = to_create_body_with(&d.def, project, containers);
        let id = engine
            .create(&cname, &body)
            .map_err(|err| format!("create: {err}"))?;
        log.note(name, format!("created {cname} ({id})"));
        Ok(id)
    };
    let (id, already_running) = match &item.action {
        Action::Create { .. } => (create(log)?, false),
        Action::Recreate { reason } => {
            let old = item.container_id.as_deref().unwrap_or_default();
            log.note(name, format!("recreating: {reason}"));
            engine
                .stop(old, opts.stop_timeout)
                .map_err(|err| format!("stop: {err}"))?;
            engine.remove(old).map_err(|err| format!("remove: {err}"))?;
            (create(log)?, false)
        }
        Action::Keep { .. } => (
            item.container_id.clone().unwrap_or_default(),
            item.state == Some(RunState::Running),
        ),
        Action::Conflict { reason } | Action::Remove { reason } => return Err(reason.clone()),
    };
    if labels.create_only {
        return Ok(Outcome::Created { container_id: id });
    }
    if !already_running {
        engine.start(&id).map_err(|err| format!("start: {err}"))?;
        log.note(name, "started");
    }
    if !labels.detach {
        let code = engine.wait(&id).map_err(|err| format!("wait: {err}"))?;
        log.note(name, format!("exited with code {code}"));
        if code != 0 {
            return Err(format!("one-shot exited with code {code}"));
        }
        return Ok(Outcome::Completed { container_id: id });
    }
    if let Some(hc) = &d.def.healthcheck
        && let Some(argv) = hc.probe_argv()
    {
        let interval = hc.interval.unwrap_or(Duration::from_secs(1));
        let retries = hc.retries.unwrap_or(3).max(1);
        let budget = hc.start_period.unwrap_or_default() + interval.saturating_mul(retries);
        let budget = budget.min(opts.health_timeout);
        let deadline = Instant::now() + budget;
        let per_probe = hc.timeout.unwrap_or(Duration::from_secs(30));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match engine.probe(
                &id,
                &argv,
                per_probe.min(left.max(Duration::from_millis(1))),
            ) {
                Ok(true) => {
                    log.note(name, "healthy");
                    break;
                }
                Ok(false) => "probe failed".to_string(),
                Err(err) => format!("probe error: {err}"),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "not healthy within {:.1}s ({last})",
                    budget.as_secs_f64()
                ));
            }
            std::thread::sleep(interval.min(opts.probe_poll).min(left));
        }
    }
    Ok(if already_running {
        Outcome::Running { container_id: id }
    } else {
        Outcome::Started { container_id: id }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::service::def::ServiceDef;
    use crate::service::labels;
    use crate::service::plan::{PlanOptions, plan};
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Fake {
        containers: Mutex<BTreeMap<String, CurrentContainer>>,
        images: Mutex<BTreeSet<String>>,
        /// container name -> exit code for wait
        exit: BTreeMap<String, i64>,
        /// container name -> probes failing before success (usize::MAX: never healthy)
        unhealthy: BTreeMap<String, usize>,
        probes: Mutex<BTreeMap<String, usize>>,
        calls: Mutex<Vec<String>>,
        in_start: AtomicUsize,
        max_parallel: AtomicUsize,
        start_delay: Duration,
        next: AtomicUsize,
    }

    impl Fake {
        fn call(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn name_of(&self, id: &str) -> String {
            self.containers
                .lock()
                .unwrap()
                .get(id)
                .map(|c| c.name.clone())
                .unwrap_or_default()
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn pos(&self, call: &str) -> usize {
            self.calls()
                .iter()
                .position(|c| c == call)
                .unwrap_or_else(|| panic!("no {call} in {:?}", self.calls()))
        }
    }

    impl ServiceEngine for Fake {
        fn list_containers(&self) -> Result<Vec<CurrentContainer>, EngineError> {
            Ok(self.containers.lock().unwrap().values().cloned().collect())
        }
        fn image_id(&self, r: &str) -> Result<Option<String>, EngineError> {
            Ok(self
                .images
                .lock()
                .unwrap()
                .contains(r)
                .then(|| format!("sha256:{r}")))
        }
        fn pull(&self, r: &str) -> Result<String, EngineError> {
            self.call(format!("pull {r}"));
            self.images.lock().unwrap().insert(r.to_string());
            Ok(format!("sha256:{r}"))
        }
        fn create(&self, name: &str, body: &ContainerCreateBody) -> Result<String, EngineError> {
            if !self.images.lock().unwrap().contains(&body.config.image) {
                return Err(EngineError(format!("no such image {}", body.config.image)));
            }
            let id = format!("id{}", self.next.fetch_add(1, Ordering::SeqCst));
            self.call(format!("create {name}"));
            self.containers.lock().unwrap().insert(
                id.clone(),
                CurrentContainer {
                    id: id.clone(),
                    name: name.to_string(),
                    labels: body.config.labels.clone(),
                    image_id: format!("sha256:{}", body.config.image),
                    state: RunState::Created,
                    scope: Scope::System,
                },
            );
            Ok(id)
        }
        fn start(&self, id: &str) -> Result<(), EngineError> {
            let n = self.in_start.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_parallel.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(self.start_delay);
            self.in_start.fetch_sub(1, Ordering::SeqCst);
            let name = self.name_of(id);
            self.call(format!("start {name}"));
            if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
                c.state = RunState::Running;
            }
            Ok(())
        }
        fn stop(&self, id: &str, _: Duration) -> Result<(), EngineError> {
            let name = self.name_of(id);
            self.call(format!("stop {name}"));
            Ok(())
        }
        fn remove(&self, id: &str) -> Result<(), EngineError> {
            let name = self.name_of(id);
            self.call(format!("remove {name}"));
            self.containers.lock().unwrap().remove(id);
            Ok(())
        }
        fn wait(&self, id: &str) -> Result<i64, EngineError> {
            let name = self.name_of(id);
            std::thread::sleep(Duration::from_millis(20));
            self.call(format!("exit {name}"));
            Ok(*self.exit.get(&name).unwrap_or(&0))
        }
        fn probe(&self, id: &str, argv: &[String], _: Duration) -> Result<bool, EngineError> {
            let name = self.name_of(id);
            assert_eq!(argv, ["/bin/sh", "-c", "check"]);
            let mut p = self.probes.lock().unwrap();
            let n = p.entry(name.clone()).or_default();
            *n += 1;
            let ok = *n > *self.unhealthy.get(&name).unwrap_or(&0);
            if ok {
                drop(p);
                self.call(format!("healthy {name}"));
            }
            Ok(ok)
        }
    }

    fn services(v: Value) -> Vec<ServiceDef> {
        let Value::Object(m) = v else { panic!() };
        m.iter()
            .map(|(k, v)| {
                let Value::Object(s) = v else { panic!() };
                let mut s = s.clone();
                let labels = s.entry("labels").or_insert(json!({}));
                labels["io.rancher.os.scope"] = json!("system");
                ServiceDef::from_map(k, k, &s).unwrap().0
            })
            .collect()
    }

    fn up(fake: &Fake, defs: &[ServiceDef]) -> (Plan, Report) {
        let desired: Vec<DesiredService> = defs
            .iter()
            .map(|d| DesiredService::new(d.clone(), fake.image_id(&d.image).unwrap()))
            .collect();
        let current = fake.list_containers().unwrap();
        let p = plan("os", &desired, &current, &PlanOptions::default());
        let engines = Engines {
            system: fake,
            user: None,
        };
        let opts = ExecOptions {
            probe_poll: Duration::from_millis(5),
            ..ExecOptions::default()
        };
        let r = execute(&p, &desired, &engines, &opts);
        (p, r)
    }

    #[test]
    fn order_parallel_oneshot_health() {
        let fake = Fake {
            start_delay: Duration::from_millis(60),
            unhealthy: [("db".to_string(), 2)].into(),
            ..Fake::default()
        };
        fake.images.lock().unwrap().extend(["img".to_string()]);
        let defs = services(json!({
            "a": {"image": "img"},
            "b": {"image": "img"},
            "init": {"image": "img", "labels": {"io.rancher.os.detach": "false", "io.rancher.os.after": "a"}},
            "db": {"image": "img", "healthcheck": {"test": "check", "interval": "10ms", "retries": 5}},
            "app": {"image": "other", "labels": {"io.rancher.os.after": "init,db"}},
            "vols": {"image": "img", "labels": {"io.rancher.os.createonly": "true"}},
            "net": {"image": "img", "labels": {"io.rancher.os.reloadconfig": "true"}},
        }));
        let (p, r) = up(&fake, &defs);
        assert_eq!(p.count("create"), 7);
        assert!(r.ok(), "{r}\n{:?}", fake.calls());
        assert!(
            fake.max_parallel.load(Ordering::SeqCst) >= 2,
            "independent starts overlap"
        );
        assert!(fake.pos("start app") > fake.pos("exit init"));
        assert!(fake.pos("start app") > fake.pos("healthy db"));
        assert!(fake.pos("start init") > fake.pos("start a"));
        assert!(fake.pos("pull other") < fake.pos("create app"));
        assert!(!fake.calls().contains(&"start vols".to_string()));
        assert!(matches!(r.outcomes["init"], Outcome::Completed { .. }));
        assert!(matches!(r.outcomes["vols"], Outcome::Created { .. }));
        assert!(matches!(r.outcomes["app"], Outcome::Started { .. }));
        assert!(r.reload_requested);
        assert!(
            r.events
                .iter()
                .any(|e| e.service == "db" && e.message == "healthy")
        );
        assert!(r.events.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));

        // second run: everything is kept; running ones are not restarted
        fake.calls.lock().unwrap().clear();
        let (p, r) = up(&fake, &defs);
        assert_eq!(p.count("keep"), 7, "{p}");
        assert!(r.ok(), "{r}");
        assert!(matches!(r.outcomes["a"], Outcome::Running { .. }));
        assert!(!fake.calls().iter().any(|c| c.starts_with("create")));
    }

    #[test]
    fn failures_skip_dependents_only() {
        let fake = Fake {
            exit: [("init".to_string(), 3)].into(),
            unhealthy: [("db".to_string(), usize::MAX)].into(),
            ..Fake::default()
        };
        fake.images.lock().unwrap().insert("img".into());
        let defs = services(json!({
            "init": {"image": "img", "labels": {"io.rancher.os.detach": "false"}},
            "after-init": {"image": "img", "labels": {"io.rancher.os.after": "init"}},
            "after-after": {"image": "img", "labels": {"io.rancher.os.after": "after-init"}},
            "db": {"image": "img", "healthcheck": {"test": "check", "interval": "5ms", "retries": 3}},
            "app": {"image": "img", "depends_on": ["db"]},
            "free": {"image": "img"},
            "cyc1": {"image": "img", "labels": {"io.rancher.os.after": "cyc2"}},
            "cyc2": {"image": "img", "labels": {"io.rancher.os.after": "cyc1"}},
        }));
        let (_, r) = up(&fake, &defs);
        assert!(!r.ok());
        assert_eq!(
            r.outcomes["init"],
            Outcome::Failed {
                error: "one-shot exited with code 3".into()
            }
        );
        assert!(
            matches!(&r.outcomes["after-init"], Outcome::Skipped { reason } if reason.contains("init, which failed"))
        );
        assert!(matches!(
            &r.outcomes["after-after"],
            Outcome::Skipped { .. }
        ));
        assert!(
            matches!(&r.outcomes["db"], Outcome::Failed { error } if error.contains("not healthy"))
        );
        assert!(matches!(&r.outcomes["app"], Outcome::Skipped { .. }));
        assert!(
            matches!(&r.outcomes["cyc1"], Outcome::Skipped { reason } if reason.contains("cycle"))
        );
        assert!(matches!(r.outcomes["free"], Outcome::Started { .. }));
        assert!(!fake.calls().contains(&"create after-init".to_string()));
    }

    #[test]
    fn recreate_and_remove() {
        let fake = Fake::default();
        fake.images.lock().unwrap().insert("img".into());
        let v1 =
            services(json!({"a": {"image": "img", "command": "one"}, "old": {"image": "img"}}));
        let (_, r) = up(&fake, &v1);
        assert!(r.ok());
        fake.calls.lock().unwrap().clear();
        let v2 = services(json!({"a": {"image": "img", "command": "two"}}));
        let (p, r) = up(&fake, &v2);
        assert_eq!(p.count("remove"), 1);
        assert_eq!(p.count("recreate"), 1);
        assert!(r.ok(), "{r}");
        assert_eq!(r.removals[0].service, "old");
        let calls = fake.calls();
        assert!(fake.pos("remove old") < fake.pos("create a"), "{calls:?}");
        assert!(fake.pos("stop a") < fake.pos("remove a"));
        let left = fake.list_containers().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].labels[labels::SERVICE], "a");
    }

    #[test]
    fn user_scope_without_user_engine_fails() {
        let fake = Fake::default();
        fake.images.lock().unwrap().insert("img".into());
        let Value::Object(m) = json!({"image": "img"}) else {
            panic!()
        };
        let def = ServiceDef::from_map("u", "u", &m).unwrap().0;
        let (_, r) = up(&fake, &[def]);
        assert!(
            matches!(&r.outcomes["u"], Outcome::Failed { error } if error.contains("waiting for docker"))
        );
    }
}
