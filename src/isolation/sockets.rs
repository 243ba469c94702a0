//! Every TCP and UDP socket of a set of processes, with its addresses: what
//! `cohost verify` holds against the instance's logical address.
//!
//! The kernel lists the sockets (NETLINK_SOCK_DIAG, sock_diag(7), one dump
//! per family and protocol, as `ss -tuan` does); a socket belongs to a
//! process when one of its /proc/PID/fd links reads `socket:[INODE]`
//! (proc(5)). Only the sockets of the caller's network namespace are
//! listed: sock_diag answers for the namespace of the netlink socket.
//! [`crate::isolation::audit`] uses the same two halves.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// TCP_LISTEN in the kernel's enum of TCP states (include/net/tcp_states.h).
pub const TCP_LISTEN: u8 = 10;
const TCP_ESTABLISHED: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One socket of one process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Socket {
    pub pid: i32,
    pub proto: Proto,
    /// TCP: listening. UDP: never (a bound UDP socket receives from anyone).
    pub listening: bool,
    /// TCP: established (or closing). UDP: connect(2)ed to `remote`.
    pub connected: bool,
    pub local: SocketAddr,
    /// None while not connected (a listener, an unconnected UDP socket).
    pub remote: Option<SocketAddr>,
    pub inode: u64,
}

impl Socket {
    /// Whether the socket is bound to `addr` (a v4-mapped address of a v6
    /// socket counts as the v4 address).
    pub fn bound_to(&self, addr: IpAddr) -> bool {
        canonical(self.local.ip()) == canonical(addr)
    }

    /// Bound to 0.0.0.0 or :: (every address of the node).
    pub fn is_wildcard(&self) -> bool {
        canonical(self.local.ip()).is_unspecified()
    }
}

/// `::ffff:a.b.c.d` as a.b.c.d; everything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A socket of an instance that is not where the instance should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub socket: Socket,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.socket;
        let proto = match s.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let what = if s.listening {
            "listening on"
        } else if s.connected {
            "connected from"
        } else {
            "bound to"
        };
        write!(
            f,
            "pid {}: {proto} {what} {}: {}",
            s.pid, s.local, self.reason
        )
    }
}

/// The sockets of an instance on `addr` that are not on it (pure: what
/// `cohost verify` prints). Listening TCP and unconnected UDP sockets must
/// be bound to `addr` (or to loopback, private to the node); with
/// `check_source` (force_source), connected ones must leave from it too
/// (or be loopback to loopback). An unbound UDP client that sent a datagram
/// shows as bound to the wildcard with an ephemeral port (the kernel's
/// autobind runs no bind program) and is reported as such.
pub fn violations(socks: &[Socket], addr: IpAddr, check_source: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in socks {
        let local = canonical(s.local.ip());
        let reason = if s.connected {
            if !check_source || s.bound_to(addr) || local.is_loopback() {
                continue;
            }
            format!("not from the logical address {addr}")
        } else if s.is_wildcard() {
            format!("every address of the node, not only {addr}")
        } else if s.bound_to(addr) || local.is_loopback() {
            continue;
        } else {
            format!("not the logical address {addr}")
        };
        out.push(Violation {
            socket: s.clone(),
            reason,
        });
    }
    out
}

/// The socket inodes among a process's open files (empty when the process
/// is gone or not ours to read).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let l = link.to_string_lossy();
        if let Some(n) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
            && let Ok(inode) = n.parse::<u64>()
        {
            out.push(inode);
        }
    }
    out
}

