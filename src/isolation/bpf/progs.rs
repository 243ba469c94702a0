//! The programs, built from an instance's addresses (pure: no system call).
//!
//! Each reads and writes `struct bpf_sock_addr` (linux/bpf.h): the kernel
//! hands it in r1 and rewrites the access to the real `sockaddr` it is
//! about to use. Addresses there are in network byte order, so a word is
//! compared with `u32::from_ne_bytes(octets)`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::asm::{Asm, Insn, Label, R0, R1, R2, R3, R4, R5, R6, R7, R8, R10};

// Offsets in struct bpf_sock_addr (checked against /usr/include/linux/bpf.h
// with offsetof on Linux 6.1 headers; the struct only grows at its end).
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;
const MSG_SRC_IP4: i16 = 40;
const MSG_SRC_IP6: i16 = 44;

// enum bpf_func_id.
/// `u64 bpf_get_current_cgroup_id(void)`: the cgroup v2 id (its
/// directory's inode number) of the calling task.
pub const HELPER_GET_CURRENT_CGROUP_ID: i32 = 80;
/// `void *bpf_map_lookup_elem(map, const void *key)`.
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
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

/// Jumps to `to` unless the four words in r2..r5 equal `addr`.
fn unless_equal(a: &mut Asm, addr: Ipv6Addr, to: Label) {
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

/// The maps the bind programs use (fds, put in the program at load time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindMaps {
    /// The node's logical addresses (16-byte keys, v4 ones v4-mapped).
    pub addrs: i32,
    /// cgroup id (u64) -> the instance's address (16 bytes, as above).
    pub owners: i32,
}

// Stack layout of the bind programs (r10 is the frame's top).
const KEY_CGID: i16 = -8; // u64 cgroup id
const KEY_ADDR: i16 = -24; // 16-byte address
const NO_OWNER: i16 = -40; // 16 zero bytes: "this cgroup has no address"

/// Preamble: r6 = ctx, r7 = &owner address (16 bytes): the address of the
/// instance whose cgroup the calling process is in, or 16 zero bytes on
/// the stack when the cgroup is not registered (a sub-cgroup the product
/// made itself: it inherits the programs, and gets no wildcard binds).
fn owner(a: &mut Asm, maps: BindMaps) {
    let known = a.label();
    a.mov64_reg(R6, R1) // r6 = ctx: r1-r5 are clobbered by helper calls
        .call(HELPER_GET_CURRENT_CGROUP_ID) // r0 = the caller's cgroup id
        .stx_dw(R10, KEY_CGID, R0)
        .ld_map_fd(R1, maps.owners)
        .mov64_reg(R2, R10)
        .add64_imm(R2, KEY_CGID.into())
        .call(HELPER_MAP_LOOKUP_ELEM) // r0 = &owners[cgroup id] or NULL
        .mov64_reg(R7, R0)
        .jne64_imm(R0, 0, known)
        .mov64_imm(R2, 0)
        .stx_dw(R10, NO_OWNER, R2)
        .stx_dw(R10, NO_OWNER + 8, R2)
        .mov64_reg(R7, R10)
        .add64_imm(R7, NO_OWNER.into()); // r7 = &"no address"
    a.here(known);
}

/// Loads the owner address's four words (r7) into r2..r5.
fn load_owner(a: &mut Asm) {
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.ldx_w(reg, R7, 4 * i as i16);
    }
}

/// With the 16-byte key at KEY_ADDR: allow unless it is in the node's
/// address set and not the owner's.
fn refuse_others(a: &mut Asm, maps: BindMaps, yes: Label, no: Label) {
    a.ld_map_fd(R1, maps.addrs) // r1 = the node's logical addresses
        .mov64_reg(R2, R10)
        .add64_imm(R2, KEY_ADDR.into())
        .call(HELPER_MAP_LOOKUP_ELEM) // r0 = bpf_map_lookup_elem(addrs, &key)
        .jeq64_imm(R0, 0, yes); // not a logical address: go on
    for i in 0..4 {
        a.ldx_w(R2, R7, 4 * i) // owner word i
            .ldx_w(R3, R10, KEY_ADDR + 4 * i) // key word i
            .jne32_reg(R2, R3, no); // another instance's address
    }
    a.ja(yes); // the owner's own address
}

