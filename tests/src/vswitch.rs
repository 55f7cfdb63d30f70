//! A small userspace 802.1Q-aware Ethernet switch for QEMU VMs, modelling the lab's managed
//! switch: one trunk port (the router, every VLAN tagged) and access ports (one VLAN each,
//! untagged on the wire).
//!
//! VMs attach with QEMU's legacy socket netdev in stream mode:
//!
//! ```text
//! qemu-system-aarch64 ... -netdev socket,id=n0,connect=127.0.0.1:PORT -device virtio-net-pci,netdev=n0
//! ```
//!
//! On that stream every Ethernet frame (no FCS, no virtio-net header) is preceded by its length
//! as a 4-byte big-endian integer, in both directions: QEMU's `net/socket.c`
//! `net_socket_receive` writes `htonl(size)` then the frame, and its reader
//! (`net_fill_rstate` in `net/net.c`, with `vnet_hdr` false) takes `ntohl` of the first 4 bytes
//! as the length of the frame that follows, up to `NET_BUFSIZE` (4096 + 65536) bytes.
//!
//! Threads: per port one acceptor (blocking `accept`), and per connection one reader (blocking
//! reads, forwarding under the switch lock) and one writer (blocking on its egress queue, so a
//! VM that stops reading cannot stall the others or hold the lock during a socket write).
//! Nothing polls or spins.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest frame accepted from a port (Ethernet header included). A trunk's egress copy may be
/// 4 bytes longer (the inserted tag); QEMU reads up to 69632, so that still fits.
pub const MAX_FRAME: usize = 65535;

/// The 802.1Q tag protocol identifier: the ethertype position holds this when a frame is tagged.
const TPID: u16 = 0x8100;

/// Frames queued per egress port before tail drop. Deep enough for bursts from a VM that is
/// briefly not scheduled; bounded so a VM that never reads cannot grow memory without limit.
const EGRESS_QUEUE: usize = 4096;

/// Entries kept by [`Switch::frames`]; beyond it frames are still forwarded but only counted,
/// so a long transfer cannot eat the test machine's memory.
const LOG_CAP: usize = 1 << 20;

/// How a port treats VLANs, as configured on a managed switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMode {
    /// Untagged member of one VLAN: frames arrive and leave without a tag; tagged frames
    /// arriving here are dropped.
    Access(u16),
    /// Tagged member of the listed VLANs: frames must arrive with an 802.1Q tag carrying one of
    /// these VIDs, and leave tagged; untagged or other-VLAN frames are dropped.
    Trunk(Vec<u16>),
}

impl PortMode {
    /// Whether frames of `vlan` may leave (or enter) a port in this mode.
    fn carries(&self, vlan: u16) -> bool {
        match self {
            PortMode::Access(v) => *v == vlan,
            PortMode::Trunk(list) => list.contains(&vlan),
        }
    }
}

impl fmt::Display for PortMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMode::Access(v) => write!(f, "access {v}"),
            PortMode::Trunk(list) => {
                let vids: Vec<String> = list.iter().map(|v| v.to_string()).collect();
                write!(f, "trunk {}", vids.join(","))
            }
        }
    }
}

