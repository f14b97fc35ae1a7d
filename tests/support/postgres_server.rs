//! A real PostgreSQL cluster for tests: a cluster of its own in a temporary directory, loopback
//! only, a free port, stopped on drop. A missing binary is a test failure, never a silent pass.
//!
//! initdb takes seconds on a busy machine, so a test binary runs it once, into a template that it
//! removes when it exits, and each cluster starts from a copy of that template (a fraction of a
//! second): every test still has a cluster, a port and a directory of its own.
//!
//! PostgreSQL refuses to run as root, so the cluster runs as the unprivileged `postgres` user
//! (which the Debian package creates) through `setpriv`; the temporary directory is handed to
//! that user. Setup statements go through `psql` over the cluster's Unix socket as the superuser
//! (trusted locally); elect connects over TCP with a password (scram-sha-256).
//!
//! The binary's `mod support` block declares the `certs`, `net` and `process` modules beside this
//! one.

// A harness: each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::signal;
use super::{certs, net};

/// The role and database elect uses in tests.
pub const USER: &str = "elect";
pub const PASSWORD: &str = "s3cret-pw";
pub const DATABASE: &str = "elect";
/// The unprivileged account the server runs as.
const OS_USER: &str = "postgres";

pub struct PostgresServer {
    /// The postmaster (started through setpriv, which execs it).
    child: Child,
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// A fresh cluster with the role `elect` (password [`PASSWORD`]) owning the database `elect`.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), with TLS on: a certificate for `san` (an openssl
    /// subjectAltName such as `DNS:db.example`), signed by a CA in [`ca_file`](Self::ca_file).
    pub fn start_tls(san: &str) -> Self {
        Self::start_with(Some(san))
    }

