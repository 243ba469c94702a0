//! Bind audit: which of an instance's processes listen on the wildcard
//! address for its port. Such a listener makes a second copy on the same
//! node fail with "address in use" (the "port 94: In use. Waiting…" story).
//!
//! The kernel is asked for LISTEN sockets on that one port only
//! (NETLINK_SOCK_DIAG with a port filter, sock_diag(7), as `ss 'sport = :P'`
//! does): the answer is usually empty and costs the same at 10 or 1000
//! instances on the node. /proc/net/tcp, which lists and formats every
//! socket of the node, is only the fallback. A wildcard socket's inode is
//! then matched to a member through /proc/PID/fd links "socket:[N]".

use std::collections::BTreeMap;

/// Every wildcard TCP listener of this network namespace, by port:
/// port -> [(inode, "0.0.0.0:P" / "[::]:P")]. One kernel query, however
/// many instances there are to audit (the supervisor audits everything that
/// became ready in one loop iteration with one call).
pub fn wildcard_listeners_by_port() -> BTreeMap<u16, Vec<(u64, String)>> {
    let mut by_port: BTreeMap<u16, Vec<(u64, String)>> = BTreeMap::new();
    match sock_diag_wildcard(None) {
        Ok(found) => {
            for (port, inode, addr) in found {
                by_port.entry(port).or_default().push((inode, addr));
            }
        }
        Err(_) => {
            for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
                if let Ok(t) = std::fs::read_to_string(file) {
                    for (port, inode, addr) in wildcard_listen_all(&t, v6) {
                        by_port.entry(port).or_default().push((inode, addr));
                    }
                }
            }
        }
    }
    by_port
}

/// (pid, comm, address) of the sockets among `inodes` owned by `pids`.
pub fn owners(pids: &[i32], inodes: &[(u64, String)]) -> Vec<(i32, String, String)> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pid in pids {
        for inode in super::sockets::socket_inodes(*pid) {
            if let Some((_, addr)) = inodes.iter().find(|(i, _)| *i == inode) {
                let comm = crate::process::procfs::stat(*pid)
                    .map(|s| s.comm)
                    .unwrap_or_default();
                out.push((*pid, comm, addr.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// (pid, comm, address) of every wildcard listener on `port` owned by one
/// of `pids`.
pub fn wildcard_listeners(pids: &[i32], port: u16) -> Vec<(i32, String, String)> {
    let all = wildcard_listeners_by_port();
    owners(pids, all.get(&port).map(Vec::as_slice).unwrap_or(&[]))
}

fn wildcard_listen_all(table: &str, v6: bool) -> Vec<(u16, u64, String)> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((addr, p)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(p, 16) else {
            continue;
        };
        if addr.bytes().all(|b| b == b'0') {
            let shown = if v6 {
                format!("[::]:{port}")
            } else {
                format!("0.0.0.0:{port}")
            };
            if let Ok(inode) = f[9].parse() {
                out.push((port, inode, shown));
            }
        }
    }
    out
}

/// (port, inode, "0.0.0.0:P" / "[::]:P") of wildcard TCP listeners (on
/// `port`, or on any port), both families, filtered by the kernel.
fn sock_diag_wildcard(port: Option<u16>) -> std::io::Result<Vec<(u16, u64, String)>> {
    use super::sockets::{Request, TCP_LISTEN, dump};
    // enum in linux/inet_diag.h: NOP, JMP, S_GE, S_LE, D_GE, D_LE, AUTO,
    // S_COND (7), D_COND, DEV_COND, MARK_COND, S_EQ, D_EQ, CGROUP_COND.
    const INET_DIAG_BC_S_COND: u8 = 7;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // Bytecode "source address is the wildcard, source port is P": one
        // S_COND op with an inet_diag_hostcond {family, prefix_len, port,
        // addr}; yes jumps to the end (accept), no past it (reject). So the
        // kernel copies out only the offending sockets, even with 1000
        // instances listening on P at their own addresses.
        let addr_len: usize = if family == libc::AF_INET as u8 { 4 } else { 16 };
        let bc_len = 4 + 8 + addr_len;
        let mut bc: Vec<u8> = Vec::with_capacity(bc_len);
        bc.push(INET_DIAG_BC_S_COND);
        bc.push(bc_len as u8);
        bc.extend_from_slice(&((bc_len + 4) as u16).to_ne_bytes());
        bc.push(family);
        bc.push((addr_len * 8) as u8);
        bc.extend_from_slice(&[0, 0]);
        // -1: any port.
        bc.extend_from_slice(&port.map_or(-1, i32::from).to_ne_bytes());
        bc.resize(bc.len() + addr_len, 0);
        let found = dump(&Request {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1u32 << TCP_LISTEN,
            bytecode: &bc,
        })?;
        for m in found {
            let wild = if family == libc::AF_INET as u8 {
                m.src[..4] == [0; 4]
            } else {
                m.src == [0u8; 16]
            };
            if wild && port.is_none_or(|p| p == m.sport) {
                let shown = if family == libc::AF_INET as u8 {
                    format!("0.0.0.0:{}", m.sport)
                } else {
                    format!("[::]:{}", m.sport)
                };
                out.push((m.sport, m.inode, shown));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_sees_a_wildcard_listener_and_ignores_a_specific_one() {
        let wild = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = wild.local_addr().unwrap().port();
        let found = sock_diag_wildcard(Some(port)).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].2, format!("0.0.0.0:{port}"));
        assert!(
            sock_diag_wildcard(None)
                .unwrap()
                .iter()
                .any(|(p, _, _)| *p == port),
            "any port"
        );
        let specific = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p2 = specific.local_addr().unwrap().port();
        assert!(sock_diag_wildcard(Some(p2)).unwrap().is_empty());
        // The same port on a specific address beside a wildcard one: only
        // the wildcard socket is reported.
        let wild6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let p3 = wild6.local_addr().unwrap().port();
        let _same_port_specific = std::net::TcpListener::bind(("127.0.0.1", p3)).ok();
        let found = sock_diag_wildcard(Some(p3)).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].2, format!("[::]:{p3}"));
        // The whole path: the owner of the socket is named.
        let me = std::process::id() as i32;
        let hits = wildcard_listeners(&[me], port);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].0, me);
    }

    #[test]
    fn finds_only_wildcard_listeners_on_the_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:232B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0200007F:232B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n\
   3: 00000000:232B 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0\n";
        let got: Vec<_> = wildcard_listen_all(t, false)
            .into_iter()
            .filter(|(p, _, _)| *p == 9003)
            .collect();
        assert_eq!(got, vec![(9003, 111, "0.0.0.0:9003".to_string())]);
    }
}
