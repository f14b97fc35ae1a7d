//! Loopback ports for test servers: picking a free one, starting again when another process
//! took it first, and waiting until one accepts.

// Each binary uses the part of it that its servers need.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, below the kernel's range for outgoing connections
/// (`net.ipv4.ip_local_port_range`). A port from that range can be taken by any client socket of
/// a test running in parallel between this call and the server's bind, and the server then never
/// starts; below it only another listener can take it, and each caller gets a different one.
pub fn free_port() -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let below = first_outgoing_port().max(LOWEST + 1_000);
    let span = below - LOWEST;
    // Test binaries that run at the same time start at different places.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + (start + n) % span;
        let port = u16::try_from(port).expect("ports fit in u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOWEST} and {below}");
}

/// The lowest port the kernel gives to outgoing connections (32768 if it cannot be read).
fn first_outgoing_port() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
