//! The logical address: is it configured on this node, wait until it is,
//! or add/remove it ourselves (address_mode = "own").
//!
//! "Configured" is asked of the kernel the way the service will ask it: a
//! bind(2) to ADDRESS:0 succeeds only for a local address (EADDRNOTAVAIL
//! otherwise, also while IPv6 DAD is still running). With
//! net.ipv4.ip_nonlocal_bind = 1 that test is meaningless, so the interface
//! list decides instead. Waiting is event-driven: an rtnetlink socket
//! subscribed to address changes (rtnetlink(7)) wakes the loop.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Is `addr` configured on this node (in this network namespace)?
pub fn is_local(addr: IpAddr) -> io::Result<bool> {
    if nonlocal_bind(addr) {
        return listed(addr);
    }
    match UdpSocket::bind(SocketAddr::new(addr, 0)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ip_nonlocal_bind sysctl, read at most once a second (500 instances
/// starting at once ask 500 times within milliseconds).
fn nonlocal_bind(addr: IpAddr) -> bool {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static CACHE: Mutex<[Option<(Instant, bool)>; 2]> = Mutex::new([None, None]);
    let (slot, f) = if addr.is_ipv4() {
        (0, "/proc/sys/net/ipv4/ip_nonlocal_bind")
    } else {
        (1, "/proc/sys/net/ipv6/ip_nonlocal_bind")
    };
    let now = Instant::now();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, v)) = cache[slot]
        && now.duration_since(at) < Duration::from_secs(1)
    {
        return v;
    }
    let v = std::fs::read_to_string(f)
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    cache[slot] = Some((now, v));
    v
}

fn listed(addr: IpAddr) -> io::Result<bool> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if ip == addr {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An rtnetlink socket that becomes readable on every address change.
pub fn watch_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; fields set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: bind with a valid sockaddr_nl.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Empties the watch socket (its messages only mean "look again").
pub fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: recv into a stack buffer; nonblocking socket.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("interface {0:?} does not exist on this node")]
    NoInterface(String),
    #[error("{op} {addr}/{prefix} on {iface}: {source}")]
    Netlink {
        op: &'static str,
        addr: IpAddr,
        prefix: u8,
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// Adds `addr/prefix` to `iface` (RTM_NEWADDR). Already present is fine.
pub fn add(addr: IpAddr, prefix: u8, iface: &str) -> Result<(), AddrError> {
    change(libc::RTM_NEWADDR, addr, prefix, iface).or_else(|e| match &e {
        AddrError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        _ => Err(e),
    })
}

/// Removes `addr/prefix` from `iface` (RTM_DELADDR). Already gone is fine.
pub fn remove(addr: IpAddr, prefix: u8, iface: &str) -> Result<(), AddrError> {
    change(libc::RTM_DELADDR, addr, prefix, iface).or_else(|e| match &e {
        AddrError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            Ok(())
        }
        _ => Err(e),
    })
}

/// Announces `addr` on `iface` with a gratuitous ARP: an ARP request for
/// the address itself from our MAC (RFC 5227's announcement; what
/// `arping -U` and Pacemaker's IPaddr2 send). Neighbours and switches that
/// still map the address to the failed node's MAC learn the new one now,
/// not when their cache entry expires. `Ok(false)`: nothing to do (IPv6,
/// whose neighbours learn through the kernel's DAD and unsolicited
/// advertisements; or an interface without ARP, like loopback).
pub fn announce(addr: IpAddr, iface: &str) -> io::Result<bool> {
    let IpAddr::V4(v4) = addr else {
        return Ok(false);
    };
    let cname = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: if_nametoindex with a valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let Some(mac) = ethernet_address(&cname)? else {
        return Ok(false);
    };
    // SAFETY: a new packet socket, owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = arp_announcement(mac, v4.octets());
    // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: sendto with our buffer and a valid link-layer address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// The ARP payload (the kernel adds the Ethernet header): request,
/// sender = target = `ip`, target hardware address zero.
pub fn arp_announcement(mac: [u8; 6], ip: [u8; 4]) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[4] = 6;
    f[5] = 4;
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    f[8..14].copy_from_slice(&mac);
    f[14..18].copy_from_slice(&ip);
    f[24..28].copy_from_slice(&ip);
    f
}

/// The interface's MAC, `None` when it is not an ARP-speaking Ethernet
/// interface. Asked with ioctls (this network namespace's view; /sys may
/// be another namespace's).
fn ethernet_address(name: &std::ffi::CStr) -> io::Result<Option<[u8; 6]>> {
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: [u8; 24],
    }
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    for (d, s) in req.name.iter_mut().zip(name.to_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags (a short at data[0..2]).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) as i32;
    if flags & libc::IFF_NOARP != 0 || flags & libc::IFF_LOOPBACK != 0 {
        return Ok(None);
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr (family, then the address).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let family = u16::from_ne_bytes([req.data[0], req.data[1]]);
    if family != libc::ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.data[2..8]);
    Ok(Some(mac))
}

