//! [`ServiceEngine`] over the Docker Engine API: the system engine's socket, and (later) the
//! user Docker's. The same client speaks to both, which is what lets user-scope services get
//! the same reconcile as system ones.

use std::time::{Duration, Instant};

use super::exec::{EngineError, ServiceEngine};
use super::labels::Scope;
use super::plan::{CurrentContainer, RunState};
use crate::engine::api::types::{ContainerCreateBody, ExecCreateBody};
use crate::engine::client::{Client, ClientError, enc};

/// An engine behind a Docker API socket.
pub struct ApiEngine {
    pub client: Client,
    pub scope: Scope,
}

fn e(err: ClientError) -> EngineError {
    EngineError(err.to_string())
}

impl ServiceEngine for ApiEngine {
    fn list_containers(&self) -> Result<Vec<CurrentContainer>, EngineError> {
        let list = self.client.containers(true, &[]).map_err(e)?;
        Ok(list
            .into_iter()
            .map(|s| CurrentContainer {
                name: s
                    .names
                    .first()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                id: s.id,
                labels: s.labels,
                image_id: s.image_id,
                state: RunState::from_docker(&s.state),
                scope: self.scope,
            })
            .collect())
    }

    fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        self.client.image_id(reference).map_err(e)
    }

    fn pull(&self, reference: &str) -> Result<String, EngineError> {
        self.client.pull(reference, |_| {}).map_err(e)?;
        self.client.image_id(reference).map_err(e)?.ok_or_else(|| {
            EngineError(format!(
                "pulled {reference} but the engine does not have it"
            ))
        })
    }

    fn create(&self, name: &str, body: &ContainerCreateBody) -> Result<String, EngineError> {
        self.client.create(Some(name), body).map_err(e)
    }

    fn start(&self, id: &str) -> Result<(), EngineError> {
        match self.client.verb(id, "start", "") {
            Err(err) if err.status() == Some(304) => Ok(()),
            r => r.map_err(e),
        }
    }

    fn stop(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        match self
            .client
            .verb(id, "stop", &format!("t={}", timeout.as_secs()))
        {
            Err(err) if err.status() == Some(304) => Ok(()),
            r => r.map_err(e),
        }
    }

    fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.client.remove(id, true).map_err(e)
    }

    fn wait(&self, id: &str) -> Result<i64, EngineError> {
        self.client.wait(id).map_err(e)
    }

    fn probe(&self, id: &str, argv: &[String], timeout: Duration) -> Result<bool, EngineError> {
        let exec = self
            .client
            .exec_create(
                id,
                &ExecCreateBody {
                    cmd: argv.to_vec(),
                    ..ExecCreateBody::default()
                },
            )
            .map_err(e)?;
        self.client
            .call(
                "POST",
                &format!("/exec/{}/start", enc(&exec)),
                Some(&serde_json::json!({"Detach": true})),
            )
            .map_err(e)?;
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.client.exec_inspect(&exec).map_err(e)?;
            if !st.running
                && let Some(code) = st.exit_code
            {
                return Ok(code == 0);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
