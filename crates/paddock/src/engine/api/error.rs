//! Errors: [`ApiError`] is what a request answers (Docker's `{"message": ...}` shape);
//! [`ServerError`] is what setting up the listener can fail with.

use std::io;
use std::path::PathBuf;

/// An error answered to a Docker API client: an HTTP status and Docker's message text.
///
/// The message is what the docker CLI prints after "Error response from daemon: ", so it follows
/// Docker's wording (e.g. "No such container: x") rather than our lower-case library style.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 404 "No such container: x".
    pub fn no_such_container(id: &str) -> ApiError {
        ApiError::new(404, format!("No such container: {id}"))
    }

    /// 404 "No such image: x".
    pub fn no_such_image(name: &str) -> ApiError {
        ApiError::new(404, format!("No such image: {name}"))
    }

    /// 404 "No such exec instance: x".
    pub fn no_such_exec(id: &str) -> ApiError {
        ApiError::new(404, format!("No such exec instance: {id}"))
    }

    /// 404 with any message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }

    /// 409: name clash, container running, image in use...
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, message)
    }

    /// 400: malformed JSON, bad query values, invalid names.
    pub fn bad_parameter(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// 304 (start of a running container, stop of a stopped one): answered without a body.
    pub fn not_modified() -> ApiError {
        ApiError::new(304, "")
    }

    /// 501 "not supported by the system engine: <what>".
    pub fn not_supported(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(501, format!("not supported by the system engine: {what}"))
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }

    /// The JSON body Docker answers errors with.
    pub fn body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({ "message": self.message }).to_string();
        body.push('\n');
        body.into_bytes()
    }
}

impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// Setting up the API listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another daemon is listening on {0}")]
    InUse(PathBuf),
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set owner or mode of {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
    #[error("cannot start the api thread: {0}")]
    Spawn(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_is_dockers() {
        let e = ApiError::not_supported("GET /networks");
        assert_eq!(e.status, 501);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap_or_default();
        assert_eq!(
            v["message"],
            "not supported by the system engine: GET /networks"
        );
        assert_eq!(
            ApiError::no_such_container("x").message,
            "No such container: x"
        );
    }
}
