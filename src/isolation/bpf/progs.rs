//! The programs, built from an instance's addresses (pure: no system call).
//!
//! Each reads and writes `struct bpf_sock_addr` (linux/bpf.h): the kernel
//! hands it in r1 and rewrites the access to the real `sockaddr` it is
//! about to use. Addresses there are in network byte order, so a word is
//! compared with `u32::from_ne_bytes(octets)`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::asm::{Asm, Insn, R0, R1, R2, R3, R4, R5, R6, R10};

// Offsets in struct bpf_sock_addr (checked against /usr/include/linux/bpf.h
// with offsetof on Linux 6.1 headers; the struct only grows at its end).
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;
const MSG_SRC_IP4: i16 = 40;
const MSG_SRC_IP6: i16 = 44;

// enum bpf_func_id.
/// `long bpf_bind(ctx, struct sockaddr *addr, int len)`: connect hooks only.
pub const HELPER_BIND: i32 = 64;
/// `int bpf_set_retval(int retval)` (Linux 5.18): the errno the caller sees.
pub const HELPER_SET_RETVAL: i32 = 187;

const AF_INET: i32 = libc::AF_INET;
const AF_INET6: i32 = libc::AF_INET6;

/// How a refused bind fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `bpf_set_retval(-EADDRNOTAVAIL)` then return 0: bind(2) fails with
    /// EADDRNOTAVAIL, what a bind to an address not on the host gives.
    AddrNotAvail,
    /// Plain return 0 (kernels before 5.18, without `bpf_set_retval`):
    /// the kernel turns it into EPERM.
    Eperm,
}

impl Refusal {
    /// The errno bind(2) returns.
    pub fn errno(self) -> i32 {
        match self {
            Refusal::AddrNotAvail => libc::EADDRNOTAVAIL,
            Refusal::Eperm => libc::EPERM,
        }
    }
}

/// A word of an address as the program loads it from the context.
fn w4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn w6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes(o[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// The third word of a v4-mapped address `::ffff:a.b.c.d`.
fn mapped_word() -> u32 {
    w6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped())[2]
}

/// An address as the v6 programs see it: v4 addresses v4-mapped.
fn as_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn refuse(a: &mut Asm, how: Refusal) {
    if how == Refusal::AddrNotAvail {
        a.mov64_imm(R1, -libc::EADDRNOTAVAIL) // r1 = -EADDRNOTAVAIL
            .call(HELPER_SET_RETVAL); // the errno bind(2) will return
    }
    a.mov64_imm(R0, 0).exit(); // 0: refuse the bind
}

fn allow(a: &mut Asm) {
    a.mov64_imm(R0, 1).exit(); // 1: go on with the (maybe rewritten) bind
}

/// BPF_CGROUP_INET4_BIND. A v4 instance: `0.0.0.0` becomes its address.
/// A v6 instance: `0.0.0.0` is refused (it would serve every v4 address of
/// the node). Either way a bind to one of `refused` is refused.
pub fn bind4(own: IpAddr, refused: &[IpAddr], how: Refusal) -> Vec<Insn> {
    let mut a = Asm::new();
    let (specific, no) = (a.label(), a.label());
    a.mov64_reg(R6, R1) // r6 = ctx: r1 is clobbered by a helper call
        .ldx_w(R2, R6, USER_IP4) // w2 = the address bind(2) was given
        .jne32_imm(R2, 0, specific); // not 0.0.0.0: check the refused set
    match own {
        IpAddr::V4(v4) => {
            a.mov32_imm(R3, w4(v4)) // w3 = our logical address
                .stx_w(R6, USER_IP4, R3); // bind there instead
            allow(&mut a);
        }
        IpAddr::V6(_) => {
            a.ja(no);
        }
    }
    a.here(specific);
    for r in refused.iter().filter(|r| **r != own) {
        if let IpAddr::V4(v4) = r {
            a.jeq32_imm(R2, w4(*v4), no); // another instance's address
        }
    }
    allow(&mut a);
    a.here(no);
    refuse(&mut a, how);
    a.finish()
}

/// Jumps to `to` unless the four words in r2..r5 equal `addr`.
fn unless_equal(a: &mut Asm, addr: Ipv6Addr, to: super::asm::Label) {
    for (reg, w) in [R2, R3, R4, R5].into_iter().zip(w6(addr)) {
        a.jne32_imm(reg, w, to);
    }
}

/// Loads the four words of the address at `off` of the context into r2..r5.
fn load6(a: &mut Asm, off: i16) {
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.ldx_w(reg, R6, off + 4 * i as i16);
    }
}

