//! Image references as users type them (`busybox`, `localhost:5000/a/b:tag`,
//! `repo@sha256:...`), normalised the way docker does.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";

/// A normalised reference: registry domain, repository path, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {why}")]
pub struct BadReference {
    pub input: String,
    pub why: &'static str,
}

impl Reference {
    /// `domain/path` without tag or digest: the repository's full name.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The full name with tag (`latest` when neither tag nor digest was given) or digest.
    pub fn name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository()),
            (None, Some(d)) => format!("{}@{d}", self.repository()),
            (None, None) => format!("{}:latest", self.repository()),
        }
    }

    /// What the registry API calls the object: the digest if pinned, else the tag.
    pub fn api_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host that serves the registry API for this domain.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.domain
        }
    }

    /// The host part without port, for loopback checks.
    pub fn hostname(&self) -> &str {
        if let Some(rest) = self.domain.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        self.domain.split(':').next().unwrap_or(&self.domain)
    }

    /// A copy with `tag` (for `ros image tag`).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.into()),
            digest: None,
            ..self.clone()
        }
    }
}

/// The short name docker shows: `busybox:latest` for `docker.io/library/busybox:latest`.
pub fn familiar(name: &str) -> &str {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
}

impl FromStr for Reference {
    type Err = BadReference;

    fn from_str(input: &str) -> Result<Self, BadReference> {
        let bad = |why| BadReference {
            input: input.into(),
            why,
        };
        if input.is_empty() || input.len() > 512 {
            return Err(bad("empty or longer than 512 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("digest must be sha256:<64 hex>"))?,
                ),
            ),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, p))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                (first.to_owned(), p.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let path_ok = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            });
        if !path_ok {
            return Err(bad(
                "repository must be lower-case [a-z0-9._-] components separated by /",
            ));
        }
        let domain_ok = domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !domain_ok {
            return Err(bad("registry host has characters outside [A-Za-z0-9.-:]"));
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => write!(f, "{}:{t}@{d}", self.repository()),
            _ => f.write_str(&self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(r("busybox").name(), "docker.io/library/busybox:latest");
        assert_eq!(
            r("rancher/os-base:v1").name(),
            "docker.io/rancher/os-base:v1"
        );
        assert_eq!(r("localhost:5000/a/b:t").name(), "localhost:5000/a/b:t");
        assert_eq!(r("127.0.0.1:5000/x").api_reference(), "latest");
        assert_eq!(r("127.0.0.1:5000/x").hostname(), "127.0.0.1");
        assert_eq!(
            r("index.docker.io/library/alpine:3").name(),
            "docker.io/library/alpine:3"
        );
        assert_eq!(r("busybox").api_host(), "registry-1.docker.io");
        let d = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let pinned = r(&format!("quay.io/a/b@{d}"));
        assert_eq!(pinned.api_reference(), d);
        assert_eq!(pinned.tag, None);
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/rancher/os:v1"), "rancher/os:v1");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:b:c/d:",
            "x@sha256:12",
            "repo:-tag",
            "a/../b",
            "a/./b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }
}
