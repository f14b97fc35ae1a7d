//! A frozen host: a cgroup whose every process the kernel's freezer stops at once.
//!
//! A process started with [`Freezer::enter`] joins the cgroup before it runs, and everything it
//! starts stays in it: elect, its watchdog, the job and the job's own children. [`Freezer::freeze`]
//! stops them all together, as a host that is paused (a VM descheduled, a laptop lid closed)
//! stops every process on it; SIGSTOP stops one process and lets its parent see it stop.
//!
//! The v1 `freezer` controller is used where it is mounted, else v2's `cgroup.freeze`. Both need
//! root.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Which freezer the kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One cgroup that can be frozen; removed when dropped.
pub struct Freezer {
    dir: PathBuf,
    version: Version,
    /// `cgroup.procs`, for the child to join before it runs.
    procs: CString,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

const V1: &str = "/sys/fs/cgroup/freezer";
const V2: &str = "/sys/fs/cgroup";

impl Freezer {
    /// A new cgroup, or a panic that says why there is none. Its name holds the test process's
    /// id, so that cgroups left by a test process that died are removed by the next.
    pub fn create() -> Self {
        let (root, version) = if Path::new(V1).join("freezer.state").exists()
            || Path::new(V1).join("cgroup.procs").exists()
        {
            (V1, Version::V1)
        } else if Path::new(V2).join("cgroup.controllers").exists() {
            (V2, Version::V2)
        } else {
            panic!("no cgroup freezer: neither {V1} nor a cgroup v2 hierarchy at {V2}");
        };
        sweep(Path::new(root));
        let name = format!(
            "elect-faults-{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = Path::new(root).join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e} (root?)", dir.display()));
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a path without NUL");
        Self {
            dir,
            version,
            procs,
        }
    }

    /// Makes `cmd`'s process join this cgroup before it runs its program.
    pub fn enter(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: between fork and exec the closure only calls open, write and close, which are
        // async-signal-safe, on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc;
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" is the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
    }

    /// Stops every process of the cgroup, and returns once the kernel says they are all frozen.
    pub fn freeze(&self) {
        match self.version {
            Version::V1 => self.set("freezer.state", "FROZEN"),
            Version::V2 => self.set("cgroup.freeze", "1"),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.frozen() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn thaw(&self) {
        match self.version {
            Version::V1 => self.set("freezer.state", "THAWED"),
            Version::V2 => self.set("cgroup.freeze", "0"),
        }
    }

    fn frozen(&self) -> bool {
        match self.version {
            Version::V1 => self.read("freezer.state") == "FROZEN",
            Version::V2 => self.read("cgroup.events").contains("frozen 1"),
        }
    }

    fn set(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("cannot write {value} to {}: {e}", path.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// Removes the cgroups of test processes that are gone (thawed first: a frozen cgroup's processes
/// could never end).
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("elect-faults-")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let dir = entry.path();
            let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
            let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl Drop for Freezer {
    /// Thaws, then removes the cgroup once its processes are gone (a cgroup with processes cannot
    /// be removed; the harness's own runs all end by themselves).
    fn drop(&mut self) {
        self.thaw();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