/// Writes `addr` into the context at `off`, a word at a time through r2.
fn store6(a: &mut Asm, off: i16, addr: Ipv6Addr) {
    for (i, w) in w6(addr).into_iter().enumerate() {
        a.mov32_imm(R2, w).stx_w(R6, off + 4 * i as i16, R2);
    }
}

/// BPF_CGROUP_INET6_BIND (the program sees `user_ip6`). A v6 instance:
/// `::` becomes its address, `::ffff:0.0.0.0` is refused. A v4 instance:
/// `::` and `::ffff:0.0.0.0` become `::ffff:ADDR`, so a dual-stack
/// listener (Java's default) serves IPv4 on the logical address only; a
/// socket with IPV6_V6ONLY then gets EINVAL from the kernel, as it would
/// for any v4-mapped bind. A bind to one of `refused` (v4 ones as v4-mapped)
/// is refused.
pub fn bind6(own: IpAddr, refused: &[IpAddr], how: Refusal) -> Vec<Insn> {
    let mut a = Asm::new();
    let (not_any, specific, no) = (a.label(), a.label(), a.label());
    a.mov64_reg(R6, R1); // r6 = ctx
    load6(&mut a, USER_IP6); // w2..w5 = the address bind(2) was given
    unless_equal(&mut a, Ipv6Addr::UNSPECIFIED, not_any); // "::"?
    store6(&mut a, USER_IP6, as_v6(own)); // bind to ours instead
    allow(&mut a);
    a.here(not_any);
    load6(&mut a, USER_IP6); // (r2 may hold a partial match: reload)
    unless_equal(&mut a, Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), specific); // "::ffff:0.0.0.0"?
    match own {
        IpAddr::V4(v4) => {
            store6(&mut a, USER_IP6, v4.to_ipv6_mapped());
            allow(&mut a);
        }
        IpAddr::V6(_) => {
            a.ja(no);
        }
    }
    a.here(specific);
    for r in refused.iter().filter(|r| **r != own) {
        let next = a.label();
        unless_equal(&mut a, as_v6(*r), next);
        a.ja(no); // all four words equal: another instance's address
        a.here(next);
    }
    allow(&mut a);
    a.here(no);
    refuse(&mut a, how);
    a.finish()
}

/// BPF_CGROUP_INET4_CONNECT: binds the socket to `own` (port 0: the kernel
/// picks it at connect time, BIND_FORCE_ADDRESS_NO_PORT) before the
/// connect. A socket the process bound itself keeps its address (the
/// helper fails, the connect goes on).
pub fn connect4(own: Ipv4Addr) -> Vec<Insn> {
    let mut a = Asm::new();
    a.mov64_reg(R6, R1) // r6 = ctx
        .mov64_imm(R2, 0)
        .stx_dw(R10, -16, R2) // struct sockaddr_in on the stack, zeroed
        .stx_dw(R10, -8, R2)
        .st_h(R10, -16, AF_INET) // sin_family
        .st_w(R10, -12, w4(own)) // sin_addr (sin_port stays 0)
        .mov64_reg(R1, R6) // bpf_bind(ctx,
        .mov64_reg(R2, R10)
        .add64_imm(R2, -16) //   &sin,
        .mov64_imm(R3, 16) //   sizeof sin)
        .call(HELPER_BIND);
    allow(&mut a); // the connect goes on whatever bpf_bind said
    a.finish()
}

