//! The witness: a Unix socket server that sees every job's lifetime from the kernel's side.
//!
//! Each job connects at start, writes one line `TOKEN PID RUN BUSY`, and keeps the connection
//! open with the descriptor inherited by every process it starts, so the kernel closes it only
//! when the last process of the job is gone, even on SIGKILL. Later lines are `B` (a heartbeat),
//! `W` (a write to the fenced register), `TERM` (a SIGTERM ignored) and `DONE` (the main process
//! is about to exit by itself).
//!
//! One thread polls the listener, every connection and a pidfd per `elect` run. Each round, after
//! poll(2) returns, it (1) accepts every pending connection, (2) notes every elect that has
//! exited, (3) reads every connection to see which have closed. That order makes two findings
//! exact rather than a comparison of two timestamps taken by two threads:
//! - an overlap is *proven* when a connection accepted in step 1 finds another job's connection
//!   still open in step 3: the newcomer had connected before the other had gone;
//! - "a job outlived its elect" is *proven* when an elect found exited in step 2 (this round or
//!   earlier) still has its job's connection open in step 3.
//!
//! The witness is also the fenced resource the jobs write to: a register that accepts a write
//! (`W`, carrying the token of the job's header) only when its token is at least the highest it
//! has accepted, as a storage system that checks fencing tokens does. A job writes when it
//! starts and every 100 ms while it works. Writes are decided in the order the witness reads
//! them; the checker asks of that history whether a stale write was ever accepted.
//!
//! Timestamps (one `Instant` per step) give the sizes: takeover times, how long a job outlived an
//! elect that was killed. A real overlap that starts and ends between two rounds would be missed
//! here; the jobs also take a non-blocking flock(2) on a shared file (`BUSY`), which the kernel
//! decides exactly, so such an overlap still shows.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// One job's lifetime as the witness saw it.
#[derive(Debug, Clone)]
pub struct Life {
    pub connect: Instant,
    pub close: Option<Instant>,
    pub token: Option<u64>,
    pub pid: i32,
    /// The run (one `elect` invocation) the job belongs to, from `FAULT_RUN`.
    pub run: Option<u64>,
    /// The job found the shared flock(2) taken: another job was alive when it started.
    pub busy: bool,
    /// The main process said it was about to exit by itself.
    pub done: bool,
    /// The main process got a SIGTERM (and ignored it).
    pub got_term: bool,
    pub beats: Vec<Instant>,
}

/// One write to the fenced register, in the order the register decided them.
#[derive(Debug, Clone)]
pub struct Write {
    /// The writer (index into `lives`).
    pub life: usize,
    pub token: Option<u64>,
    pub at: Instant,
    pub accepted: bool,
}

/// What the witness has recorded so far.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub lives: Vec<Life>,
    /// When each watched elect run was seen to have exited.
    pub exits: HashMap<u64, Instant>,
    /// Pairs of lives (indices into `lives`) proven to have run at the same time.
    pub overlaps: Vec<(usize, usize)>,
    /// Lives proven to have been open after their run's elect exited.
    pub outlived: Vec<usize>,
    /// Every write to the fenced register.
    pub writes: Vec<Write>,
    /// The highest token the register has accepted.
    pub highest: Option<u64>,
    /// Rounds of the poll loop completed, for [`Witness::catch_up`].
    pub rounds: u64,
}

impl Record {
    /// The register's rule: a write without a token, or with a token lower than the highest
    /// accepted, is refused.
    fn write(&mut self, life: usize, at: Instant) {
        let token = self.lives[life].token;
        let accepted = token.is_some() && token >= self.highest;
        if accepted {
            self.highest = token;
        }
        self.writes.push(Write {
            life,
            token,
            at,
            accepted,
        });
    }
}

pub struct Witness {
    path: PathBuf,
    state: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    watch: Sender<(u64, OwnedFd)>,
    thread: Option<JoinHandle<()>>,
}

struct Conn {
    stream: UnixStream,
    life: usize,
    buf: Vec<u8>,
}

