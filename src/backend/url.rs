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
    /// `redis+sentinel://`: the primary that the named sentinels report.
    RedisSentinel,
    RedissSentinel,
    /// `redis+cluster://`: a Redis Cluster, reached through its seed nodes.
    RedisCluster,
    RedissCluster,
    Etcd,
    Etcds,
    Postgres,
    Zk,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Redis
            | Scheme::Rediss
            | Scheme::RedisSentinel
            | Scheme::RedissSentinel
            | Scheme::RedisCluster
            | Scheme::RedissCluster => "redis",
            Scheme::Etcd | Scheme::Etcds => "etcd",
            Scheme::Postgres => "postgres",
            Scheme::Zk => "zookeeper",
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
            "redis+sentinel" => Scheme::RedisSentinel,
            "rediss+sentinel" => Scheme::RedissSentinel,
            "redis+cluster" => Scheme::RedisCluster,
            "rediss+cluster" => Scheme::RedissCluster,
            "etcd" | "http" => Scheme::Etcd,
            "etcds" | "https" => Scheme::Etcds,
            "postgres" | "postgresql" => Scheme::Postgres,
            "zk" | "zookeeper" => Scheme::Zk,
            _ => {
                return Err(bad(&format!(
                    "unknown scheme {scheme_text:?} (known: file, redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster, etcd, etcds, postgres, postgresql, zk)"
                )))
            }
        };
        if scheme != Scheme::File {
            check_userinfo(rest).map_err(&bad)?;
        }
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

    /// Whether the URL carries a password or a secret-named query value.
    pub fn holds_secret(&self) -> bool {
        self.password.is_some() || self.query.iter().any(|(k, _)| is_secret_key(k))
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

/// The user and password end at the last `@`; any `/`, `?`, `#` or `@` before it means a
/// reserved character was left unencoded in them (the URL would be split in the wrong place, and
/// a piece of the password could end up in a host name, a path or an error message). Refused,
/// without echoing any of it. The cost: an `@` elsewhere in a network URL (an etcd prefix) must
/// be written `%40`.
fn check_userinfo(after_scheme: &str) -> Result<(), &'static str> {
    match after_scheme.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(['/', '?', '#', '@']) => Err(
            "the user or password holds an unencoded reserved character (/ ? @ #); \
             percent-encode them (%2F %3F %40 %23), or give the password in ELECT_*_PASSWORD",
        ),
        _ => Ok(()),
    }
}