/// One frame the switch admitted at ingress, with where it went (for assertions and failure
/// messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Index of the port it came in on.
    pub port_in: usize,
    /// The VLAN it was classified into (the access port's VLAN, or the trunk tag's VID).
    pub vlan: u16,
    /// Source MAC.
    pub src: [u8; 6],
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Ethertype of the payload (after the tag, for frames that came in tagged).
    pub ethertype: u16,
    /// Length on the ingress wire, tag included if it had one.
    pub len: usize,
    /// Ports it was queued to. Empty when no other port in the VLAN was up, or when the
    /// destination was learned on the ingress port itself.
    pub out: Vec<usize>,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "port {} vlan {} {} -> {} type {:#06x} len {} out {:?}",
            self.port_in,
            self.vlan,
            mac(&self.src),
            mac(&self.dst),
            self.ethertype,
            self.len,
            self.out
        )
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac(m: &[u8; 6]) -> String {
    let parts: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Per-port counters; every frame that is not forwarded lands in one of the `drop_*` fields.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Connections accepted on the port so far.
    accepts: u64,
    /// Frames read from the port.
    rx: u64,
    /// Frames queued to the port.
    tx: u64,
    /// Shorter than an Ethernet header (or a tagged header, on a trunk).
    runt: u64,
    /// Longer than [`MAX_FRAME`] (read and discarded so the stream stays in step).
    oversize: u64,
    /// 802.1Q-tagged frame on an access port.
    tagged_on_access: u64,
    /// Untagged frame on a trunk.
    untagged_on_trunk: u64,
    /// Tagged with a VID the trunk does not carry.
    vlan_not_allowed: u64,
    /// Destination was learned on the ingress port (a real switch filters these too).
    same_port: u64,
    /// Egress queue full: the VM on this port is not reading.
    egress_full: u64,
    /// Queued to this port but its connection went away before the write.
    link_down: u64,
}

/// Per-VLAN counters for the summary.
#[derive(Debug, Default, Clone, Copy)]
struct VlanCounters {
    frames: u64,
    flooded: u64,
}

/// The live connection of a port.
struct Conn {
    /// Distinguishes this connection from a later one on the same port, so a reader that ends
    /// late does not tear down its successor.
    id: u64,
    /// A handle to shut the socket down (waking the reader and failing the writer).
    stream: TcpStream,
    /// The writer thread's queue; dropping it ends that thread once the queue is drained.
    tx: SyncSender<Arc<[u8]>>,
}

struct Port {
    mode: PortMode,
    conn: Option<Conn>,
    c: Counters,
}

