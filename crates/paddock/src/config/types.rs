//! Validated newtypes for values that end up in files and command lines.
//!
//! A hostname goes into /etc/hostname and /etc/hosts, an owner into chown, a module name onto
//! modprobe's command line: a newline or a NUL smuggled into one of them would inject a line or
//! an argument. Each type checks its value when the config is decoded, so the problem is
//! reported with its key and the rest of the config still applies.

use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};

fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d)
}

/// A string with no line break and no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Line(String);

impl Line {
    pub fn new(s: impl Into<String>) -> Result<Line, String> {
        let s = s.into();
        if let Some(c) = s.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
            return Err(format!("must be a single line, but contains {c:?}"));
        }
        Ok(Line(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Line {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Line::new(string_like(d)?).map_err(de::Error::custom)
    }
}

/// A hostname: at most 253 characters, dot-separated labels of 1 to 63 letters, digits and
/// hyphens, none starting or ending with a hyphen (RFC 1123).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

impl Hostname {
    pub fn new(s: impl Into<String>) -> Result<Hostname, String> {
        let s = s.into();
        if s.is_empty() {
            return Err("hostname is empty".into());
        }
        if s.len() > 253 {
            return Err(format!(
                "hostname is {} characters long, more than 253",
                s.len()
            ));
        }
        for label in s.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!(
                    "hostname {s:?}: each dot-separated part must be 1 to 63 characters"
                ));
            }
            if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!(
                    "hostname {s:?}: only letters, digits, '-' and '.' are allowed"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!(
                    "hostname {s:?}: a part may not start or end with '-'"
                ));
            }
        }
        Ok(Hostname(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Hostname::new(string_like(d)?).map_err(de::Error::custom)
    }
}

/// An absolute path with no line break, NUL or `..` component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(String);

impl AbsPath {
    pub fn new(s: impl Into<String>) -> Result<AbsPath, String> {
        let s = s.into();
        Line::new(s.clone())?;
        if !s.starts_with('/') {
            return Err(format!("path {s:?} is not absolute"));
        }
        if s.split('/').any(|c| c == "..") {
            return Err(format!("path {s:?} contains '..'"));
        }
        if s.len() > 4096 {
            return Err("path is longer than 4096 bytes".into());
        }
        Ok(AbsPath(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AbsPath::new(string_like(d)?).map_err(de::Error::custom)
    }
}

/// File permissions. YAML 1.1 already read `0755` as the octal number 493; a string is read as
/// octal (`"0644"`, `"644"`, `"0o644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    pub fn parse(s: &str) -> Result<FileMode, String> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        let m = u32::from_str_radix(digits, 8)
            .map_err(|_| format!("permissions {s:?} are not an octal number"))?;
        FileMode::from_number(u64::from(m))
    }

    fn from_number(n: u64) -> Result<FileMode, String> {
        if n > 0o7777 {
            return Err(format!("permissions {n:#o} are more than 0o7777"));
        }
        Ok(FileMode(n as u32))
    }

    /// The usual spelling, `0644`.
    pub fn to_octal_string(self) -> String {
        format!("{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("octal permissions like \"0644\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
                FileMode::from_number(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                FileMode::from_number(
                    u64::try_from(v).map_err(|_| E::custom("permissions are negative"))?,
                )
                .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                FileMode::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in whole seconds: a number (`60`) or a number with a unit (`90s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl Seconds {
    pub fn parse(s: &str) -> Result<Seconds, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 's')) => (&t[..i], 1),
            Some((i, 'm')) => (&t[..i], 60),
            Some((i, 'h')) => (&t[..i], 3600),
            _ => (t, 1),
        };
        let n: u64 = num
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (like 60, 90s, 5m or 1h)"))?;
        n.checked_mul(mult)
            .map(Seconds)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 60, 90s, 5m or 1h")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                Seconds::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One value or a list of them (`rancher.autologin` may be given once or several times).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element()? {
                    out.push(x);
                }
                Ok(OneOrMany(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|x| OneOrMany(vec![x]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(Hostname::new("rancher-test").is_ok());
        assert!(Hostname::new("a.b.example.com").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "a\nb",
            "a..b",
            "x_y",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(Hostname::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lines_and_paths() {
        assert!(Line::new("a b").is_ok());
        assert!(Line::new("a\nb").is_err());
        assert!(Line::new("a\0").is_err());
        assert!(AbsPath::new("/etc/docker/certs.d/host:5000/ca.crt").is_ok());
        assert!(AbsPath::new("etc/x").is_err());
        assert!(AbsPath::new("/etc/../x").is_err());
    }

    #[test]
    fn modes_and_durations() {
        assert_eq!(FileMode::parse("0644").unwrap().0, 0o644);
        assert_eq!(FileMode::parse("755").unwrap().0, 0o755);
        assert!(FileMode::parse("0999").is_err());
        assert!(FileMode::parse("77777").is_err());
        assert_eq!(FileMode(0o755).to_octal_string(), "0755");
        assert_eq!(Seconds::parse("90s").unwrap().0, 90);
        assert_eq!(Seconds::parse("5m").unwrap().0, 300);
        assert_eq!(Seconds::parse("60").unwrap().0, 60);
        assert!(Seconds::parse("5x").is_err());
        assert!(Seconds::parse("99999999999999999999h").is_err());
    }
}
