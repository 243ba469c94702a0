//! A stand-in for a product that knows nothing of logical addresses, for
//! the force_bind / force_source tests (tests/section_bind.rs).
//!
//!   binder listen tcp|udp ADDR NAME   bind ADDR (e.g. 0.0.0.0:94), print
//!                                     "bound LOCAL", then answer every
//!                                     connection or datagram with
//!                                     "NAME PEER" (PEER: the caller's address)
//!   binder connect tcp|udp ADDR       connect(2) to ADDR and print the
//!                                     answer line (UDP: after sending one)
//!   binder sendto udp ADDR            the same with an unconnected socket
//!                                     (sendto(2), the sendmsg hook)
//!
//! A failed bind or connect prints "error: ..." with the OS error on
//! stderr and exits 2.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

fn fail(what: &str, e: std::io::Error) -> ! {
    eprintln!("error: {what}: {e}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let addr = |s: &str| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("error: bad address {s}: {e}");
            std::process::exit(2)
        })
    };
    match a.as_slice() {
        ["listen", "tcp", at, name] => {
            let l = TcpListener::bind(addr(at)).unwrap_or_else(|e| fail(&format!("bind {at}"), e));
            println!("bound {}", l.local_addr().unwrap());
            std::io::stdout().flush().unwrap();
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let _ = writeln!(c, "{name} {peer}");
            }
        }
        ["listen", "udp", at, name] => {
            let s = UdpSocket::bind(addr(at)).unwrap_or_else(|e| fail(&format!("bind {at}"), e));
            println!("bound {}", s.local_addr().unwrap());
            std::io::stdout().flush().unwrap();
            let mut buf = [0u8; 512];
            loop {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        }
        ["connect", "tcp", to] => {
            let c =
                TcpStream::connect(addr(to)).unwrap_or_else(|e| fail(&format!("connect {to}"), e));
            let mut line = String::new();
            BufReader::new(c)
                .read_line(&mut line)
                .unwrap_or_else(|e| fail("read", e));
            print!("{line}");
        }
        [mode @ ("connect" | "sendto"), "udp", to] => {
            use nix::sys::socket::{
                AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, connect, recv, send,
                sendto, socket,
            };
            let to = addr(to);
            let family = if to.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            // Not bound: the kernel picks the source (and the port) at
            // connect(2) or sendto(2), as for most UDP clients.
            let s = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
                .unwrap_or_else(|e| fail("socket", e.into()));
            let dest = SockaddrStorage::from(to);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            if *mode == "connect" {
                connect(fd, &dest).unwrap_or_else(|e| fail(&format!("connect {to}"), e.into()));
                send(fd, b"hi", MsgFlags::empty()).unwrap_or_else(|e| fail("send", e.into()));
            } else {
                sendto(fd, b"hi", &dest, MsgFlags::empty())
                    .unwrap_or_else(|e| fail("sendto", e.into()));
            }
            let mut buf = [0u8; 512];
            let n =
                recv(fd, &mut buf, MsgFlags::empty()).unwrap_or_else(|e| fail("recv", e.into()));
            println!("{}", String::from_utf8_lossy(&buf[..n]));
        }
        _ => {
            eprintln!(
                "usage: binder listen tcp|udp ADDR NAME | connect tcp|udp ADDR | sendto udp ADDR"
            );
            std::process::exit(2)
        }
    }
}
