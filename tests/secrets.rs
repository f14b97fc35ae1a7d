//! Secrets never leak: the job and every hook get the same environment, without the password
//! whichever way it was given, and nothing elect prints carries it. Real redis-server with a
//! password.

mod support {
    pub mod certs;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
    pub mod programs;
    pub mod redis_server;
}

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::postgres_server;
use support::redis_server::{Options, RedisServer};

const PASSWORD: &str = "Hunter2-s3cret-pw";

/// Where the password comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Url,
    Environment,
    ConfigFile,
    BackendFile,
}

fn server() -> RedisServer {
    RedisServer::with(Options {
        password: Some(PASSWORD.into()),
        tls: false,
    })
}

/// `elect` with the backend and its password given the way `source` says, in `dir`.
fn elect(server: &RedisServer, source: Source, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ELECT_") {
            cmd.env_remove(key);
        }
    }
    let plain = format!("redis://127.0.0.1:{}", server.port);
    let full = server.url();
    // Present whatever the source, to see that they are withheld too. PGPASSWORD is not
    // elect's secret with a Redis backend: it reaches the job (a psql script may need it), and
    // so every hook alike.
    cmd.env("PGPASSWORD", "pg-passed-on")
        .env("NOTIFY_SOCKET", "/nonexistent/notify")
        .env("ELECT_ZK_PASSWORD", "zk-Hunter2")
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME");
    match source {
        Source::Url => {
            cmd.env("ELECT_BACKEND", &full);
        }
        Source::Environment => {
            cmd.env("ELECT_BACKEND", &plain)
                .env("ELECT_REDIS_PASSWORD", PASSWORD);
        }
        Source::ConfigFile => {
            let conf = dir.join("elect.conf");
            std::fs::write(
                &conf,
                format!("ELECT_BACKEND={plain}\nELECT_REDIS_PASSWORD={PASSWORD}\n"),
            )
            .unwrap();
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
            cmd.env("ELECT_CONFIG", &conf);
        }
        Source::BackendFile => {
            let file = dir.join("backend.url");
            std::fs::write(&file, format!("{full}\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            cmd.env("ELECT_BACKEND_FILE", &file);
        }
    }
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd
}

fn finish(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start elect");
    child.wait_with_output().expect("elect output")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The environment a process dumped with `env -0`.
fn dumped(path: &Path) -> Vec<(String, String)> {
    wait_for(path);
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let text = String::from_utf8_lossy(v);
            let (k, v) = text.split_once('=').unwrap_or((&text, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn assert_clean(what: &str, env: &[(String, String)], port: u16) {
    for (key, value) in env {
        assert!(
            !value.contains("Hunter2"),
            "{what}: {key} carries a secret: {value}"
        );
        assert!(
            !(key.starts_with("ELECT_") && key.ends_with("PASSWORD") || key == "NOTIFY_SOCKET"),
            "{what}: {key} must be withheld"
        );
    }
    let backend = env
        .iter()
        .find(|(k, _)| k == "ELECT_BACKEND")
        .map(|(_, v)| v.as_str());
    let redacted = [
        format!("redis://127.0.0.1:{port}"),
        format!("redis://:***@127.0.0.1:{port}"),
    ];
    assert!(
        backend.is_some_and(|b| redacted.iter().any(|r| r == b)),
        "{what}: ELECT_BACKEND is the redacted URL: {backend:?}"
    );
}

/// Strips the variables that name the event, to compare what is common.
fn common(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("ELECT_HELD")
                && !matches!(
                    k.as_str(),
                    "ELECT_LOSS_REASON"
                        | "ELECT_FENCING_TOKEN"
                        | "ELECT_HOLDER_ID"
                        | "PWD"
                        | "SHLVL"
                        | "_"
                )
        })
        .cloned()
        .collect();
    env.sort();
    env
}

fn every_hook_gets_the_jobs_environment(source: Source) {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lock = format!("secrets-{source:?}").to_lowercase();

    // The holder: the job and the on-acquired hook dump their environment; the job then waits
    // until its lease key is deleted, which makes the keeper declare the lease lost.
    let mut holder = elect(&server, source, d);
    holder.args([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "3s",
        "--grace",
        "1s",
        "--on-acquired",
        "env -0 > acquired.tmp && mv acquired.tmp acquired.env",
        "--on-lost",
        "env -0 > lost.tmp && mv lost.tmp lost.env",
        "--",
        "sh",
        "-c",
        "env -0 > job.tmp && mv job.tmp job.env; sleep 30",
    ]);
    let holder = holder
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = dumped(&d.join("job.env"));
    let acquired = dumped(&d.join("acquired.env"));

    // A contender is skipped: the on-busy hook.
    let mut busy = elect(&server, source, d);
    busy.args([
        "run",
        "--lock",
        &lock,
        "--on-busy",
        "env -0 > busy.tmp && mv busy.tmp busy.env",
        "--",
        "true",
    ]);
    let out = finish(busy);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let busy = dumped(&d.join("busy.env"));

    server.command(&["DEL", &format!("elect:{{{lock}}}")]);
    let lost = dumped(&d.join("lost.env"));
    let out = holder.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(76), "{out:?}");

    for (what, env) in [
        ("job", &job),
        ("on-acquired", &acquired),
        ("on-busy", &busy),
        ("on-lost", &lost),
    ] {
        assert_clean(&format!("{source:?} {what}"), env, server.port);
    }
    assert_eq!(common(&acquired), common(&job), "on-acquired vs job");
    assert_eq!(common(&lost), common(&job), "on-lost vs job");
    assert_eq!(common(&busy), common(&job), "on-busy vs job");
    for output in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(output).contains("Hunter2"));
    }
}