/// Every TCP and UDP socket (both families, every state) held by one of
/// `pids`, sorted by pid. A socket shared by several pids (inherited
/// across fork) is listed for each.
pub fn of_pids(pids: &[i32]) -> io::Result<Vec<Socket>> {
    let owned: Vec<(i32, HashSet<u64>)> = pids
        .iter()
        .map(|p| (*p, socket_inodes(*p).into_iter().collect()))
        .collect();
    if owned.iter().all(|(_, s)| s.is_empty()) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (proto, ipproto) in [
        (Proto::Tcp, libc::IPPROTO_TCP),
        (Proto::Udp, libc::IPPROTO_UDP),
    ] {
        for family in [libc::AF_INET, libc::AF_INET6] {
            let msgs = dump(&Request {
                family: family as u8,
                protocol: ipproto as u8,
                states: u32::MAX,
                bytecode: &[],
            })?;
            for m in msgs {
                for (pid, inodes) in &owned {
                    if inodes.contains(&m.inode) {
                        out.push(m.socket(*pid, proto));
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One sock_diag dump request (struct inet_diag_req_v2 and an optional
/// INET_DIAG_REQ_BYTECODE filter, linux/inet_diag.h).
pub struct Request<'a> {
    pub family: u8,
    pub protocol: u8,
    /// Bit mask of the TCP states wanted (1 << TCP_LISTEN …).
    pub states: u32,
    /// Filter bytecode run by the kernel on each socket; empty: none.
    pub bytecode: &'a [u8],
}

/// One socket as sock_diag reports it (struct inet_diag_msg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagMsg {
    pub family: u8,
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    /// 4 (AF_INET) or 16 significant bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub inode: u64,
}

impl DiagMsg {
    fn ip(&self, raw: &[u8; 16]) -> IpAddr {
        if self.family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*raw))
        }
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.ip(&self.src), self.sport)
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        let ip = self.ip(&self.dst);
        (!ip.is_unspecified() || self.dport != 0).then(|| SocketAddr::new(ip, self.dport))
    }

    fn socket(&self, pid: i32, proto: Proto) -> Socket {
        Socket {
            pid,
            proto,
            listening: proto == Proto::Tcp && self.state == TCP_LISTEN,
            connected: match proto {
                // UDP reports a connect(2)ed socket as ESTABLISHED.
                Proto::Udp => self.state == TCP_ESTABLISHED,
                Proto::Tcp => self.state != TCP_LISTEN && self.remote().is_some(),
            },
            local: self.local(),
            remote: self.remote(),
            inode: self.inode,
        }
    }
}

/// Sends one dump request and collects the answer.
pub fn dump(req: &Request) -> io::Result<Vec<DiagMsg>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const INET_DIAG_REQ_BYTECODE: u16 = 1;
    // SAFETY: socket(2): a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr_len = if req.bytecode.is_empty() {
        0
    } else {
        4 + req.bytecode.len()
    };
    let total = 16 + 56 + attr_len;
    let mut m: Vec<u8> = Vec::with_capacity(total);
    // struct nlmsghdr
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2
    m.push(req.family);
    m.push(req.protocol);
    m.push(0); // idiag_ext
    m.push(0); // pad
    m.extend_from_slice(&req.states.to_ne_bytes());
    m.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: all zero
    if attr_len > 0 {
        // struct nlattr
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend_from_slice(req.bytecode);
    }
    // SAFETY: send on our socket (connected to the kernel by default).
    if unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

