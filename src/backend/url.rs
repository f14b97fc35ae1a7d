//! Backend URLs: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?key=value&...]`.
//!
//! A small parser of our own rather than the `url` crate: etcd URLs carry several hosts, and
//! every backend needs the same redaction, which is simplest where the parts are already apart.

use std::fmt;

use super::BackendError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    File,
    Redis,
    Rediss,
    Etcd,
    Etcds,
    Postgres,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Redis | Scheme::Rediss => "redis",
            Scheme::Etcd | Scheme::Etcds => "etcd",
            Scheme::Postgres => "postgres",
        }
    }
}

/// A parsed backend URL. The password is kept apart so that nothing prints it by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    scheme: Scheme,
    scheme_text: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `host[:port]` entries; empty for `file://`.
    pub hosts: Vec<HostPort>,
    /// Percent-decoded path, with its leading `/`; empty when absent.
    pub path: String,
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl BackendUrl {
    pub fn parse(text: &str) -> Result<Self, BackendError> {
        let bad = |why: &str| {
            BackendError::Config(format!("invalid backend URL {:?}: {why}", redact_raw(text)))
        };
        let (scheme_text, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://..., e.g. redis://host:6379"))?;
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "file" => Scheme::File,
            "redis" => Scheme::Redis,
            "rediss" => Scheme::Rediss,
            "etcd" | "http" => Scheme::Etcd,
            "etcds" | "https" => Scheme::Etcds,
            "postgres" | "postgresql" => Scheme::Postgres,
            _ => {
                return Err(bad(&format!(
                    "unknown scheme {scheme_text:?} (known: file, redis, rediss, etcd, etcds, postgres, postgresql)"
                )))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, parse_query(query).map_err(|e| bad(&e))?),
            None => (rest, Vec::new()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = decode(user).map_err(|e| bad(&e))?;
                let password = password.map(decode).transpose().map_err(|e| bad(&e))?;
                ((!user.is_empty()).then_some(user), password)
            }
        };
        let hosts = if hostlist.is_empty() {
            Vec::new()
        } else {
            hostlist
                .split(',')
                .map(|hp| parse_host_port(hp).map_err(|e| bad(&e)))
                .collect::<Result<_, _>>()?
        };
        if scheme != Scheme::File && hosts.is_empty() {
            return Err(bad("no host given"));
        }
        if scheme == Scheme::File && !hosts.is_empty() && hosts[0].host != "localhost" {
            return Err(bad(
                "a file URL names a local directory: file:///path/to/dir",
            ));
        }
        Ok(Self {
            scheme,
            scheme_text: scheme_text.to_ascii_lowercase(),
            user,
            password,
            hosts,
            path: decode(path).map_err(|e| bad(&e))?,
            query,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The URL with any password replaced by `***`, fit for logs, status and the child.
    pub fn redacted(&self) -> String {
        let mut out = format!("{}://", self.scheme_text);
        if let Some(user) = &self.user {
            out.push_str(user);
        }
        if self.password.is_some() {
            out.push_str(":***");
        }
        if self.user.is_some() || self.password.is_some() {
            out.push('@');
        }
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                let host = if h.host.contains(':') {
                    format!("[{}]", h.host)
                } else {
                    h.host.clone()
                };
                match h.port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                }
            })
            .collect();
        out.push_str(&hosts.join(","));
        out.push_str(&self.path);
        let query: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| {
                if is_secret_key(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query.join("&"));
        }
        out
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.contains("token")
}

/// Redacts any text that may be a URL, even one that does not parse.
pub fn redact(text: &str) -> String {
    match BackendUrl::parse(text) {
        Ok(url) => url.redacted(),
        Err(_) => redact_raw(text),
    }
}

/// Hides everything between `://` and the last `@` of text that does not parse as a URL.
fn redact_raw(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}***{}", &text[..start + 3], &text[at..])
        }
        _ => text.to_owned(),
    }
}

fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in host {text:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("empty host in {text:?}"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in {text:?}"))
        })
        .transpose()?;
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid percent-encoding".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let url = BackendUrl::parse("redis://app:s%40cret@cache:6380/2").unwrap();
        assert_eq!(url.scheme(), Scheme::Redis);
        assert_eq!(url.user.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        assert_eq!(url.hosts[0].port, Some(6380));
        assert_eq!(url.path, "/2");
        assert_eq!(url.redacted(), "redis://app:***@cache:6380/2");
        assert!(!format!("{url:?}").contains("cret"));
    }

    #[test]
    fn several_hosts_and_query() {
        let url =
            BackendUrl::parse("etcd://a:2379,b:2379,[::1]:2379?prefix=/x/&password=p").unwrap();
        assert_eq!(url.hosts.len(), 3);
        assert_eq!(url.hosts[2].host, "::1");
        assert_eq!(url.query_value("prefix"), Some("/x/"));
        assert_eq!(
            url.redacted(),
            "etcd://a:2379,b:2379,[::1]:2379?prefix=/x/&password=***"
        );
    }

    #[test]
    fn file_urls() {
        let url = BackendUrl::parse("file:///var/lock/elect").unwrap();
        assert_eq!(url.path, "/var/lock/elect");
        assert!(BackendUrl::parse("file://remote/x").is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in ["zk://x", "redis://", "redis:/x", "redis://h:99999", "nope"] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
        let err = BackendUrl::parse("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }
}
