//! A real ZooKeeper for tests (Debian's `zookeeper` package, run as `java ... QuorumPeerMain`):
//! loopback only, free ports, data in a directory of its own, killed on drop.
//!
//! ZooKeeper is Java and takes a second or two to start, so a test binary shares one server
//! ([`ZkServer::shared`]) and each test takes a base path of its own in it
//! ([`ZkServer::url_under`]), which makes its namespace private. The shared server is started
//! from a thread that lives as long as the test process, with `PR_SET_PDEATHSIG`, so it dies
//! with the process (a static is never dropped). [`ZkServer::ensemble`] starts three servers
//! for the fault tests.
//!
//! Every server has `tickTime=250` with session timeouts allowed from 500 ms to 60 s, so that
//! the tests' short ttls (1-3 s) and elect's default (15 s) are both granted as asked.
//!
//! The binary's `mod support` block declares the `net`, `process` and `programs` modules beside
//! this one.

// A harness: each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::net::retry;
use super::process::signal;
use super::{net, programs};

/// Where Debian's package puts the server's jar (its manifest names the other jars).
const JAR: &str = "/usr/share/java/zookeeper.jar";
pub const TICK_MS: u64 = 250;
pub const MIN_SESSION_MS: u64 = 500;
pub const MAX_SESSION_MS: u64 = 60_000;

pub struct ZkServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Removed on drop (the shared server keeps its directory; see [`ZkServer::shared`]).
    owned_dir: Option<tempfile::TempDir>,
}

/// One member of an ensemble: its client port and its two quorum ports.
#[derive(Clone, Copy)]
struct Member {
    id: usize,
    port: u16,
    peer: u16,
    election: u16,
}

impl ZkServer {
    /// A server of its own, for tests that stop or kill it.
    pub fn start() -> Self {
        retry(3, || {
            let dir = tempfile::tempdir().expect("temporary directory");
            let member = Member {
                id: 1,
                port: net::free_port(),
                peer: 0,
                election: 0,
            };
            let mut server = Self::spawn(dir.path().to_owned(), member, &[], false);
            server.owned_dir = Some(dir);
            server
                .wait_serving(Duration::from_secs(30))
                .map(|()| server)
        })
    }

    /// The test binary's one server, started on first use and killed when the process ends.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<ZkServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::channel();
            // PR_SET_PDEATHSIG fires when the thread that forked dies: this one never does.
            std::thread::spawn(move || {
                let server = retry(3, || {
                    let dir = shared_dir();
                    let member = Member {
                        id: 1,
                        port: net::free_port(),
                        peer: 0,
                        election: 0,
                    };
                    let mut server = Self::spawn(dir, member, &[], true);
                    server
                        .wait_serving(Duration::from_secs(30))
                        .map(|()| server)
                });
                sender.send(server).expect("hand the server over");
                loop {
                    std::thread::park();
                }
            });
            receiver.recv().expect("the shared ZooKeeper started")
        })
    }

    /// `n` servers forming one ensemble, every one serving.
    pub fn ensemble(n: usize) -> Vec<Self> {
        retry(3, || {
            let members: Vec<Member> = (1..=n)
                .map(|id| Member {
                    id,
                    port: net::free_port(),
                    peer: net::free_port(),
                    election: net::free_port(),
                })
                .collect();
            let mut servers: Vec<Self> = members
                .iter()
                .map(|m| {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let mut server = Self::spawn(dir.path().to_owned(), *m, &members, false);
                    server.owned_dir = Some(dir);
                    server
                })
                .collect();
            for server in &mut servers {
                server.wait_serving(Duration::from_secs(60))?;
            }
            Ok(servers)
        })
    }

    fn spawn(dir: PathBuf, me: Member, members: &[Member], die_with_parent: bool) -> Self {
        let (java, args) = command(&dir, me, members);
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let mut cmd = Command::new(java);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if die_with_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn().expect("start ZooKeeper");
        Self {
            child: Some(child),
            port: me.port,
            dir,
            owned_dir: None,
        }
    }

    /// Waits until the server serves clients (in an ensemble: has joined a quorum).
    fn wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "ZooKeeper exited at start ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if serving(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "ZooKeeper did not serve on port {} within {timeout:?}; its log:\n{}",
            self.port,
            self.log()
        ))
    }

    /// A four-letter-word command's answer (`srvr`, `ruok`, `cons`); empty if none.
    pub fn four_letters(&self, word: &str) -> String {
        four_letters(self.port, word)
    }

    /// `leader`, `follower` or `standalone`.
    pub fn mode(&self) -> String {
        self.four_letters("srvr")
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("zk://{}", self.endpoint())
    }

    /// The server's URL with locks under `/base` (a namespace of the caller's own).
    pub fn url_under(&self, base: &str) -> String {
        format!("{}/{base}", self.url())
    }

    /// Freezes the server: it keeps its sockets but answers nothing.
    pub fn stop(&self) {
        assert!(signal(self.pid(), "STOP"), "SIGSTOP to {}", self.pid());
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), "CONT"), "SIGCONT to {}", self.pid());
    }

    /// Kills the server and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The program and arguments of a server with its data in `dir` (its `zoo.cfg` written there),