/// BPF_CGROUP_INET4_BIND. `0.0.0.0` becomes the instance's address when it
/// is an IPv4 one; an IPv6 instance's (or an unregistered cgroup's)
/// `0.0.0.0` is refused: it would serve every IPv4 address of the node.
/// A bind to an address of the node's set other than the instance's own
/// is refused. The same program serves every instance.
pub fn bind4(maps: BindMaps, how: Refusal) -> Vec<Insn> {
    let mut a = Asm::new();
    let (specific, yes, no) = (a.label(), a.label(), a.label());
    owner(&mut a, maps);
    a.ldx_w(R8, R6, USER_IP4) // w8 = the address bind(2) was given
        .jne32_imm(R8, 0, specific); // not 0.0.0.0: look it up
    load_owner(&mut a);
    a.jne32_imm(R2, 0, no) // the owner's address must be ::ffff:a.b.c.d
        .jne32_imm(R3, 0, no)
        .jne32_imm(R4, mapped_word(), no)
        .stx_w(R6, USER_IP4, R5) // bind to a.b.c.d instead
        .ja(yes);
    a.here(specific);
    a.mov64_imm(R2, 0) // key = ::ffff:w8, the form of the set
        .stx_dw(R10, KEY_ADDR, R2)
        .st_w(R10, KEY_ADDR + 8, mapped_word())
        .stx_w(R10, KEY_ADDR + 12, R8);
    refuse_others(&mut a, maps, yes, no);
    a.here(yes);
    allow(&mut a);
    a.here(no);
    refuse(&mut a, how);
    a.finish()
}

/// BPF_CGROUP_INET6_BIND (the program sees `user_ip6`). `::` becomes the
/// instance's address: an IPv6 one, or an IPv4 one v4-mapped, so that a
/// dual-stack listener (Java's default) of an IPv4 instance serves IPv4 on
/// the logical address only (a socket with IPV6_V6ONLY then gets EINVAL
/// from the kernel, as for any v4-mapped bind). `::ffff:0.0.0.0` becomes
/// `::ffff:ADDR` for an IPv4 instance and is refused for an IPv6 one.
/// Unregistered cgroups get no wildcard. Binds to others' addresses are
/// refused as in [`bind4`].
pub fn bind6(maps: BindMaps, how: Refusal) -> Vec<Insn> {
    let mut a = Asm::new();
    let (not_any, has_owner, specific, yes, no) =
        (a.label(), a.label(), a.label(), a.label(), a.label());
    owner(&mut a, maps);
    load6(&mut a, USER_IP6); // w2..w5 = the address bind(2) was given
    unless_equal(&mut a, Ipv6Addr::UNSPECIFIED, not_any); // "::"?
    load_owner(&mut a);
    for reg in [R2, R3, R4, R5] {
        a.jne32_imm(reg, 0, has_owner);
    }
    a.ja(no); // an unregistered cgroup
    a.here(has_owner);
    store_regs6(&mut a); // bind to the owner's address instead
    a.ja(yes);
    a.here(not_any);
    load6(&mut a, USER_IP6); // (r2.. may hold a partial match: reload)
    unless_equal(&mut a, Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), specific);
    load_owner(&mut a);
    a.jne32_imm(R2, 0, no) // only an IPv4 owner has a v4-mapped form
        .jne32_imm(R3, 0, no)
        .jne32_imm(R4, mapped_word(), no);
    store_regs6(&mut a);
    a.ja(yes);
    a.here(specific);
    load6(&mut a, USER_IP6);
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.stx_w(R10, KEY_ADDR + 4 * i as i16, reg); // key = the address
    }
    refuse_others(&mut a, maps, yes, no);
    a.here(yes);
    allow(&mut a);
    a.here(no);
    refuse(&mut a, how);
    a.finish()
}

/// `user_ip6 = w2..w5`.
fn store_regs6(a: &mut Asm) {
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.stx_w(R6, USER_IP6 + 4 * i as i16, reg);
    }
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