    fn start_with(tls_san: Option<&str>) -> Self {
        let bin = binaries();
        let dir = tempfile::Builder::new()
            .prefix("elect-pg-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        hand_over(dir.path());
        let data = dir.path().join("data");
        copy_template(&bin, &data);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        let mut extra = Vec::new();
        if let Some(san) = tls_san {
            certs::ca_and_server(dir.path(), "elect test server", san);
            for name in ["server.crt", "server.key"] {
                std::fs::copy(dir.path().join(name), data.join(name)).expect("copy certificate");
            }
            hand_over(&data.join("server.crt"));
            hand_over(&data.join("server.key"));
            extra.extend([
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
            ]);
        }
        let server = Self::launch(bin, dir, &extra);
        server.psql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        // CREATE DATABASE cannot share a transaction (one `psql -c`) with anything.
        server.psql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"));
        server
    }

    /// Starts the cluster in `dir/data` on a free port and waits until it accepts connections.
    fn launch(bin: PathBuf, dir: tempfile::TempDir, settings: &[&str]) -> Self {
        let port = net::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("create log");
        let mut all = vec![
            "synchronous_commit=off",
            "wal_level=replica",
            "max_wal_senders=4",
        ];
        all.extend_from_slice(settings);
        let child = postmaster(&bin, &dir.path().join("data"), port, dir.path(), &all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let server = Self {
            child,
            port,
            bin,
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if is_ready(&self.bin, self.dir.path(), self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not become ready on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A standby of this cluster (pg_basebackup -R), running on its own port.
    pub fn standby(&self) -> PostgresServer {
        let dir = tempfile::Builder::new()
            .prefix("elect-pg-standby-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        hand_over(dir.path());
        let out = as_postgres(&self.bin.join("pg_basebackup"))
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::launch(self.bin.clone(), dir, &[])
    }

    /// The CA that signed the certificate of a [`start_tls`](Self::start_tls) server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `postgres://elect:PASSWORD@127.0.0.1:PORT/elect?sslmode=disable`.
    pub fn url(&self) -> String {
        self.url_for(USER, PASSWORD, DATABASE)
    }

    pub fn url_for(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL as the superuser through the Unix socket; returns the unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = as_postgres(&self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", database, "-X", "-q", "-t", "-A"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The postmaster's pid, from its pid file.
    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .expect("read postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid in postmaster.pid")
    }

    /// The postmaster and every backend and helper process it started.
    pub fn processes(&self) -> Vec<i32> {
        let postmaster = self.postmaster_pid();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Freezes the whole cluster: its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    /// Signals the postmaster and each of its children. A backend that ends between the listing
    /// and its signal (a client hanging up) is no error; the postmaster must take it.
    fn signal_all(&self, sig: &str) {
        let signal = match sig {
            "-STOP" => nix::sys::signal::Signal::SIGSTOP,
            "-CONT" => nix::sys::signal::Signal::SIGCONT,
            other => panic!("no such signal here: {other}"),
        };
        let postmaster = self.postmaster_pid();
        for pid in self.processes() {
            let sent = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            assert!(
                sent.is_ok() || pid != postmaster,
                "kill {sig} of the postmaster {pid}: {sent:?}"
            );
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A frozen cluster cannot shut down.
        for pid in self.processes() {
            signal(pid, "CONT");
        }
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest installed server's `bin` directory.
pub fn binaries() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install the \
             postgresql package (apt-get install postgresql)"
        ),
    }
}

/// The directory of the template cluster, once made.
static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();

/// Puts a fresh cluster, as initdb makes it, at `data`: a copy of this process's template, which
/// the first call makes.
fn copy_template(bin: &Path, data: &Path) {
    let template = TEMPLATE.get_or_init(|| make_template(bin));
    // cp -a keeps the owner (the server's account) and the modes the server insists on.
    let out = Command::new("cp")
        .arg("-a")
        .arg(template.join("data"))
        .arg(data)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "copying the template cluster failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs initdb into a directory that lives until the process exits.
fn make_template(bin: &Path) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("elect-pg-template-")
        .tempdir_in("/tmp")
        .expect("temporary directory")
        .keep();
    hand_over(&dir);
    extern "C" fn remove_template() {
        if let Some(dir) = TEMPLATE.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // A static is never dropped: the C library's exit handlers remove the template, whether the
    // tests pass (main returns) or fail (the harness calls exit).
    // SAFETY: the handler is a plain function that touches only the initialised static.
    let registered = unsafe { nix::libc::atexit(remove_template) };
    assert_eq!(registered, 0, "atexit failed");
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("run initdb");
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// `postgres` (as the server's account) for the cluster in `data`, on 127.0.0.1:`port` and a Unix
/// socket in `sockets`, with the settings every test cluster has and then `settings`.
pub fn postmaster(
    bin: &Path,
    data: &Path,
    port: u16,
    sockets: &Path,
    settings: &[&str],
) -> Command {
    let mut cmd = as_postgres(&bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(sockets)
        .args(
            [
                "listen_addresses=127.0.0.1",
                "password_encryption=scram-sha-256",
                "fsync=off",
                "full_page_writes=off",
                "max_connections=50",
                "shared_buffers=16MB",
            ]
            .iter()
            .chain(settings)
            .flat_map(|s| ["-c", s]),
        );
    cmd
}

/// Whether the cluster on `port` (its socket in `sockets`) accepts connections, by `pg_isready`.
pub fn is_ready(bin: &Path, sockets: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .arg("-h")
        .arg(sockets)
        .arg("-p")
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command that runs as the server's account: through setpriv when the tests run as root,
/// directly otherwise (an unprivileged user may run its own cluster).
///
/// setpriv changes the user and execs, so the program is our child itself. runuser would stay
/// in between as its parent and, like su, stop itself whenever its child is stopped: a test that
/// freezes the server with SIGSTOP and thaws only the server's processes would leave runuser
/// stopped for good, and a later wait for it would hang.
pub fn as_postgres(program: &Path) -> Command {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={OS_USER}"),
            &format!("--regid={OS_USER}"),
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    };
    // The server and its tools run in the temporary directory's world, not in the test's cwd,
    // which the postgres user may not be allowed to enter.
    cmd.current_dir("/tmp");
    cmd
}

/// Gives a directory or file to the server's account, mode 0700: the temporary directory is
/// created 0700 for root, which the server could not enter, and the server refuses a key file
/// that others may read.
fn hand_over(dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let status = Command::new("chown")
        .arg(format!("{OS_USER}:"))
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {OS_USER} {} failed (does the {OS_USER} user exist? install the postgresql package)",
        dir.display()
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// PgBouncer in transaction mode in front of a [`PostgresServer`]: consecutive statements of one
/// client may run on different server sessions, and prepared statements do not survive.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    pub fn start(server: &PostgresServer) -> Self {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("pgbouncer not found: install the pgbouncer package (apt-get install pgbouncer)")
            });
        let dir = tempfile::Builder::new()
            .prefix("elect-pgbouncer-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let port = net::free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{USER}\" \"{PASSWORD}\"\n"),
        )
        .expect("write userlist");
        // One server connection for everyone: any session state would leak between clients.
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 {DATABASE} = host=127.0.0.1 port={pg} dbname={DATABASE}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {d}/userlist.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = 1\n\
                 max_client_conn = 20\n\
                 logfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\n",
                pg = server.port,
            ),
        )
        .expect("write pgbouncer.ini");
        hand_over(dir.path());
        let child = as_postgres(&binary)
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Self { child, port, dir };
        assert!(
            net::accepts_within(port, Duration::from_secs(10)),
            "pgbouncer did not start on port {port}; its log:\n{}",
            std::fs::read_to_string(bouncer.dir.path().join("pgbouncer.log")).unwrap_or_default()
        );
        bouncer
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            signal(pid, "INT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