/// serving clients on `port`: for a harness that starts and restarts it itself.
pub fn standalone_command(dir: &Path, port: u16) -> (PathBuf, Vec<String>) {
    let me = Member {
        id: 1,
        port,
        peer: 0,
        election: 0,
    };
    command(dir, me, &[])
}

fn command(dir: &Path, me: Member, members: &[Member]) -> (PathBuf, Vec<String>) {
    let java = programs::require(
        "java",
        "install the zookeeper package (apt-get install zookeeper), which brings a Java runtime",
    );
    assert!(
        Path::new(JAR).is_file(),
        "{JAR} not found: install the zookeeper package (apt-get install zookeeper)"
    );
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data directory");
    let mut config = format!(
        "tickTime={TICK_MS}\n\
         minSessionTimeout={MIN_SESSION_MS}\n\
         maxSessionTimeout={MAX_SESSION_MS}\n\
         initLimit=20\nsyncLimit=8\n\
         dataDir={}\n\
         clientPort={}\nclientPortAddress=127.0.0.1\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=*\n\
         maxClientCnxns=0\n\
         preAllocSize=64\nsnapCount=10000\n\
         autopurge.purgeInterval=0\n",
        data.display(),
        me.port
    );
    if !members.is_empty() {
        std::fs::write(data.join("myid"), format!("{}\n", me.id)).expect("myid");
        for m in members {
            config.push_str(&format!(
                "server.{}=127.0.0.1:{}:{}\n",
                m.id, m.peer, m.election
            ));
        }
    }
    let config_file = dir.join("zoo.cfg");
    std::fs::write(&config_file, config).expect("zoo.cfg");
    let args = [
        "-Xmx128m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Xshare:auto",
        "-Dzookeeper.jmx.log4j.disable=true",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([
        format!("-Dzookeeper.log.dir={}", dir.display()),
        "-cp".to_owned(),
        JAR.to_owned(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_owned(),
        config_file.display().to_string(),
    ])
    .collect();
    (java, args)
}

/// Whether the server on `port` serves clients (in an ensemble: has joined a quorum).
pub fn serving(port: u16) -> bool {
    four_letters(port, "srvr").contains("Mode:")
}

fn four_letters(port: u16, word: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    if stream.write_all(word.as_bytes()).is_ok() {
        let _ = stream.read_to_string(&mut answer);
    }
    answer
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shared server's directory, `elect-zk-<pid>` under the temporary directory: a static is
/// never dropped, so directories of test processes that are gone are removed here instead.
fn shared_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("elect-zk-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("elect-zk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("shared ZooKeeper directory");
    dir
}