struct State {
    /// Set by `Drop`; acceptors exit instead of installing new connections.
    stop: bool,
    ports: Vec<Port>,
    /// MAC learning: (VLAN, MAC) to port. Per VLAN, as on an IVL switch, so the same MAC in two
    /// VLANs (a router's trunk interface) does not flap.
    macs: HashMap<(u16, [u8; 6]), usize>,
    vlans: BTreeMap<u16, VlanCounters>,
    log: Vec<Seen>,
    unlogged: u64,
    next_conn: u64,
    /// Reader and writer threads, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

impl State {
    /// Forgets MACs learned on `port`: after a link change or VLAN move, they are stale.
    fn flush_macs(&mut self, port: usize) {
        self.macs.retain(|_, p| *p != port);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a port's link goes up or down.
    link: Condvar,
}

impl Shared {
    /// Locks the state, ignoring poisoning: a panicking test thread must not turn the switch's
    /// `Drop` into a second panic (which would abort and hide the first message).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The switch. Dropping it closes the listeners and every connection and joins its threads.
pub struct Switch {
    shared: Arc<Shared>,
    ports: Vec<u16>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Switch {
    /// Starts a switch with one port per entry of `ports`, each a TCP listener on
    /// `127.0.0.1:0` served by its own threads. Panics if a listener cannot be bound (this is
    /// test equipment: a failed setup should fail the test loudly).
    pub fn start(ports: Vec<PortMode>) -> Switch {
        let listeners: Vec<TcpListener> = (0..ports.len())
            .map(|i| {
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .unwrap_or_else(|e| panic!("vswitch: bind port {i}: {e}"))
            })
            .collect();
        let numbers: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address").port())
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stop: false,
                ports: ports
                    .into_iter()
                    .map(|mode| Port {
                        mode,
                        conn: None,
                        c: Counters::default(),
                    })
                    .collect(),
                macs: HashMap::new(),
                vlans: BTreeMap::new(),
                log: Vec::new(),
                unlogged: 0,
                next_conn: 0,
                threads: Vec::new(),
            }),
            link: Condvar::new(),
        });
        let acceptors = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("vswitch-accept-{i}"))
                    .spawn(move || accept_loop(&shared, i, listener))
                    .expect("spawn vswitch acceptor")
            })
            .collect();
        Switch {
            shared,
            ports: numbers,
            acceptors,
        }
    }

    /// The TCP port on 127.0.0.1 that the VM on switch port `i` connects to
    /// (`-netdev socket,connect=127.0.0.1:PORT`).
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Moves access port `i` into `vlan` at run time, like moving a cable to a port of another
    /// VLAN. MACs learned on the port are forgotten. The VM sees no carrier change (QEMU's
    /// `connect=` socket does not reconnect, so the link is not bounced), so it will not renew
    /// a DHCP lease by itself. Panics if port `i` is a trunk.
    pub fn set_access_vlan(&self, i: usize, vlan: u16) {
        let mut st = self.shared.lock();
        match &mut st.ports[i].mode {
            PortMode::Access(v) => *v = vlan,
            PortMode::Trunk(_) => panic!("vswitch: port {i} is a trunk, not an access port"),
        }
        st.flush_macs(i);
    }

    /// Every frame admitted so far, in order (the first [`LOG_CAP`] of them; the summary counts
    /// the rest).
    pub fn frames(&self) -> Vec<Seen> {
        self.shared.lock().log.clone()
    }

    /// Whether a VM is connected to port `i` now.
    pub fn is_up(&self, i: usize) -> bool {
        self.shared.lock().ports[i].conn.is_some()
    }

    /// Waits until port `i`'s link is `up` (a VM connected) or down (it disconnected), at most
    /// `timeout`; returns whether it got there. Lets a test know the switch has taken over a
    /// connection before it sends frames towards it.
    pub fn wait_link(&self, i: usize, up: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.ports[i].conn.is_some() == up {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .link
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A short text of counters per port and per VLAN, for assertion messages, e.g.
    /// `port 1 (:40123) access 10 up: rx 3 tx 2; drops tagged-on-access 1`.
    pub fn summary(&self) -> String {
        let st = self.shared.lock();
        let mut out = String::new();
        for (i, p) in st.ports.iter().enumerate() {
            let c = &p.c;
            let _ = write!(
                out,
                "port {i} (:{}) {} {}: rx {} tx {} connects {}",
                self.ports[i],
                p.mode,
                if p.conn.is_some() { "up" } else { "down" },
                c.rx,
                c.tx,
                c.accepts
            );
            let drops = [
                ("runt", c.runt),
                ("oversize", c.oversize),
                ("tagged-on-access", c.tagged_on_access),
                ("untagged-on-trunk", c.untagged_on_trunk),
                ("vlan-not-allowed", c.vlan_not_allowed),
                ("same-port", c.same_port),
                ("egress-full", c.egress_full),
                ("link-down", c.link_down),
            ];
            let nonzero: Vec<String> = drops
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = write!(out, "; drops {}", nonzero.join(", "));
            }
            out.push('\n');
        }
        for (vlan, v) in &st.vlans {
            let macs = st.macs.keys().filter(|(vl, _)| vl == vlan).count();
            let _ = writeln!(
                out,
                "vlan {vlan}: {} frames ({} flooded), {macs} MACs learned",
                v.frames, v.flooded
            );
        }
        if st.unlogged > 0 {
            let _ = writeln!(out, "{} frames forwarded but not logged", st.unlogged);
        }
        out
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            for p in &mut st.ports {
                if let Some(c) = p.conn.take() {
                    let _ = c.stream.shutdown(Shutdown::Both);
                }
            }
            self.shared.link.notify_all();
        }
        // An acceptor is blocked in accept(); a connection of our own wakes it to see `stop`.
        // If that connect fails the thread is left detached rather than hanging the drop.
        for (i, h) in self.acceptors.drain(..).enumerate() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports[i]));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                let _ = h.join();
            }
        }
        // No acceptor is left to add threads, so this list is final. Readers wake on the
        // shutdown above; writers end when their queue's sender (in the taken `Conn`) is gone.
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for h in threads {
            let _ = h.join();
        }
    }
}

