//! A real `redis-server` for tests: loopback only, a free port, data in a temporary directory,
//! killed on drop. A missing binary is a test failure, never a silent pass.
//!
//! TLS servers get certificates made at test time with the `openssl` command: a CA, and a server
//! certificate for 127.0.0.1 and localhost signed by it.
//!
//! The binary's `mod support` block declares the `certs`, `net`, `process` and `programs` modules
//! beside this one.

// A harness: each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::signal;
use super::{certs, net, programs};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    tls: bool,
}

#[derive(Default)]
pub struct Options {
    pub password: Option<String>,
    pub tls: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> Self {
        let binary = programs::require(
            "redis-server",
            "install the redis-server package (apt-get install redis-server)",
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = net::free_port();
        let mut cmd = Command::new(binary);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        if options.tls {
            certs::ca_and_server(dir.path(), "localhost", certs::LOOPBACK);
            cmd.arg("--port")
                .arg("0")
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.path().join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.path().join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.path().join("ca.crt"))
                .arg("--tls-auth-clients")
                .arg("no");
        } else {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some(password) = &options.password {
            cmd.arg("--requirepass").arg(password);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Self {
            child,
            port,
            dir,
            password: options.password,
            tls: options.tls,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let log = self.dir.path().join("redis.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not become ready on port {}; its log:\n{}",
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://`), with the password if there is one.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Freezes the server: it keeps its sockets but answers nothing.
    pub fn stop(&self) {
        assert!(signal(self.pid(), "STOP"), "SIGSTOP to {}", self.pid());
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), "CONT"), "SIGCONT to {}", self.pid());
    }

    /// Runs one command through a plain socket (no TLS servers), for checks from outside elect.
    pub fn command(&self, args: &[&str]) -> String {
        assert!(!self.tls, "command() speaks plain RESP only");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        let mut request = String::new();
        let mut send = |args: &[&str]| {
            request.push_str(&format!("*{}\r\n", args.len()));
            for a in args {
                request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        };
        if let Some(password) = &self.password {
            send(&["AUTH", password]);
        }
        send(args);
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // Good enough for the short replies tests ask for: read until the server pauses.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set timeout");
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
