//! Network namespaces made by a test (named, so `ip -n` and `nsenter` reach them), deleted with
//! it, and sockets opened inside them from the test's own threads.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A named network namespace; deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `armfleet-<tag>-<pid>`: unique per test process, and a namespace a killed run of the same
    /// pid left behind is replaced.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("armfleet-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        NetNs { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <name> <args>`; panics with ip's own words when it fails. Returns its stdout.
    pub fn ip(&self, args: &str) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program args` inside the namespace (nsenter: `ip netns exec` would also remount
    /// /sys); panics with its output when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg(program)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {text}",
            self.name
        );
        text
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens belong to the
    /// namespace for their whole life, whichever thread uses them afterwards.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }

    /// A veth pair: `here` in this namespace, `there` in `peer`, both up.
    pub fn link(&self, here: &str, peer: &NetNs, there: &str) {
        self.ip(&format!(
            "link add {here} type veth peer name {there} netns {}",
            peer.name
        ));
        self.ip(&format!("link set {here} up"));
        peer.ip(&format!("link set {there} up"));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What became of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A listener answered; it saw the probe come from this address.
    Answered(std::net::IpAddr),
    /// The destination's stack answered "nothing here" (a TCP reset or ICMP port unreachable):
    /// the packet got through, nobody listens.
    Refused,
    /// No answer at all: dropped on the way.
    Silent,
}

/// Serves `addr` (TCP) inside `ns` until the process ends: each connection is answered with the
/// address it came from, so a probe learns what its peer saw (NAT or not).
pub fn tcp_echo_source(ns: &NetNs, addr: SocketAddr) {
    let listener = ns
        .within(move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                use std::io::Write;
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
}

/// The same for UDP: each datagram is answered with its source address.
pub fn udp_echo_source(ns: &NetNs, addr: SocketAddr) {
    let socket = ns
        .within(move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
}

/// Opens a TCP connection from inside `ns` to `dest`, waiting at most `wait`.
pub fn probe_tcp(ns: &NetNs, dest: SocketAddr, wait: Duration) -> Reach {
    ns.within(move || match TcpStream::connect_timeout(&dest, wait) {
        Ok(mut s) => {
            use std::io::Read;
            s.set_read_timeout(Some(wait)).unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            Reach::Answered(
                text.parse()
                    .unwrap_or_else(|_| panic!("{dest} answered {text:?}")),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::Silent,
        Err(e) => panic!("connect to {dest}: {e}"),
    })
}

/// Sends one UDP datagram from inside `ns` to `dest` and waits at most `wait` for the answer.
pub fn probe_udp(ns: &NetNs, dest: SocketAddr, wait: Duration) -> Reach {
    ns.within(move || {
        let any: SocketAddr = if dest.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).unwrap();
        // Connected, so an ICMP port unreachable comes back as ConnectionRefused.
        s.connect(dest).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.send(b"probe").unwrap();
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                Reach::Answered(
                    text.parse()
                        .unwrap_or_else(|_| panic!("{dest} answered {text:?}")),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Reach::Silent
            }
            Err(e) => panic!("udp to {dest}: {e}"),
        }
    })
}