/// Accepts connections on one port for the switch's lifetime. A new connection replaces the
/// port's current one: the VM behind the old one was killed and another took its place.
fn accept_loop(shared: &Arc<Shared>, i: usize, listener: TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                if shared.lock().stop {
                    return;
                }
                // Transient (out of descriptors, aborted handshake): pause rather than spin.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut st = shared.lock();
        if st.stop {
            return;
        }
        install(shared, &mut st, i, stream);
    }
}

/// Makes `stream` port `i`'s connection and starts its reader and writer.
fn install(shared: &Arc<Shared>, st: &mut State, i: usize, stream: TcpStream) {
    // QEMU sets TCP_NODELAY on its side too; frames are latency-sensitive (ARP, DHCP, TCP acks).
    let _ = stream.set_nodelay(true);
    let (reader, writer) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(r), Ok(w)) => (r, w),
        // Cannot serve it; closing it makes the VM side see the link go away.
        _ => return,
    };
    let (tx, rx) = mpsc::sync_channel(EGRESS_QUEUE);
    let id = st.next_conn;
    st.next_conn += 1;
    if let Some(old) = st.ports[i].conn.replace(Conn { id, stream, tx }) {
        let _ = old.stream.shutdown(Shutdown::Both);
    }
    st.ports[i].c.accepts += 1;
    st.flush_macs(i);
    st.threads.retain(|h| !h.is_finished());
    let s = shared.clone();
    let w = thread::Builder::new()
        .name(format!("vswitch-tx-{i}"))
        .spawn(move || write_loop(&s, i, writer, rx));
    let s = shared.clone();
    let r = thread::Builder::new()
        .name(format!("vswitch-rx-{i}"))
        .spawn(move || read_loop(&s, i, id, reader));
    st.threads.extend(w.into_iter().chain(r));
    shared.link.notify_all();
}

/// Reads length-prefixed frames from port `i`'s connection `id` and forwards them, until the
/// connection ends; then takes the port's link down (unless a newer connection replaced it).
fn read_loop(shared: &Shared, i: usize, id: u64, stream: TcpStream) {
    let mut r = BufReader::with_capacity(1 << 17, stream);
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut hdr = [0u8; 4];
        if r.read_exact(&mut hdr).is_err() {
            break;
        }
        let len = u32::from_be_bytes(hdr) as usize;
        if len > MAX_FRAME {
            // Discard it whole so the next length prefix is read from the right place.
            let skipped = io::copy(&mut (&mut r).take(len as u64), &mut io::sink());
            shared.lock().ports[i].c.oversize += 1;
            if skipped.map_or(true, |n| n < len as u64) {
                break;
            }
            continue;
        }
        if r.read_exact(&mut buf[..len]).is_err() {
            break;
        }
        ingress(shared, i, &buf[..len]);
    }
    let mut st = shared.lock();
    if st.ports[i].conn.as_ref().is_some_and(|c| c.id == id) {
        if let Some(c) = st.ports[i].conn.take() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        st.flush_macs(i);
        shared.link.notify_all();
    }
}

/// Writes port `i`'s queued frames, each with its 4-byte big-endian length, batching what is
/// already queued into one write. Ends when the queue's sender is dropped (link down, switch
/// dropped) or a write fails; frames it could not deliver are counted as `link-down` drops.
fn write_loop(shared: &Shared, i: usize, mut stream: TcpStream, rx: Receiver<Arc<[u8]>>) {
    let mut out = Vec::with_capacity(1 << 17);
    while let Ok(mut frame) = rx.recv() {
        out.clear();
        let mut batch = 0u64;
        loop {
            out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            out.extend_from_slice(&frame);
            batch += 1;
            if out.len() >= 1 << 17 {
                break;
            }
            match rx.try_recv() {
                Ok(f) => frame = f,
                Err(_) => break,
            }
        }
        if stream.write_all(&out).is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            let rest = rx.try_iter().count() as u64;
            shared.lock().ports[i].c.link_down += batch + rest;
            return;
        }
    }
}

