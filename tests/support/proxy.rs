//! A TCP proxy between elect and a server, with faults switchable at run time.
//!
//! It listens on 127.0.0.1 (a free port) and forwards each connection to the upstream address,
//! which may change (a server restarted on another port). Modes:
//! - [`Mode::Pass`]: forward both ways;
//! - [`Mode::Blackhole`]: forward nothing either way, sockets kept open (what a partition looks
//!   like to TCP: bytes are held, and delivered if the partition heals before anyone gives up);
//! - [`Mode::DropReplies`]: requests reach the server, replies are held;
//! - [`Mode::Latency`]: every chunk is delivered that long after it was read;
//! - [`Mode::Reset`]: every open connection is reset (RST), and so is each new one while the mode
//!   lasts.
//!
//! Besides the mode, faults of single connections, which leave new connections alone:
//! - [`Proxy::freeze_existing`]: the connections open now forward nothing either way (a stalled
//!   socket), while later connections pass;
//! - [`Proxy::lose_replies_after`]: a connection whose request contains a byte pattern has every
//!   reply held from then on (the request reached the server; its answer is lost), while other
//!   connections pass;
//! - [`Proxy::thaw`] undoes both, delivering what was held.
//!
//! Every loop is bounded by the stop flag; threads end when the proxy is dropped.

// A harness: each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    DropReplies,
    Latency(Duration),
    Reset,
}

/// The faults of one connection.
#[derive(Default)]
struct Hold {
    /// Nothing is forwarded either way.
    frozen: AtomicBool,
    /// Replies are held.
    replies: AtomicBool,
}

struct Shared {
    mode: Mutex<Mode>,
    /// A request containing this holds the replies of its connection ([`Proxy::lose_replies_after`]).
    trigger: Mutex<Option<Vec<u8>>>,
    upstream: Mutex<SocketAddr>,
    stop: AtomicBool,
    /// Both sockets of every live connection, to reset them, and how many of its two
    /// directions have ended (a connection is forgotten when both have).
    conns: Mutex<Vec<(TcpStream, TcpStream, Arc<AtomicUsize>)>>,
    /// The faults of every live connection.
    holds: Mutex<Vec<Arc<Hold>>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

const TICK: Duration = Duration::from_millis(10);

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            trigger: Mutex::new(None),
            holds: Mutex::new(Vec::new()),
            upstream: Mutex::new(upstream),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, s));
        Self { port, shared }
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        if mode == Mode::Reset {
            let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
            for (a, b, _) in conns {
                reset(&a);
                reset(&b);
            }
        }
    }

    /// The connections open now forward nothing more, either way, until [`thaw`](Self::thaw);
    /// connections opened later pass.
    pub fn freeze_existing(&self) {
        for hold in self.shared.holds.lock().unwrap().iter() {
            hold.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// From now on, a connection that sends a request containing `pattern` gets no more replies
    /// (its requests still reach the server) until [`thaw`](Self::thaw).
    pub fn lose_replies_after(&self, pattern: &[u8]) {
        *self.shared.trigger.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Whether some connection has had its replies held by [`lose_replies_after`](Self::lose_replies_after).
    pub fn lost_replies(&self) -> bool {
        self.shared
            .holds
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.replies.load(Ordering::SeqCst))
    }

    /// Ends [`freeze_existing`](Self::freeze_existing) and
    /// [`lose_replies_after`](Self::lose_replies_after); what was held is delivered.
    pub fn thaw(&self) {
        *self.shared.trigger.lock().unwrap() = None;
        for hold in self.shared.holds.lock().unwrap().iter() {
            hold.frozen.store(false, Ordering::SeqCst);
            hold.replies.store(false, Ordering::SeqCst);
        }
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Connections currently forwarded.
    pub fn connections(&self) -> usize {
        let mut conns = self.shared.conns.lock().unwrap();
        conns.retain(|(_, _, ended)| ended.load(Ordering::SeqCst) < 2);
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (a, b, _) in std::mem::take(&mut *self.shared.conns.lock().unwrap()) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// Closes with RST: linger zero, then shut down so that every thread holding a copy lets go.
fn reset(stream: &TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ =
        nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
    let _ = stream.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                if *shared.mode.lock().unwrap() == Mode::Reset {
                    reset(&client);
                    continue;
                }
                let upstream = *shared.upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1))
                else {
                    reset(&client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let ended = Arc::new(AtomicUsize::new(0));
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    let mut conns = shared.conns.lock().unwrap();
                    conns.retain(|(_, _, ended)| ended.load(Ordering::SeqCst) < 2);
                    conns.push((c, s, Arc::clone(&ended)));
                }
                let hold = Arc::new(Hold::default());
                {
                    let mut holds = shared.holds.lock().unwrap();
                    holds.retain(|h| Arc::strong_count(h) > 1);
                    holds.push(Arc::clone(&hold));
                }
                pump(
                    &shared,
                    &client,
                    &server,
                    false,
                    Arc::clone(&ended),
                    Arc::clone(&hold),
                );
                pump(&shared, &server, &client, true, ended, hold);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Forwards `from` to `to` in two threads: a reader that stops reading while the mode holds this
/// direction, and a writer that delivers each chunk when its latency has passed.
fn pump(
    shared: &Arc<Shared>,
    from: &TcpStream,
    to: &TcpStream,
    reply: bool,
    ended: Arc<AtomicUsize>,
    hold: Arc<Hold>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let _ = from.set_read_timeout(Some(TICK));
    let (tx, rx) = channel::<(Instant, Vec<u8>)>();
    let s = Arc::clone(shared);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while !s.stop.load(Ordering::SeqCst) {
            let mode = *s.mode.lock().unwrap();
            let held = match mode {
                Mode::Blackhole => true,
                Mode::DropReplies => reply,
                Mode::Reset => break,
                Mode::Pass | Mode::Latency(_) => false,
            } || hold.frozen.load(Ordering::SeqCst)
                || (reply && hold.replies.load(Ordering::SeqCst));
            if held {
                std::thread::sleep(TICK);
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // A fault set while this read was under way (a reply to the request that
                    // set it) holds what was read, too.
                    while reply
                        && (hold.frozen.load(Ordering::SeqCst)
                            || hold.replies.load(Ordering::SeqCst))
                        && !s.stop.load(Ordering::SeqCst)
                    {
                        std::thread::sleep(TICK);
                    }
                    if !reply {
                        let trigger = s.trigger.lock().unwrap();
                        if let Some(pattern) = trigger.as_deref() {
                            if buf[..n].windows(pattern.len()).any(|w| w == pattern) {
                                hold.replies.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    let due = match mode {
                        Mode::Latency(d) => Instant::now() + d,
                        _ => Instant::now(),
                    };
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Read);
        ended.fetch_add(1, Ordering::SeqCst);
    });
    let s = Arc::clone(shared);
    std::thread::spawn(move || deliver(&s, rx, &mut to));
}

fn deliver(shared: &Shared, rx: Receiver<(Instant, Vec<u8>)>, to: &mut TcpStream) {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((due, bytes)) => {
                // Held bytes stay held while a blackhole covers this direction's delivery too.
                while let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait.min(TICK));
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                if to.write_all(&bytes).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}