pub(crate) fn is_secret_key(key: &str) -> bool {
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

/// Redacts text that does not parse as a URL: everything between `://` and the last `@`, and
/// the value of every secret-named `key=value` after a `?`. Text without `://` is hidden whole:
/// nothing tells which part of it might be a password (a backend file holding only one).
fn redact_raw(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return "***".to_owned();
    };
    let (head, tail) = match text[start..].rfind('@') {
        Some(at) => (format!("{}***", &text[..start]), &text[start + at..]),
        None => (String::new(), text),
    };
    let Some((before, query)) = tail.split_once('?') else {
        return head + tail;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_key(k) || decode(k).is_ok_and(|k| is_secret_key(&k)) => {
                format!("{k}=***")
            }
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}{before}?{}", query.join("&"))
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
    fn unencoded_reserved_characters_in_a_password_are_refused_unechoed() {
        for text in [
            "redis://app:hun/ter2@cache:6379/0",
            "redis://app:hun?ter2@cache",
            "redis://app:hun#ter2@cache",
            "redis://app:hun@ter2@cache",
            "postgres://app:hun/ter2@db/app?sslmode=disable",
            "etcd://root:hun?ter2@a:2379,b:2379",
        ] {
            let err = BackendUrl::parse(text).unwrap_err().to_string();
            assert!(err.contains("unencoded reserved character"), "{err}");
            assert!(!err.contains("hun") && !err.contains("ter2"), "{err}");
            assert!(!redact(text).contains("hun"), "{}", redact(text));
        }
        // Encoded, the same password parses.
        let url = BackendUrl::parse("redis://app:pa%2F%3F%23%40ss@cache").unwrap();
        assert_eq!(url.password.as_deref(), Some("pa/?#@ss"));
        // A file path may hold an @.
        assert!(BackendUrl::parse("file:///run/elect@x").is_ok());
    }

    #[test]
    fn text_that_is_no_url_is_redacted_too() {
        for (text, secret) in [
            ("redis//app:hunter2@cache", "hunter2"),
            ("hunter2", "hunter2"),
            ("redis:/:hunter2", "hunter2"),
            ("redis://cache:99999?password=hunter2", "hunter2"),
            ("redis://cache:99999?a=1&Pass%77ord=hunter2", "hunter2"),
            ("mysql://u:hunter2@h/db?token=t0ken", "t0ken"),
        ] {
            let shown = redact(text);
            assert!(!shown.contains(secret), "{text} -> {shown}");
            let err = BackendUrl::parse(text).unwrap_err().to_string();
            assert!(!err.contains(secret), "{text} -> {err}");
        }
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in ["zk://", "redis://", "redis:/x", "redis://h:99999", "nope"] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
        let err = BackendUrl::parse("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    /// Percent-encodes every byte outside RFC 3986's unreserved set.
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Passwords of printable ASCII and a little beyond, with a fixed start so that a test
        /// cannot pass by the password being a piece of the scheme or the host. No `*`, which is
        /// what redaction prints.
        fn password() -> impl Strategy<Value = String> {
            "[!-)+-~ é€]{6,24}".prop_map(|p| format!("Q{p}"))
        }

        fn url_forms() -> impl Strategy<Value = (&'static str, &'static str)> {
            prop::sample::select(vec![
                ("redis", "cache:6379/0"),
                ("rediss", "cache"),
                ("etcd", "a:2379,b:2379?prefix=jobs/"),
                ("postgres", "db/app?sslmode=disable"),
                ("postgresql", "[::1]:5432/app"),
                ("zk", "a:2181,b:2181/apps/locks"),
            ])
        }

        fn assert_hidden(password: &str, outputs: &[String]) -> Result<(), TestCaseError> {
            for out in outputs {
                prop_assert!(!out.contains(password), "{out:?} shows {password:?}");
            }
            Ok(())
        }

        fn outputs_of(text: &str) -> Vec<String> {
            let mut outputs = vec![redact(text)];
            match BackendUrl::parse(text) {
                Ok(url) => outputs.extend([url.redacted(), format!("{url:?}")]),
                Err(e) => outputs.extend([e.to_string(), e.into_failure(&redact(text)).message]),
            }
            let config = crate::config::BackendConfig {
                url: Some(text.to_owned()),
                options: Default::default(),
            };
            outputs.push(format!("{config:?}"));
            outputs.push(config.describe());
            outputs.push(crate::conffile::show_with(&Default::default(), |key| {
                (key == "ELECT_BACKEND").then(|| text.to_owned())
            }));
            outputs
        }

        proptest! {
            #[test]
            fn an_encoded_password_parses_and_never_shows(
                password in password(),
                (scheme, rest) in url_forms(),
            ) {
                let text = format!("{scheme}://app:{}@{rest}", encode(&password));
                let url = BackendUrl::parse(&text).unwrap();
                prop_assert_eq!(url.password.as_deref(), Some(password.as_str()));
                assert_hidden(&password, &outputs_of(&text))?;
            }

            #[test]
            fn an_unencoded_reserved_character_is_refused_unechoed(
                password in password(),
                reserved in prop::sample::select(vec!['/', '?', '#', '@']),
                at in any::<prop::sample::Index>(),
                (scheme, rest) in url_forms(),
            ) {
                let mut password = password;
                let at = at.index(password.chars().count() + 1);
                let byte = password.char_indices().nth(at).map_or(password.len(), |(i, _)| i);
                password.insert(byte, reserved);
                let text = format!("{scheme}://app:{password}@{rest}");
                prop_assert!(BackendUrl::parse(&text).is_err());
                assert_hidden(&password, &outputs_of(&text))?;
                // Nor any piece of it long enough to matter.
                for piece in password.split(['/', '?', '#', '@']).filter(|p| p.len() >= 6) {
                    assert_hidden(piece, &outputs_of(&text))?;
                }
            }

            #[test]
            fn a_secret_query_value_never_shows(
                secret in "[A-Za-z0-9]{10,20}",
                key in prop::sample::select(vec!["password", "sslpassword", "token", "client_secret"]),
                broken in any::<bool>(),
            ) {
                let port = if broken { "99999" } else { "6379" };
                let text = format!("redis://cache:{port}/0?{key}={secret}&x=1");
                assert_hidden(&secret, &outputs_of(&text))?;
            }
        }
    }
}
