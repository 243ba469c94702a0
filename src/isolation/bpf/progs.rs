//! The programs, built from an instance's addresses (pure: no system call).
//!
//! Each reads and writes `struct bpf_sock_addr` (linux/bpf.h): the kernel
//! hands it in r1 and rewrites the access to the real `sockaddr` it is
//! about to use. Addresses there are in network byte order, so a word is
//! compared with `u32::from_ne_bytes(octets)`.

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// The words of an address as the program loads them from the context.
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
fn owner(a: &mut Asm, owners: i32) {
    let known = a.label();
    a.mov64_reg(R6, R1) // r6 = ctx: r1-r5 are clobbered by helper calls
        .call(HELPER_GET_CURRENT_CGROUP_ID) // r0 = the caller's cgroup id
        .stx_dw(R10, KEY_CGID, R0)
        .ld_map_fd(R1, owners)
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
    owner(&mut a, maps.owners);
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
    owner(&mut a, maps.owners);
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
    store_regs6_at(a, USER_IP6);
}

/// The 16 bytes at `off` of the context = w2..w5.
fn store_regs6_at(a: &mut Asm, off: i16) {
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.stx_w(R6, off + 4 * i as i16, reg);
    }
}

// Stack of the connect programs: a sockaddr_in / sockaddr_in6 for
// bpf_bind, below the owner preamble's slots.
const SOCKADDR: i16 = -72; // 32 bytes, -72..-40

/// Jumps to `to` unless the owner's address (in r2..r5, [`load_owner`]) is
/// IPv4, i.e. `::ffff:a.b.c.d`.
fn unless_owner_v4(a: &mut Asm, to: Label) {
    a.jne32_imm(R2, 0, to)
        .jne32_imm(R3, 0, to)
        .jne32_imm(R4, mapped_word(), to);
}

/// Jumps to `to` unless the owner's address (in r2..r5) is a native IPv6
/// one: neither v4-mapped nor the 16 zero bytes of "no owner".
fn unless_owner_v6(a: &mut Asm, to: Label) {
    let v6 = a.label();
    a.jne32_imm(R2, 0, v6).jne32_imm(R3, 0, v6);
    a.jeq32_imm(R4, mapped_word(), to) // v4-mapped
        .jne32_imm(R4, 0, v6)
        .jne32_imm(R5, 0, v6)
        .ja(to); // all zero: no owner
    a.here(v6);
}

/// Jumps to `to` if the destination (in r2..r5, from `user_ip6`) is
/// v4-mapped: an IPv4 connection over a dual-stack socket.
fn if_dest_mapped(a: &mut Asm, to: Label) {
    let no = a.label();
    a.jne32_imm(R2, 0, no)
        .jne32_imm(R3, 0, no)
        .jeq32_imm(R4, mapped_word(), to);
    a.here(no);
}

/// `bpf_bind(ctx, &sockaddr, len)` with the socket address at SOCKADDR;
/// its result is ignored: a socket the process bound itself keeps its
/// address (the helper fails), and the connect goes on.
fn call_bind(a: &mut Asm, len: i32) {
    a.mov64_reg(R1, R6)
        .mov64_reg(R2, R10)
        .add64_imm(R2, SOCKADDR.into())
        .mov64_imm(R3, len)
        .call(HELPER_BIND);
}

/// Zeroes the 32 bytes at SOCKADDR and writes the family there.
fn sockaddr(a: &mut Asm, family: i32) {
    a.mov64_imm(R1, 0);
    for i in 0..4 {
        a.stx_dw(R10, SOCKADDR + 8 * i, R1);
    }
    a.st_h(R10, SOCKADDR, family); // sin_family / sin6_family; port 0
}

/// BPF_CGROUP_INET4_CONNECT: binds the socket to the instance's IPv4
/// address (port 0: the kernel picks it at connect time,
/// BIND_FORCE_ADDRESS_NO_PORT) before the connect. Sockets of an IPv6
/// instance or of an unregistered cgroup are left alone.
pub fn connect4(owners: i32) -> Vec<Insn> {
    let mut a = Asm::new();
    let done = a.label();
    owner(&mut a, owners);
    load_owner(&mut a);
    unless_owner_v4(&mut a, done);
    sockaddr(&mut a, AF_INET);
    a.stx_w(R10, SOCKADDR + 4, R5); // sin_addr = a.b.c.d
    call_bind(&mut a, 16); // sizeof(struct sockaddr_in)
    a.here(done);
    allow(&mut a);
    a.finish()
}

/// BPF_CGROUP_INET6_CONNECT. An IPv4 destination over a dual-stack socket
/// (v4-mapped) leaves from an IPv4 instance's `::ffff:ADDR`; a native IPv6
/// one from an IPv6 instance's address. The other pairs are left alone:
/// there is no address of that family to leave from.
pub fn connect6(owners: i32) -> Vec<Insn> {
    let mut a = Asm::new();
    let (mapped, bind, done) = (a.label(), a.label(), a.label());
    owner(&mut a, owners);
    load6(&mut a, USER_IP6); // the destination
    if_dest_mapped(&mut a, mapped);
    load_owner(&mut a);
    unless_owner_v6(&mut a, done);
    a.ja(bind);
    a.here(mapped);
    load_owner(&mut a);
    unless_owner_v4(&mut a, done);
    a.here(bind);
    sockaddr(&mut a, AF_INET6);
    load_owner(&mut a); // (r1 was used to zero the stack, r2..r5 kept)
    for (i, reg) in [R2, R3, R4, R5].into_iter().enumerate() {
        a.stx_w(R10, SOCKADDR + 8 + 4 * i as i16, reg); // sin6_addr
    }
    call_bind(&mut a, 28); // sizeof(struct sockaddr_in6)
    a.here(done);
    allow(&mut a);
    a.finish()
}

/// BPF_CGROUP_UDP4_SENDMSG: an unconnected UDP send with no source address
/// (an unbound or 0.0.0.0-bound socket, no IP_PKTINFO) leaves from the
/// instance's IPv4 address.
pub fn sendmsg4(owners: i32) -> Vec<Insn> {
    let mut a = Asm::new();
    let done = a.label();
    owner(&mut a, owners);
    a.ldx_w(R2, R6, MSG_SRC_IP4) // w2 = the source the kernel would use
        .jne32_imm(R2, 0, done); // one is set: keep it
    load_owner(&mut a);
    unless_owner_v4(&mut a, done);
    a.stx_w(R6, MSG_SRC_IP4, R5); // leave from our address
    a.here(done);
    allow(&mut a);
    a.finish()
}

/// BPF_CGROUP_UDP6_SENDMSG: the same for an IPv6 instance; a send to a
/// v4-mapped destination takes the IPv4 path (and its program).
pub fn sendmsg6(owners: i32) -> Vec<Insn> {
    let mut a = Asm::new();
    let done = a.label();
    owner(&mut a, owners);
    load6(&mut a, USER_IP6); // the destination
    if_dest_mapped(&mut a, done);
    load6(&mut a, MSG_SRC_IP6);
    for reg in [R2, R3, R4, R5] {
        a.jne32_imm(reg, 0, done); // a source is set: keep it
    }
    load_owner(&mut a);
    unless_owner_v6(&mut a, done);
    store_regs6_at(&mut a, MSG_SRC_IP6);
    a.here(done);
    allow(&mut a);
    a.finish()
}

#[cfg(test)]
#[path = "progs_tests.rs"]
mod tests;