/// BPF_CGROUP_INET6_CONNECT. A v6 instance: binds to its address unless
/// the destination is v4-mapped (that connection is IPv4 and cannot leave
/// from a v6 address). A v4 instance: binds to `::ffff:ADDR` only when the
/// destination is v4-mapped (an IPv4 connection from a dual-stack socket);
/// native IPv6 connections are left alone, there is no v6 logical address.
pub fn connect6(own: IpAddr) -> Vec<Insn> {
    let mut a = Asm::new();
    let (not_mapped, done) = (a.label(), a.label());
    a.mov64_reg(R6, R1); // r6 = ctx
    load6(&mut a, USER_IP6); // the destination
    a.jne32_imm(R2, 0, not_mapped) // ::ffff:a.b.c.d has words 0 and 1 zero
        .jne32_imm(R3, 0, not_mapped)
        .jne32_imm(R4, mapped_word(), not_mapped); // and word 2 0x0000ffff
    match own {
        IpAddr::V4(v4) => {
            emit_bind6(&mut a, v4.to_ipv6_mapped()); // v4 over a v6 socket
            a.ja(done);
            a.here(not_mapped); // native IPv6: left alone
        }
        IpAddr::V6(v6) => {
            a.ja(done); // IPv4 over a v6 socket: left alone
            a.here(not_mapped);
            emit_bind6(&mut a, v6);
        }
    }
    a.here(done);
    allow(&mut a);
    a.finish()
}

/// `bpf_bind(ctx, &(struct sockaddr_in6){AF_INET6, 0, 0, addr, 0}, 28)`.
fn emit_bind6(a: &mut Asm, addr: Ipv6Addr) {
    a.mov64_imm(R2, 0);
    for off in [-32, -24, -16, -8] {
        a.stx_dw(R10, off, R2); // 32 zeroed bytes of stack
    }
    a.st_h(R10, -32, AF_INET6); // sin6_family; port, flowinfo stay 0
    for (i, w) in w6(addr).into_iter().enumerate() {
        a.st_w(R10, -24 + 4 * i as i16, w); // sin6_addr
    }
    a.mov64_reg(R1, R6)
        .mov64_reg(R2, R10)
        .add64_imm(R2, -32)
        .mov64_imm(R3, 28) // sizeof(struct sockaddr_in6)
        .call(HELPER_BIND);
}

/// BPF_CGROUP_UDP4_SENDMSG: an unconnected UDP send with no source address
/// (an unbound or 0.0.0.0-bound socket, no IP_PKTINFO) leaves from `own`.
pub fn sendmsg4(own: Ipv4Addr) -> Vec<Insn> {
    let mut a = Asm::new();
    let done = a.label();
    a.ldx_w(R2, R1, MSG_SRC_IP4) // w2 = the source the kernel would use
        .jne32_imm(R2, 0, done) // one is set: keep it
        .mov32_imm(R2, w4(own))
        .stx_w(R1, MSG_SRC_IP4, R2); // leave from our address
    a.here(done);
    allow(&mut a);
    a.finish()
}

/// BPF_CGROUP_UDP6_SENDMSG: the same for a v6 instance; a send to a
/// v4-mapped destination takes the IPv4 path and is left alone.
pub fn sendmsg6(own: Ipv6Addr) -> Vec<Insn> {
    let mut a = Asm::new();
    let done = a.label();
    a.mov64_reg(R6, R1);
    load6(&mut a, USER_IP6); // the destination
    let not_mapped = a.label();
    a.jne32_imm(R2, 0, not_mapped)
        .jne32_imm(R3, 0, not_mapped)
        .jeq32_imm(R4, mapped_word(), done);
    a.here(not_mapped);
    load6(&mut a, MSG_SRC_IP6);
    for reg in [R2, R3, R4, R5] {
        a.jne32_imm(reg, 0, done); // a source is set: keep it
    }
    store6(&mut a, MSG_SRC_IP6, own);
    a.here(done);
    allow(&mut a);
    a.finish()
}

#[cfg(test)]
#[path = "progs_tests.rs"]
mod tests;