#[test]
fn hooks_get_the_jobs_environment_password_in_the_url() {
    every_hook_gets_the_jobs_environment(Source::Url);
}

#[test]
fn hooks_get_the_jobs_environment_password_in_the_environment() {
    every_hook_gets_the_jobs_environment(Source::Environment);
}

#[test]
fn hooks_get_the_jobs_environment_password_in_a_config_file() {
    every_hook_gets_the_jobs_environment(Source::ConfigFile);
}

#[test]
fn hooks_get_the_jobs_environment_password_in_a_backend_file() {
    every_hook_gets_the_jobs_environment(Source::BackendFile);
}

/// Every output of every command, for a URL that parses and for ones that do not.
#[test]
fn no_output_shows_the_password() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let port = server.port;
    let metrics = dir.path().join("metrics.prom");
    let urls = [
        server.url(),
        format!("redis://:{PASSWORD}@127.0.0.1:{port}/0?password={PASSWORD}"),
        format!("redis://:{PASSWORD}@127.0.0.1:99999"),
        format!("redis://:Hunter2/x@127.0.0.1:{port}"),
        format!("redis://:Hunter2?x@127.0.0.1:{port}"),
        format!("redis://:Hunter2#x@127.0.0.1:{port}"),
        format!("redis://:Hunter2@x@127.0.0.1:{port}"),
        format!("redis//:{PASSWORD}@127.0.0.1:{port}"),
        format!("mysql://u:{PASSWORD}@h/db"),
        format!("redis://127.0.0.1:99999?password={PASSWORD}"),
        format!("redis://:wrong-Hunter2@127.0.0.1:{port}"),
    ];
    let metrics_arg = metrics.to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &[
            "run",
            "--lock",
            "leak",
            "--metrics-file",
            metrics_arg,
            "--",
            "true",
        ],
        &["run", "-v", "--lock", "leak", "--", "true"],
        &["status"],
        &["release", "--lock", "leak", "--token", "1"],
        &["config"],
    ];
    for url in &urls {
        for args in commands {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
            cmd.env("ELECT_BACKEND", url)
                .env("HOME", dir.path())
                .env_remove("XDG_CONFIG_HOME")
                .args(args);
            let out = finish(cmd);
            let text = format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&metrics).unwrap_or_default()
            );
            assert!(
                !text.contains("Hunter2"),
                "elect {args:?} with {url:?} shows the password:\n{text}"
            );
            let malformed = url.contains("Hunter2/")
                || url.contains("Hunter2?")
                || url.contains("Hunter2#")
                || url.contains("Hunter2@x");
            if malformed && args[0] != "config" {
                assert_eq!(out.status.code(), Some(2), "{args:?} {url}: {text}");
                assert!(text.contains("unencoded reserved character"), "{text}");
            }
        }
    }
}

/// PostgreSQL's own variable: read by elect, so withheld from the job and every hook.
#[test]
fn pgpassword_reaches_neither_the_job_nor_a_hook() {
    let server = postgres_server::PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        postgres_server::USER,
        server.port,
        postgres_server::DATABASE
    );
    let elect = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
        cmd.env("ELECT_BACKEND", &url)
            .env("PGPASSWORD", postgres_server::PASSWORD)
            .env("HOME", d)
            .env_remove("XDG_CONFIG_HOME")
            .current_dir(d)
            .stdin(Stdio::null());
        cmd
    };
    let mut holder = elect();
    holder.args([
        "run",
        "--lock",
        "pg-secrets",
        "--on-acquired",
        "env -0 > acquired.tmp && mv acquired.tmp acquired.env",
        "--",
        "sh",
        "-c",
        "env -0 > job.tmp && mv job.tmp job.env; while [ ! -e busy.env ]; do sleep 0.05; done; sleep 0.2",
    ]);
    let holder = holder
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = dumped(&d.join("job.env"));
    let acquired = dumped(&d.join("acquired.env"));
    let mut busy = elect();
    busy.args([
        "run",
        "--lock",
        "pg-secrets",
        "--on-busy",
        "env -0 > busy.tmp && mv busy.tmp busy.env",
        "--",
        "true",
    ]);
    assert_eq!(finish(busy).status.code(), Some(75));
    let busy = dumped(&d.join("busy.env"));
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for (what, env) in [
        ("job", &job),
        ("on-acquired", &acquired),
        ("on-busy", &busy),
    ] {
        for (key, value) in env.iter() {
            assert!(
                key != "PGPASSWORD" && !value.contains(postgres_server::PASSWORD),
                "{what}: {key}={value}"
            );
        }
    }
    assert_eq!(common(&acquired), common(&job), "on-acquired vs job");
    assert_eq!(common(&busy), common(&job), "on-busy vs job");
}