fn change(op: u16, addr: IpAddr, prefix: u8, iface: &str) -> Result<(), AddrError> {
    let opname = if op == libc::RTM_NEWADDR {
        "adding"
    } else {
        "removing"
    };
    let nl_err = |source: io::Error| AddrError::Netlink {
        op: opname,
        addr,
        prefix,
        iface: iface.to_string(),
        source,
    };
    let cname = std::ffi::CString::new(iface).map_err(|_| AddrError::NoInterface(iface.into()))?;
    // SAFETY: if_nametoindex with a valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(AddrError::NoInterface(iface.into()));
    }
    let msg = addr_message(op, addr, prefix, index);
    netlink_request(&msg).map_err(nl_err)
}

/// An RTM_NEWADDR/RTM_DELADDR request: nlmsghdr + ifaddrmsg + IFA_LOCAL +
/// IFA_ADDRESS (netlink(7), rtnetlink(7)).
fn addr_message(op: u16, addr: IpAddr, prefix: u8, index: u32) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut msg: Vec<u8> = Vec::with_capacity(64);
    let attr_len = 4 + bytes.len();
    let attr_space = (attr_len + 3) & !3;
    let total = 16 + 8 + 2 * attr_space;
    let flags = libc::NLM_F_REQUEST
        | libc::NLM_F_ACK
        | if op == libc::RTM_NEWADDR {
            libc::NLM_F_CREATE | libc::NLM_F_EXCL
        } else {
            0
        };
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&op.to_ne_bytes());
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel fills
    msg.push(family);
    msg.push(prefix);
    msg.push(0); // flags
    msg.push(0); // scope: universe
    msg.extend_from_slice(&index.to_ne_bytes());
    for kind in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&bytes);
        msg.resize(msg.len() + (attr_space - attr_len), 0);
    }
    msg
}

/// Sends one request on a new NETLINK_ROUTE socket and reads its ACK
/// (an NLMSG_ERROR with error 0); 5 s at most for the answer.
fn netlink_request(msg: &[u8]) -> io::Result<()> {
    // SAFETY: new netlink socket, owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: zeroed sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sendto with our buffer and a valid address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: recv into a stack buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // NLMSG_ERROR carries the result: error 0 is the ACK.
    if n as usize >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arp_announcement_is_a_request_for_the_address_itself() {
        let f = arp_announcement([2, 0, 0, 0, 0, 9], [10, 0, 0, 7]);
        assert_eq!(&f[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[8..14], &[2, 0, 0, 0, 0, 9], "sender: our MAC");
        assert_eq!(&f[14..18], &[10, 0, 0, 7], "sender: the address");
        assert_eq!(&f[18..24], &[0; 6], "target MAC unknown");
        assert_eq!(&f[24..28], &[10, 0, 0, 7], "target: the address too");
    }

    #[test]
    fn loopback_is_local_and_documentation_net_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()).unwrap());
        // TEST-NET-3 (RFC 5737): documentation only, never configured.
        assert!(!is_local("203.0.113.77".parse().unwrap()).unwrap());
    }

    #[test]
    fn an_address_request_is_laid_out_as_rtnetlink_says() {
        let m = addr_message(libc::RTM_NEWADDR, "10.0.0.7".parse().unwrap(), 24, 3);
        // nlmsghdr (16) + ifaddrmsg (8) + two 8-byte attributes.
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWADDR);
        let flags = u16::from_ne_bytes([m[6], m[7]]) as libc::c_int;
        assert_ne!(flags & libc::NLM_F_EXCL, 0, "adding never replaces");
        assert_eq!((m[16], m[17]), (libc::AF_INET as u8, 24));
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        for at in [24, 32] {
            assert_eq!(u16::from_ne_bytes([m[at], m[at + 1]]), 8);
            assert_eq!(&m[at + 4..at + 8], &[10, 0, 0, 7]);
        }
        let d = addr_message(libc::RTM_DELADDR, "2001:db8::7".parse().unwrap(), 64, 3);
        assert_eq!(d.len(), 16 + 8 + 2 * 20);
        assert_eq!(
            u16::from_ne_bytes([d[6], d[7]]) as libc::c_int & libc::NLM_F_CREATE,
            0
        );
    }
}
