//! System services: RancherOS's compose (v1) service definitions, from the config tree to
//! containers.
//!
//! The pipeline, each step a pure function except the last:
//!
//! - [`interp`]: `${VAR}`/`$VAR` interpolation from `rancher.environment` (RancherOS's lookup:
//!   `<service>/<KEY>` before `<KEY>`), bare environment keys and `PREFIX*` wildcards;
//! - [`def`]: the raw map typed into a [`def::ServiceDef`] (unknown keys warn, a broken
//!   service is an error for that service only);
//! - [`labels`]: the `io.rancher.os.*` labels typed;
//! - [`graph`]: start order (waves and a ready-set scheduler) from explicit and implicit
//!   dependencies, with cycles and missing dependencies reported;
//! - [`hash`]: the config hash stamped on containers;
//! - [`plan`]: desired services + existing containers -> create/recreate/keep/remove;
//! - [`convert`]: a service -> the Docker Engine API create body;
//! - [`exec`]: applies a plan through the small [`exec::ServiceEngine`] trait.
//!
//! [`load_services`] and [`parse_compose_text`] run the first two steps over a whole set.

pub mod api_engine;
pub mod convert;
pub mod def;
pub mod exec;
pub mod graph;
pub mod hash;
pub mod interp;
pub mod labels;
pub mod plan;
pub mod sources;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::model::Service;
pub use def::ServiceDef;
pub use interp::Environment;

/// Something worth telling the user that does not stop the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Dotted key (`rancher.services.ntp.foo`) or the service name.
    pub path: String,
    pub message: String,
}

impl Warning {
    /// A warning about `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Warning {
        Warning {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A service that cannot be used: the key that broke it and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{path}: {message}")]
pub struct ServiceError {
    /// The service's name.
    pub service: String,
    /// Dotted key of the problem (`rancher.services.ntp.volumes[1]`).
    pub path: String,
    pub message: String,
}

/// The outcome of loading a set of services: every good service, and every problem.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// By service name.
    pub services: BTreeMap<String, ServiceDef>,
    /// One per service that could not be used (the others are still in `services`).
    pub errors: Vec<ServiceError>,
    pub warnings: Vec<Warning>,
}

impl Loaded {
    fn add(&mut self, name: &str, path: &str, raw: &Map<String, Value>, env: &Environment) {
        match interp::interpolate_service(name, path, raw, env) {
            Ok((map, warns)) => {
                self.warnings.extend(warns);
                match ServiceDef::from_map(name, path, &map) {
                    Ok((def, warns)) => {
                        self.warnings.extend(warns);
                        self.services.insert(name.to_string(), def);
                    }
                    Err(e) => self.errors.push(e),
                }
            }
            Err(e) => self.errors.push(e),
        }
    }
}

/// Interpolates and types every service of a config service map (`rancher.services`,
/// `rancher.bootstrap`, `rancher.cloud_init_services`); `prefix` is that map's dotted key, used
/// in messages.
pub fn load_services<'a>(
    prefix: &str,
    services: impl IntoIterator<Item = (&'a String, &'a Service)>,
    env: &Environment,
) -> Loaded {
    let mut out = Loaded::default();
    for (name, svc) in services {
        out.add(name, &format!("{prefix}.{name}"), &svc.0, env);
    }
    out
}

/// Parses a compose file: either a `services:` map (compose v2/v3 style, other top-level keys
/// such as `version`, `volumes` and `networks` are ignored with a warning) or a v1 file whose
/// top level is the service map, as os-services files are. `source` names the file in
/// messages. Only a file that is not YAML or not a map is an `Err`.
pub fn parse_compose_text(
    source: &str,
    text: &str,
    env: &Environment,
) -> Result<Loaded, ServiceError> {
    let broken = |message: String| ServiceError {
        service: String::new(),
        path: source.to_string(),
        message,
    };
    let parsed = crate::config::yaml::parse(text).map_err(|e| {
        broken(format!(
            "not valid yaml (line {}): {}",
            e.line,
            e.message.to_lowercase()
        ))
    })?;
    let Value::Object(top) = parsed.value else {
        return Err(broken("a compose file must be a map".to_string()));
    };
    let mut out = Loaded::default();
    let (services, prefix) = match top.get("services") {
        Some(Value::Object(s)) if top.contains_key("version") || !s.contains_key("image") => {
            for k in top.keys() {
                if k != "services" && k != "version" {
                    out.warnings.push(Warning::new(
                        format!("{source}: {k}"),
                        "top-level key not supported, ignored",
                    ));
                }
            }
            (s.clone(), format!("{source}: services"))
        }
        _ => (top, format!("{source}:")),
    };
    for (name, raw) in &services {
        let path = if prefix.ends_with(':') {
            format!("{prefix} {name}")
        } else {
            format!("{prefix}.{name}")
        };
        match raw {
            Value::Object(m) => out.add(name, &path, m, env),
            Value::Null => out.errors.push(ServiceError {
                service: name.clone(),
                path,
                message: "empty service definition (no image)".to_string(),
            }),
            other => out.errors.push(ServiceError {
                service: name.clone(),
                path,
                message: format!("a service must be a map, found {}", kind(other)),
            }),
        }
    }
    Ok(out)
}

pub(crate) use crate::config::kind;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn v1_file_and_services_file_both_parse() {
        let env = Environment::default();
        let v1 = "ntp:\n  image: busybox\n  command: ntpd\n";
        let l = parse_compose_text("ntp.yml", v1, &env).unwrap();
        assert_eq!(l.services["ntp"].image, "busybox");
        let v3 = "version: '3'\nservices:\n  a:\n    image: x\n  b:\n    command: y\nvolumes: {}\n";
        let l = parse_compose_text("c.yml", v3, &env).unwrap();
        assert_eq!(l.services.len(), 1);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(l.errors[0].service, "b");
        assert!(
            l.errors[0].to_string().contains("services.b"),
            "{}",
            l.errors[0]
        );
        assert!(l.warnings.iter().any(|w| w.path.contains("volumes")));
    }

    #[test]
    fn broken_file_is_an_error() {
        let env = Environment::default();
        assert!(parse_compose_text("x.yml", "- a\n- b\n", &env).is_err());
        assert!(parse_compose_text("x.yml", "a: [\n", &env).is_err());
    }
}