/// Parses one datagram of the answer into `out`; true at NLMSG_DONE.
fn parse(buf: &[u8], out: &mut Vec<DiagMsg>) -> io::Result<bool> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if len < 16 || off + len > buf.len() {
            break;
        }
        match kind as i32 {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                return Err(io::Error::other("sock_diag refused the request"));
            }
            _ => {}
        }
        // inet_diag_msg: family, state, timer, retrans, then sockid
        // (sport, dport: be16; src[16], dst[16], if, cookie[8]),
        // expires, rqueue, wqueue, uid, inode.
        let msg = &buf[off + 16..off + len];
        if msg.len() >= 72 {
            out.push(DiagMsg {
                family: msg[0],
                state: msg[1],
                sport: u16::from_be_bytes([msg[4], msg[5]]),
                dport: u16::from_be_bytes([msg[6], msg[7]]),
                src: msg[8..24].try_into().unwrap(),
                dst: msg[24..40].try_into().unwrap(),
                inode: u32::from_ne_bytes(msg[68..72].try_into().unwrap()) as u64,
            });
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn find(all: &[Socket], local: SocketAddr, proto: Proto) -> &Socket {
        all.iter()
            .find(|s| s.local == local && s.proto == proto)
            .unwrap_or_else(|| panic!("{proto:?} {local} not in {all:#?}"))
    }

    #[test]
    fn lists_every_kind_of_socket_of_this_process_with_its_addresses() {
        let me = std::process::id() as i32;
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c4 = TcpStream::connect(l4.local_addr().unwrap()).unwrap();
        let (a4, _) = l4.accept().unwrap();
        let l6 = TcpListener::bind("[::]:0").unwrap();
        let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let u6 = UdpSocket::bind("[::1]:0").unwrap();
        u6.connect(u6.local_addr().unwrap()).unwrap();
        let all = of_pids(&[me]).unwrap();

        // The listener and the accepted end share the local address.
        let s = all
            .iter()
            .find(|s| s.local == l4.local_addr().unwrap() && s.listening)
            .expect("the listener");
        assert!(!s.connected && s.remote.is_none(), "{s:?}");
        assert_eq!(s.pid, me);
        let s = find(&all, c4.local_addr().unwrap(), Proto::Tcp);
        assert!(!s.listening && s.connected, "{s:?}");
        assert_eq!(s.remote, Some(l4.local_addr().unwrap()));
        let s = all
            .iter()
            .find(|x| x.remote == Some(c4.local_addr().unwrap()))
            .expect("the accepted end");
        assert!(s.connected && s.local == a4.local_addr().unwrap(), "{s:?}");
        let s = find(&all, l6.local_addr().unwrap(), Proto::Tcp);
        assert!(s.listening && s.is_wildcard(), "{s:?}");
        let s = find(&all, u4.local_addr().unwrap(), Proto::Udp);
        assert!(!s.listening && !s.connected && s.remote.is_none(), "{s:?}");
        assert!(s.bound_to("127.0.0.1".parse().unwrap()));
        let s = find(&all, u6.local_addr().unwrap(), Proto::Udp);
        assert!(
            s.connected && s.remote == Some(u6.local_addr().unwrap()),
            "{s:?}"
        );
        // Nothing of another process.
        assert!(all.iter().all(|s| s.pid == me));
        assert!(of_pids(&[]).unwrap().is_empty());
    }

    fn sock(proto: Proto, listening: bool, connected: bool, local: &str) -> Socket {
        Socket {
            pid: 7,
            proto,
            listening,
            connected,
            local: local.parse().unwrap(),
            remote: connected.then(|| "10.9.9.9:1".parse().unwrap()),
            inode: 1,
        }
    }

    #[test]
    fn violations_name_each_socket_off_the_logical_address() {
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        let ok = [
            sock(Proto::Tcp, true, false, "10.0.0.1:94"),
            sock(Proto::Tcp, true, false, "[::ffff:10.0.0.1]:95"),
            sock(Proto::Tcp, true, false, "127.0.0.1:96"),
            sock(Proto::Udp, false, false, "10.0.0.1:94"),
            sock(Proto::Udp, false, false, "[::1]:94"),
            sock(Proto::Tcp, false, true, "10.0.0.1:40000"),
        ];
        for s in &ok {
            assert_eq!(
                violations(std::slice::from_ref(s), addr, true),
                vec![],
                "{s:?}"
            );
        }
        let bad = [
            (
                sock(Proto::Tcp, true, false, "0.0.0.0:94"),
                "pid 7: tcp listening on 0.0.0.0:94: every address of the node, not only 10.0.0.1",
            ),
            (
                sock(Proto::Tcp, true, false, "[::]:94"),
                "pid 7: tcp listening on [::]:94: every address of the node, not only 10.0.0.1",
            ),
            (
                sock(Proto::Udp, false, false, "10.0.0.2:94"),
                "pid 7: udp bound to 10.0.0.2:94: not the logical address 10.0.0.1",
            ),
            (
                sock(Proto::Tcp, false, true, "10.0.0.5:40000"),
                "pid 7: tcp connected from 10.0.0.5:40000: not from the logical address 10.0.0.1",
            ),
        ];
        for (s, want) in &bad {
            let v = violations(std::slice::from_ref(s), addr, true);
            assert_eq!(v.len(), 1, "{s:?}");
            assert_eq!(v[0].to_string(), *want);
        }
        // Without force_source a connection may leave from any address.
        assert!(violations(&[bad[3].0.clone()], addr, false).is_empty());
    }

    #[test]
    fn a_v4_mapped_address_counts_as_the_v4_one() {
        let l = TcpListener::bind("[::ffff:127.0.0.1]:0").unwrap();
        let all = of_pids(&[std::process::id() as i32]).unwrap();
        let s = find(&all, l.local_addr().unwrap(), Proto::Tcp);
        assert!(s.bound_to("127.0.0.1".parse().unwrap()), "{s:?}");
        assert!(!s.is_wildcard());
    }
}