impl Witness {
    /// Listens on `path` (which must not exist yet).
    pub fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("witness cannot listen on {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (watch, watched) = channel();
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(listener, state, stop, watched))
        };
        Self {
            path: path.to_owned(),
            state,
            stop,
            watch,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Watches `pid` (the elect of run `run`) for its exit. Call right after spawning it.
    pub fn watch(&self, run: u64, pid: i32) {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            // Already gone and reaped: it cannot be judged, and the run's own wait knows.
            return;
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let _ = self.watch.send((run, fd));
    }

    pub fn snapshot(&self) -> Record {
        self.state.lock().unwrap().clone()
    }

    /// Returns once a whole round of the poll loop has begun and ended after the call: every
    /// line, end of file and exit that had happened by then is in the record. The witness is a
    /// thread of a test process on a loaded machine, and may lag behind the processes it watches.
    pub fn catch_up(&self) {
        let start = self.state.lock().unwrap().rounds;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.state.lock().unwrap().rounds < start + 2 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Lives still open.
    pub fn open_lives(&self) -> Vec<Life> {
        let state = self.state.lock().unwrap();
        state
            .lives
            .iter()
            .filter(|l| l.close.is_none())
            .cloned()
            .collect()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    listener: UnixListener,
    state: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    watched: Receiver<(u64, OwnedFd)>,
) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut pidfds: Vec<(u64, OwnedFd)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        while let Ok(w) = watched.try_recv() {
            pidfds.push(w);
        }
        {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
            );
            fds.extend(
                pidfds
                    .iter()
                    .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
            );
            let _ = poll(&mut fds, PollTimeout::from(5u8));
        }
        // (1) Accept every pending connection.
        let accepted_at = Instant::now();
        let mut state_guard = state.lock().unwrap();
        let st = &mut *state_guard;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true).expect("nonblocking");
                    st.lives.push(Life {
                        connect: accepted_at,
                        close: None,
                        token: None,
                        pid: 0,
                        run: None,
                        busy: false,
                        done: false,
                        got_term: false,
                        beats: Vec::new(),
                    });
                    conns.push(Conn {
                        stream,
                        life: st.lives.len() - 1,
                        buf: Vec::new(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // (2) Elects that have exited.
        let exited_at = Instant::now();
        pidfds.retain(|(run, fd)| {
            let mut one = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let gone = poll(&mut one, PollTimeout::ZERO).is_ok_and(|n| n > 0);
            if gone {
                st.exits.entry(*run).or_insert(exited_at);
            }
            !gone
        });
        // (3) Read every connection: data, or end of file.
        let read_at = Instant::now();
        let mut still_open: Vec<usize> = Vec::new();
        conns.retain_mut(|conn| {
            let mut chunk = [0u8; 512];
            let closed = loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                }
            };
            while let Some(end) = conn.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = conn.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                if line == "W" {
                    st.write(conn.life, read_at);
                } else {
                    parse_line(&mut st.lives[conn.life], &line, read_at);
                }
            }
            if closed {
                st.lives[conn.life].close = Some(read_at);
            } else {
                still_open.push(conn.life);
            }
            !closed
        });
        // Overlaps proven this round: a connection accepted in (1) while another was open in (3).
        // A connection accepted this round that already closed in (3) is judged against the
        // others still open too: it was connected before (3) began.
        let fresh: Vec<usize> = st
            .lives
            .iter()
            .enumerate()
            .filter(|(_, l)| l.connect == accepted_at)
            .map(|(i, _)| i)
            .collect();
        for &b in &fresh {
            for &a in &still_open {
                if a != b && !fresh.contains(&a) && !st.overlaps.contains(&(a, b)) {
                    st.overlaps.push((a, b));
                }
            }
        }
        // Two jobs accepted in the same round cannot be ordered here (one may have closed
        // before the other connected); the flock(2) probe decides that case.
        // Lives open after their elect exited.
        for &i in &still_open {
            if let Some(run) = st.lives[i].run {
                if st.exits.contains_key(&run) && !st.outlived.contains(&i) {
                    st.outlived.push(i);
                }
            }
        }
        st.rounds += 1;
        drop(state_guard);
    }
}

fn parse_line(life: &mut Life, line: &str, at: Instant) {
    match line {
        "B" => life.beats.push(at),
        "DONE" => life.done = true,
        "TERM" => life.got_term = true,
        header => {
            let mut parts = header.split_whitespace();
            life.token = parts.next().and_then(|t| t.parse().ok());
            life.pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            life.run = parts.next().and_then(|r| r.parse().ok());
            life.busy = parts.next() == Some("1");
        }
    }
}

/// The job program (perl): connect to the witness, take the probe lock, report, then work.
///
/// Environment: `FAULT_WITNESS` (socket), `FAULT_PROBE` (a file for the flock(2) probe),
/// `FAULT_RUN`, `FAULT_MODE` (`plain`, `ignore-term`, `forks`, `beat`), `FAULT_WORK_MS`,
/// `FAULT_DAEMON_MS` (how long the `forks` mode's setsid grandchild lives; 20 s by default).
/// Exits 42 after its work; every process it starts ends by itself within 20 s at most.
pub const JOB: &str = r#"
use strict;
use warnings;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Fcntl qw(:flock F_GETFD F_SETFD FD_CLOEXEC);
use Time::HiRes qw(sleep time);
use POSIX qw(setsid _exit);
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $ENV{FAULT_WITNESS}) or exit 99;
open(my $probe, '>>', $ENV{FAULT_PROBE}) or exit 98;
my $busy = flock($probe, LOCK_EX | LOCK_NB) ? 0 : 1;
for my $fh ($s, $probe) {
    my $flags = fcntl($fh, F_GETFD, 0);
    fcntl($fh, F_SETFD, $flags & ~FD_CLOEXEC);
}
$s->autoflush(1);
my $token = $ENV{ELECT_FENCING_TOKEN} // 'none';
print $s "$token $$ $ENV{FAULT_RUN} $busy\n";
# The first write to the fenced register, as the job starts; then one every 100 ms of work.
print $s "W\n";
my $mode = $ENV{FAULT_MODE} // 'plain';
my $work = ($ENV{FAULT_WORK_MS} // 800) / 1000;
# A job that ignores SIGTERM, but says it got one: elect reports 76 for a job it had begun to
# stop (the lease was lost), even when the job then finished its work by itself.
$SIG{TERM} = sub { print $s "TERM\n"; } if $mode eq 'ignore-term';
if ($mode eq 'forks') {
    my $child = fork();
    if (defined $child && $child == 0) {
        my $grandchild = fork();
        if (defined $grandchild && $grandchild == 0) {
            setsid();
            sleep(($ENV{FAULT_DAEMON_MS} // 20000) / 1000);
            _exit(0);
        }
        my $other = fork();
        if (defined $other && $other == 0) {
            sleep $work + 0.3;
            _exit(0);
        }
        sleep $work + 0.3;
        _exit(0);
    }
}
if ($mode eq 'beat') {
    my $end = time + $work;
    while (time < $end) {
        print $s "B\nW\n";
        sleep 0.1;
    }
} else {
    # A loop, since a signal handler cuts a sleep short.
    my $end = time + $work;
    while ((my $left = $end - time) > 0) {
        sleep($left < 0.1 ? $left : 0.1);
        print $s "W\n";
    }
}
print $s "DONE\n";
_exit(42);
"#;
