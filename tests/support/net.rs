//! Loopback ports for test servers: picking a free one, starting again when another process
//! took it first, and waiting until one accepts.

// Each binary uses the part of it that its servers need.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port nobody listens on right now. Another process may take it before the caller binds it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Whether something accepts connections on 127.0.0.1:`port`, polling every 20 ms until
/// `timeout`.
pub fn accepts_within(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server until one of `tries` attempts succeeds: a port chosen by [`free_port`] may be
/// taken by another process before the server binds it.
pub fn retry<T>(tries: usize, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..tries {
        match start() {
            Ok(started) => return started,
            Err(why) => last = why,
        }
    }
    panic!("{last}");
}
