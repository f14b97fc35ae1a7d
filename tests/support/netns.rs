//! Hosts of their own: network namespaces joined to the server's by veth pairs on a bridge, and
//! partitions made with nftables inside a host.
//!
//! A [`Network`] is a bridge in the harness's namespace (the server's host) with an address
//! `10.A.B.1/24`, and a relay on that address to the server's loopback port (the server's host
//! forwarding a port; the servers listen on 127.0.0.1 only). Each [`Host`] is a network
//! namespace with one interface, `eth0` = `10.A.B.n`, the far end of a veth pair whose near end is
//! on the bridge. A process started with [`Host::enter`] lives in that namespace: everything it
//! sends to the server crosses the veth pair, where nftables rules inside the host drop it.
//!
//! Names are unique per test (the process id and a counter); dropping the [`Network`] deletes
//! every namespace, interface and rule it made, also when the test fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a host is cut off from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing dropped.
    None,
    /// Every packet between the host and the server's host dropped, both ways.
    Both,
    /// The host's packets reach the server; the server's replies are dropped on the way in.
    Replies,
}

/// One namespace, its veth pair and its address.
pub struct Host {
    pub name: String,
    pub address: Ipv4Addr,
    server: Ipv4Addr,
    netns: OwnedFd,
}

/// The bridge, the relay and the hosts of one test.
pub struct Network {
    bridge: String,
    pub hosts: Vec<Host>,
    relays: Vec<Relay>,
    gateway: Ipv4Addr,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(super::programs::require(
        "ip",
        "install the iproute2 package",
    ))
    .args(args)
    .stdin(Stdio::null())
    .output()
    .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft(netns: &str, script: &str) {
    let nft = super::programs::require("nft", "install the nftables package");
    let ip = super::programs::require("ip", "install the iproute2 package");
    let mut child = Command::new(ip)
        .args(["netns", "exec", netns])
        .arg(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the nft script");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft in {netns}: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /24 under 10.0.0.0/8 that no route of this machine covers yet.
fn free_subnet(seed: usize) -> (u8, u8) {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut x = (std::process::id() as usize)
        .wrapping_mul(2654435761)
        .wrapping_add(seed.wrapping_mul(40503));
    for _ in 0..256 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (a, b) = (200 + (x >> 33) % 50, (x >> 45) % 256);
        if !routes.contains(&format!("10.{a}.{b}.")) {
            return (a as u8, b as u8);
        }
    }
    panic!("no free 10.x.y.0/24 subnet for the test network");
}

/// Removes what a test process that died without its drops left behind: its namespaces and
/// bridges are named after its process id (`el<pid>x<n>`).
fn sweep() {
    let dead = |name: &str| {
        name.strip_prefix("el")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let list = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in list(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.strip_prefix("elect-").is_some_and(dead) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in list(&["-br", "link", "show", "type", "bridge"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Network {
    /// A bridge and `hosts` namespaces joined to it; needs root.
    pub fn create(hosts: usize) -> Self {
        sweep();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("el{}x{n}", std::process::id());
        let (a, b) = free_subnet(n);
        let gateway = Ipv4Addr::new(10, a, b, 1);
        let mut net = Self {
            bridge: format!("{tag}b"),
            hosts: Vec::new(),
            relays: Vec::new(),
            gateway,
        };
        let br = net.bridge.clone();
        let setup = || -> Result<(), String> {
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", &br])?;
            ip(&["link", "set", &br, "up"])?;
            Ok(())
        };
        setup().unwrap_or_else(|e| panic!("cannot make the test network: {e}"));
        for i in 0..hosts {
            let name = format!("elect-{tag}-h{i}");
            let veth = format!("{tag}v{i}");
            let address = Ipv4Addr::new(10, a, b, 2 + i as u8);
            ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
            let netns: OwnedFd = std::fs::File::open(Path::new("/run/netns").join(&name))
                .unwrap_or_else(|e| panic!("open /run/netns/{name}: {e}"))
                .into();
            net.hosts.push(Host {
                name: name.clone(),
                address,
                server: gateway,
                netns,
            });
            let join = || -> Result<(), String> {
                ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
                ])?;
                ip(&["link", "set", &veth, "master", &br, "up"])?;
                let inside = |args: &[&str]| {
                    let mut all = vec!["-n", name.as_str()];
                    all.extend_from_slice(args);
                    ip(&all)
                };
                inside(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
                inside(&["link", "set", "eth0", "up"])?;
                inside(&["link", "set", "lo", "up"])?;
                Ok(())
            };
            join().unwrap_or_else(|e| panic!("cannot join host {name} to the network: {e}"));
            nft(
                &name,
                "table inet elect_partition {\n\
                 chain input { type filter hook input priority 0; policy accept; }\n\
                 chain output { type filter hook output priority 0; policy accept; }\n\
                 }\n",
            );
        }
        net
    }

    /// The address on the server's host where the hosts reach 127.0.0.1:`port`.
    pub fn expose(&mut self, port: u16) -> SocketAddr {
        let relay = Relay::start(self.gateway, port);
        let addr = relay.addr;
        self.relays.push(relay);
        addr
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Host {
    /// Makes `cmd`'s process join this host's network namespace before it runs its program.
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.netns.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls setns(2), async-signal-safe, on a
        // descriptor that this Host keeps open until after the child has started.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// The same host, for another owner (the namespace's descriptor duplicated).
    pub fn try_clone(&self) -> Host {
        Host {
            name: self.name.clone(),
            address: self.address,
            server: self.server,
            netns: self.netns.try_clone().expect("dup a namespace descriptor"),
        }
    }

    /// Drops the host's traffic with the server's host as `cut` says; [`Cut::None`] heals.
    pub fn cut(&self, cut: Cut) {
        self.cut_from(&[self.server], cut);
    }

    /// Drops the host's traffic with each of `peers` as `cut` says; [`Cut::None`] heals (every
    /// rule, whoever it was for).
    pub fn cut_from(&self, peers: &[Ipv4Addr], cut: Cut) {
        let mut rules = String::new();
        for peer in peers {
            match cut {
                Cut::None => {}
                Cut::Both => rules.push_str(&format!(
                    "add rule inet elect_partition input ip saddr {peer} drop\n\
                     add rule inet elect_partition output ip daddr {peer} drop\n"
                )),
                Cut::Replies => rules.push_str(&format!(
                    "add rule inet elect_partition input ip saddr {peer} drop\n"
                )),
            }
        }
        nft(
            &self.name,
            &format!(
                "flush chain inet elect_partition input\n\
                 flush chain inet elect_partition output\n{rules}"
            ),
        );
    }
}

/// A TCP relay on the server's host: connections to `addr` are forwarded to 127.0.0.1:`port`.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Every socket it opened, shut down when it is dropped: a host's end that vanished with its
    /// namespace would leave the copying threads blocked forever.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(on: Ipv4Addr, port: u16) -> Self {
        let listener = TcpListener::bind((on, 0)).expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("relay address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let opened = Arc::clone(&sockets);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) {
                            let mut opened = opened.lock().unwrap();
                            for s in [&client, &upstream] {
                                if let Ok(s) = s.try_clone() {
                                    opened.push(s);
                                }
                            }
                            drop(opened);
                            pipe(client, upstream);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            stop,
            sockets,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies both ways between two sockets until each side has ended; an end or an error on one
/// side is passed on to the other as a shutdown.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    for (mut from, to) in [
        (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
        (b, a),
    ] {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if (&to).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }
}