/// Classifies one frame from port `i` into a VLAN, learns its source, and queues it to the
/// ports it should reach, all under the lock so forwarding decisions and counters agree.
fn ingress(shared: &Shared, i: usize, wire: &[u8]) {
    let mut guard = shared.lock();
    let st = &mut *guard;
    st.ports[i].c.rx += 1;
    if wire.len() < 14 {
        st.ports[i].c.runt += 1;
        return;
    }
    let dst: [u8; 6] = wire[0..6].try_into().unwrap();
    let src: [u8; 6] = wire[6..12].try_into().unwrap();
    let outer = u16::from_be_bytes([wire[12], wire[13]]);
    // (VLAN, priority bits to keep on tagged egress, the frame without any tag)
    let (vlan, pcp, untagged): (u16, u16, Vec<u8>) = match &st.ports[i].mode {
        PortMode::Access(v) => {
            if outer == TPID {
                st.ports[i].c.tagged_on_access += 1;
                return;
            }
            (*v, 0, wire.to_vec())
        }
        PortMode::Trunk(list) => {
            if outer != TPID {
                st.ports[i].c.untagged_on_trunk += 1;
                return;
            }
            if wire.len() < 18 {
                st.ports[i].c.runt += 1;
                return;
            }
            let tci = u16::from_be_bytes([wire[14], wire[15]]);
            let vid = tci & 0x0fff;
            if !list.contains(&vid) {
                st.ports[i].c.vlan_not_allowed += 1;
                return;
            }
            let mut f = Vec::with_capacity(wire.len() - 4);
            f.extend_from_slice(&wire[..12]);
            f.extend_from_slice(&wire[16..]);
            (vid, tci >> 13, f)
        }
    };
    let ethertype = u16::from_be_bytes([untagged[12], untagged[13]]);

    // Learn unicast sources only: a multicast source is bogus and must not steer traffic.
    if src[0] & 1 == 0 {
        st.macs.insert((vlan, src), i);
    }
    let mut seen = Seen {
        port_in: i,
        vlan,
        src,
        dst,
        ethertype,
        len: wire.len(),
        out: Vec::new(),
    };
    let known = if dst[0] & 1 == 0 {
        st.macs.get(&(vlan, dst)).copied()
    } else {
        None
    };
    let targets: Vec<usize> = match known {
        Some(p) if p == i => {
            st.ports[i].c.same_port += 1;
            Vec::new()
        }
        Some(p) if st.ports[p].mode.carries(vlan) => vec![p],
        // Unknown unicast, broadcast, multicast: every other port of the VLAN.
        _ => (0..st.ports.len())
            .filter(|&p| p != i && st.ports[p].mode.carries(vlan))
            .collect(),
    };
    let flooded = known.is_none();

    let untagged: Arc<[u8]> = untagged.into();
    let mut tagged: Option<Arc<[u8]>> = None;
    for p in targets {
        let port = &mut st.ports[p];
        let Some(conn) = &port.conn else {
            // No VM on that port: like a switch port without link, nothing to deliver to.
            continue;
        };
        let frame = match port.mode {
            PortMode::Access(_) => untagged.clone(),
            PortMode::Trunk(_) => tagged
                .get_or_insert_with(|| {
                    let tci = (pcp << 13) | vlan;
                    let mut f = Vec::with_capacity(untagged.len() + 4);
                    f.extend_from_slice(&untagged[..12]);
                    f.extend_from_slice(&TPID.to_be_bytes());
                    f.extend_from_slice(&tci.to_be_bytes());
                    f.extend_from_slice(&untagged[12..]);
                    f.into()
                })
                .clone(),
        };
        match conn.tx.try_send(frame) {
            Ok(()) => {
                port.c.tx += 1;
                seen.out.push(p);
            }
            Err(TrySendError::Full(_)) => port.c.egress_full += 1,
            Err(TrySendError::Disconnected(_)) => port.c.link_down += 1,
        }
    }
    let v = st.vlans.entry(vlan).or_default();
    v.frames += 1;
    if flooded {
        v.flooded += 1;
    }
    if st.log.len() < LOG_CAP {
        st.log.push(seen);
    } else {
        st.unlogged += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    /// How long "nothing arrives" is watched for. Frames for all egress ports are queued in the
    /// same locked step, so once a positive control arrived elsewhere this is ample.
    const QUIET: Duration = Duration::from_millis(300);
    const BCAST: [u8; 6] = [0xff; 6];

    /// A fake VM: a TCP connection speaking QEMU's length-prefixed stream format.
    struct FakeVm {
        s: TcpStream,
        name: String,
    }

    impl FakeVm {
        fn connect(sw: &Switch, i: usize) -> FakeVm {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, sw.port(i))).unwrap();
            assert!(
                sw.wait_link(i, true, WAIT),
                "port {i} never came up\n{}",
                sw.summary()
            );
            FakeVm {
                s,
                name: format!("vm on port {i}"),
            }
        }

        fn send(&mut self, frame: &[u8]) {
            let mut b = (frame.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(frame);
            self.s.write_all(&b).unwrap();
        }

        /// The next frame, or None if none arrives within `timeout`.
        fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
            self.s.set_read_timeout(Some(timeout)).unwrap();
            let mut hdr = [0u8; 4];
            match self.s.read_exact(&mut hdr) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("{}: read: {e}", self.name),
            }
            let mut f = vec![0u8; u32::from_be_bytes(hdr) as usize];
            self.s.set_read_timeout(Some(WAIT)).unwrap();
            self.s.read_exact(&mut f).unwrap();
            Some(f)
        }

        fn expect(&mut self, sw: &Switch) -> Vec<u8> {
            self.recv(WAIT)
                .unwrap_or_else(|| panic!("{} got nothing\n{}{}", self.name, sw.summary(), log(sw)))
        }

        fn expect_quiet(&mut self, sw: &Switch) {
            if let Some(f) = self.recv(QUIET) {
                panic!(
                    "{} got an unexpected frame {:02x?}\n{}{}",
                    self.name,
                    &f[..f.len().min(18)],
                    sw.summary(),
                    log(sw)
                );
            }
        }
    }

    fn log(sw: &Switch) -> String {
        sw.frames().iter().map(|s| format!("  {s}\n")).collect()
    }

    fn host(n: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, n]
    }

    fn untagged(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&TPID.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Router trunk on 0, access VLAN 10 on 1, access VLAN 40 on 2.
    fn lab() -> (Switch, FakeVm, FakeVm, FakeVm) {
        let sw = Switch::start(vec![
            PortMode::Trunk(vec![10, 40]),
            PortMode::Access(10),
            PortMode::Access(40),
        ]);
        let trunk = FakeVm::connect(&sw, 0);
        let a10 = FakeVm::connect(&sw, 1);
        let a40 = FakeVm::connect(&sw, 2);
        (sw, trunk, a10, a40)
    }

    #[test]
    fn access_to_trunk_is_tagged_with_the_access_vlan() {
        let (sw, mut trunk, mut a10, mut a40) = lab();
        let payload = [0x11u8; 46];
        a10.send(&untagged(BCAST, host(1), 0x0806, &payload));
        let got = trunk.expect(&sw);
        assert_eq!(got, tagged(BCAST, host(1), 10, 0x0806, &payload));
        a40.expect_quiet(&sw);
        a10.expect_quiet(&sw);
        let frames = sw.frames();
        assert_eq!(frames.len(), 1, "{}", log(&sw));
        let s = &frames[0];
        assert_eq!(
            (
                s.port_in,
                s.vlan,
                s.src,
                s.dst,
                s.ethertype,
                s.len,
                &s.out[..]
            ),
            (1, 10, host(1), BCAST, 0x0806, 60, &[0][..])
        );
    }

    #[test]
    fn trunk_vlan_40_reaches_only_the_access_port_on_40_untagged() {
        let (sw, mut trunk, mut a10, mut a40) = lab();
        let payload = [0x22u8; 46];
        trunk.send(&tagged(BCAST, host(9), 40, 0x0800, &payload));
        assert_eq!(a40.expect(&sw), untagged(BCAST, host(9), 0x0800, &payload));
        a10.expect_quiet(&sw);
        trunk.expect_quiet(&sw);
    }

    #[test]
    fn access_vlans_never_see_each_others_broadcasts() {
        let sw = Switch::start(vec![
            PortMode::Trunk(vec![10, 40]),
            PortMode::Access(10),
            PortMode::Access(40),
            PortMode::Access(10),
        ]);
        let mut trunk = FakeVm::connect(&sw, 0);
        let mut a10 = FakeVm::connect(&sw, 1);
        let mut a40 = FakeVm::connect(&sw, 2);
        let mut b10 = FakeVm::connect(&sw, 3);

        let from10 = untagged(BCAST, host(1), 0x0806, &[1; 46]);
        a10.send(&from10);
        // Positive controls: the same VLAN's other access port and the trunk get it.
        assert_eq!(b10.expect(&sw), from10);
        assert_eq!(
            trunk.expect(&sw),
            tagged(BCAST, host(1), 10, 0x0806, &[1; 46])
        );
        a40.expect_quiet(&sw);

        let from40 = untagged(BCAST, host(2), 0x0806, &[2; 46]);
        a40.send(&from40);
        assert_eq!(
            trunk.expect(&sw),
            tagged(BCAST, host(2), 40, 0x0806, &[2; 46])
        );
        a10.expect_quiet(&sw);
        b10.expect_quiet(&sw);
    }

    #[test]
    fn set_access_vlan_moves_a_port() {
        let (sw, mut trunk, mut a10, mut a40) = lab();
        let to40 = tagged(BCAST, host(9), 40, 0x0800, &[3; 46]);
        trunk.send(&to40);
        a40.expect(&sw);
        a10.expect_quiet(&sw);

        sw.set_access_vlan(1, 40);
        trunk.send(&to40);
        let want = untagged(BCAST, host(9), 0x0800, &[3; 46]);
        assert_eq!(a10.expect(&sw), want);
        assert_eq!(a40.expect(&sw), want);

        a10.send(&untagged(BCAST, host(1), 0x0806, &[4; 46]));
        assert_eq!(
            trunk.expect(&sw),
            tagged(BCAST, host(1), 40, 0x0806, &[4; 46])
        );
        assert_eq!(a40.expect(&sw), untagged(BCAST, host(1), 0x0806, &[4; 46]));
        // And VLAN 10 traffic no longer reaches it.
        trunk.send(&tagged(BCAST, host(9), 10, 0x0800, &[5; 46]));
        a10.expect_quiet(&sw);
        assert!(sw.summary().contains("port 1 (:"), "{}", sw.summary());
    }

    #[test]
    fn a_port_accepts_again_after_its_vm_goes_away() {
        let (sw, mut trunk, a10, _a40) = lab();
        drop(a10);
        assert!(sw.wait_link(1, false, WAIT), "{}", sw.summary());
        // Frames for a port without a VM are not an error; nothing is waiting for them.
        trunk.send(&tagged(BCAST, host(9), 10, 0x0800, &[6; 46]));
        // The trunk's reader forwards it asynchronously: wait until it has, or it could reach
        // the VM that connects next.
        let deadline = Instant::now() + WAIT;
        while sw.frames().is_empty() {
            assert!(Instant::now() < deadline, "{}", sw.summary());
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sw.frames()[0].out, Vec::<usize>::new(), "{}", log(&sw));

        let mut again = FakeVm::connect(&sw, 1);
        again.send(&untagged(BCAST, host(7), 0x0806, &[7; 46]));
        assert_eq!(
            trunk.expect(&sw),
            tagged(BCAST, host(7), 10, 0x0806, &[7; 46])
        );
        trunk.send(&tagged(host(7), host(9), 10, 0x0800, &[8; 46]));
        assert_eq!(
            again.expect(&sw),
            untagged(host(7), host(9), 0x0800, &[8; 46])
        );
        assert!(sw.summary().contains("connects 2"), "{}", sw.summary());
    }

    #[test]
    fn a_new_connection_replaces_a_live_one() {
        let (sw, mut trunk, _old, _a40) = lab();
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, sw.port(1))).unwrap();
        let mut new = FakeVm {
            s,
            name: "new vm on port 1".into(),
        };
        // The replacement is installed when the accept count says so.
        let deadline = Instant::now() + WAIT;
        while !sw.summary().contains("connects 2") {
            assert!(Instant::now() < deadline, "{}", sw.summary());
            thread::sleep(Duration::from_millis(10));
        }
        trunk.send(&tagged(BCAST, host(9), 10, 0x0800, &[9; 46]));
        assert_eq!(new.expect(&sw), untagged(BCAST, host(9), 0x0800, &[9; 46]));
    }

    #[test]
    fn ingress_rules_drop_and_count() {
        let (sw, mut trunk, mut a10, mut a40) = lab();
        a10.send(&tagged(BCAST, host(1), 10, 0x0800, &[0; 46])); // tagged on access
        trunk.send(&untagged(BCAST, host(9), 0x0800, &[0; 46])); // untagged on trunk
        trunk.send(&tagged(BCAST, host(9), 99, 0x0800, &[0; 46])); // VLAN not on the trunk
        a40.send(&[0u8; 10]); // runt
        // Positive control after the drops: the streams are still in step.
        a10.send(&untagged(BCAST, host(1), 0x0806, &[1; 46]));
        trunk.expect(&sw);
        a10.expect_quiet(&sw);
        a40.expect_quiet(&sw);
        let s = sw.summary();
        for want in [
            "drops tagged-on-access 1",
            "drops untagged-on-trunk 1, vlan-not-allowed 1",
            "drops runt 1",
        ] {
            assert!(s.contains(want), "no {want:?} in\n{s}");
        }
        assert_eq!(sw.frames().len(), 1, "{}", log(&sw));
    }

    #[test]
    fn learned_unicast_goes_only_to_its_port_and_never_back() {
        let sw = Switch::start(vec![
            PortMode::Trunk(vec![10]),
            PortMode::Access(10),
            PortMode::Access(10),
        ]);
        let mut trunk = FakeVm::connect(&sw, 0);
        let mut a = FakeVm::connect(&sw, 1);
        let mut b = FakeVm::connect(&sw, 2);
        a.send(&untagged(BCAST, host(1), 0x0806, &[1; 46]));
        trunk.expect(&sw);
        b.expect(&sw);
        a.expect_quiet(&sw); // a broadcast is not sent back out of its ingress port

        trunk.send(&tagged(host(1), host(9), 10, 0x0800, &[2; 46]));
        assert_eq!(a.expect(&sw), untagged(host(1), host(9), 0x0800, &[2; 46]));
        b.expect_quiet(&sw);
        // The router is learned too: the reply goes to the trunk only.
        a.send(&untagged(host(9), host(1), 0x0800, &[3; 46]));
        assert_eq!(
            trunk.expect(&sw),
            tagged(host(9), host(1), 10, 0x0800, &[3; 46])
        );
        b.expect_quiet(&sw);
    }

    #[test]
    fn largest_frame_crosses_and_gains_a_tag() {
        let (sw, mut trunk, mut a10, _a40) = lab();
        let payload = vec![0x5a; MAX_FRAME - 14];
        a10.send(&untagged(BCAST, host(1), 0x88b5, &payload));
        let got = trunk.expect(&sw);
        assert_eq!(got.len(), MAX_FRAME + 4);
        assert_eq!(got, tagged(BCAST, host(1), 10, 0x88b5, &payload));
    }
}
