//! The programs run on a small interpreter of the instructions they use,
//! so their decisions are checked without root; `tests/section_bind.rs`
//! runs them in the kernel.

use super::*;
use crate::isolation::bpf::asm::Insn;
use std::net::IpAddr;

const CTX: u64 = 0x1000;
const STACK_TOP: u64 = 0x3000;
/// What `ld_map_fd` loads in the interpreter is MAP + fd.
const MAP: u64 = 0x5000;
const MAPS: BindMaps = BindMaps {
    addrs: 42,
    owners: 43,
};
const FOUND: u64 = 0x6000;
/// Where the owners map's value (16 bytes) lives.
const VALUE: u64 = 0x7000;
const CGID: u64 = 0x1234_5678_9abc;

/// An address as the v6 programs see it: v4 addresses v4-mapped.
fn as_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The maps' contents: the node's addresses, the calling cgroup's owner.
#[derive(Default)]
struct Env {
    set: Vec<IpAddr>,
    owner: Option<IpAddr>,
}

fn env(set: &[&str], owner: Option<&str>) -> Env {
    Env {
        set: set.iter().map(|a| ip(a)).collect(),
        owner: owner.map(ip),
    }
}

#[derive(Debug, Default)]
struct Run {
    ret: u64,
    retval: Option<i32>,
    /// The key looked up in the address set.
    looked_up: Option<Ipv6Addr>,
    /// The sockaddr bytes handed to bpf_bind.
    bound: Option<Vec<u8>>,
    ctx: Vec<u8>,
}

fn run_in(prog: &[Insn], ctx: Vec<u8>, env: &Env) -> Run {
    let mut vm = Vm::new(ctx, env);
    let mut pc = 0usize;
    for _ in 1..1000 {
        let i = prog[pc];
        pc += 1;
        if vm.exec(i, prog, &mut pc) {
            return vm.out;
        }
    }
    panic!("runaway program");
}

/// Resolves an address in the ctx or the stack to its memory.
fn at<'a>(ctx: &'a mut [u8], stack: &'a mut [u8], addr: u64, len: usize) -> &'a mut [u8] {
    if (CTX..CTX + ctx.len() as u64).contains(&addr) {
        let i = (addr - CTX) as usize;
        &mut ctx[i..i + len]
    } else {
        let base = STACK_TOP - stack.len() as u64;
        assert!(
            addr >= base && addr + len as u64 <= STACK_TOP,
            "bad address {addr:#x}"
        );
        let i = (addr - base) as usize;
        &mut stack[i..i + len]
    }
}

/// The interpreter's machine: registers, the ctx and the stack, the
/// owners map's value, and what the program did.
struct Vm<'e> {
    r: [u64; 11],
    ctx: Vec<u8>,
    stack: Vec<u8>,
    value: Vec<u8>,
    env: &'e Env,
    out: Run,
}

impl<'e> Vm<'e> {
    fn new(ctx: Vec<u8>, env: &'e Env) -> Vm<'e> {
        let mut r = [0u64; 11];
        r[1] = CTX;
        r[10] = STACK_TOP;
        Vm {
            r,
            ctx,
            stack: vec![0xAAu8; 512],
            value: env
                .owner
                .map(|o| as_v6(o).octets().to_vec())
                .unwrap_or_default(),
            env,
            out: Run::default(),
        }
    }

    fn mem(&mut self, addr: u64, len: usize) -> &mut [u8] {
        at(&mut self.ctx, &mut self.stack, addr, len)
    }

    /// Runs one instruction (`pc` already past it); true at exit.
    fn exec(&mut self, i: Insn, prog: &[Insn], pc: &mut usize) -> bool {
        let (d, s) = (i.dst as usize, i.src as usize);
        let ea = |base: u64| base.wrapping_add(i.off as i64 as u64);
        let jump = |pc: &mut usize| *pc = (*pc as i64 + i.off as i64) as usize;
        let r = &mut self.r;
        match i.code {
            0x18 => {
                assert_eq!(i.src, 1, "a map fd load");
                assert_eq!(prog[*pc].encode(), [0; 8], "second slot");
                r[d] = MAP + i.imm as u64;
                *pc += 1;
            }
            0x15 | 0x55 => {
                if (r[d] == i.imm as i64 as u64) == (i.code == 0x15) {
                    jump(pc);
                }
            }
            0x5e => {
                if r[d] as u32 != r[s] as u32 {
                    jump(pc);
                }
            }
            0xbf => r[d] = r[s],
            0xb7 => r[d] = i.imm as i64 as u64,
            0xb4 => r[d] = i.imm as u32 as u64,
            0x07 => r[d] = r[d].wrapping_add(i.imm as i64 as u64),
            0x61 => {
                let a = ea(r[s]);
                let m: &[u8] = if (VALUE..VALUE + 16).contains(&a) {
                    let i = (a - VALUE) as usize;
                    &self.value[i..i + 4]
                } else {
                    at(&mut self.ctx, &mut self.stack, a, 4)
                };
                self.r[d] = u32::from_ne_bytes(m.try_into().unwrap()) as u64;
            }
            0x63 => {
                let (a, v) = (ea(r[d]), r[s] as u32);
                self.mem(a, 4).copy_from_slice(&v.to_ne_bytes())
            }
            0x7b => {
                let (a, v) = (ea(r[d]), r[s]);
                self.mem(a, 8).copy_from_slice(&v.to_ne_bytes())
            }
            // BPF_ST, half word or word.
            0x6a | 0x62 => {
                assert!(
                    r[d] >= STACK_TOP - 512,
                    "BPF_ST into ctx is refused by the verifier"
                );
                let a = ea(r[d]);
                let v = match i.code {
                    0x6a => (i.imm as u16).to_ne_bytes().to_vec(),
                    _ => i.imm.to_ne_bytes().to_vec(),
                };
                self.mem(a, v.len()).copy_from_slice(&v)
            }
            0x16 | 0x56 => {
                let eq = r[d] as u32 == i.imm as u32;
                if eq == (i.code == 0x16) {
                    jump(pc);
                }
            }
            0x05 => jump(pc),
            0x85 => {
                self.r[0] = self.call(i.imm);
                for x in &mut self.r[1..6] {
                    *x = 0xdead; // clobbered by the call
                }
            }
            0x95 => {
                self.out.ret = r[0];
                self.out.ctx = std::mem::take(&mut self.ctx);
                return true;
            }
            c => panic!("opcode {c:#x} not in the interpreter"),
        }
        false
    }

    /// A helper call: what it returns in r0.
    fn call(&mut self, helper: i32) -> u64 {
        let r = self.r;
        match helper {
            HELPER_SET_RETVAL => {
                self.out.retval = Some(r[1] as i32);
                0
            }
            HELPER_GET_CURRENT_CGROUP_ID => CGID,
            HELPER_MAP_LOOKUP_ELEM if r[1] == MAP + MAPS.owners as u64 => {
                let key = self.mem(r[2], 8);
                assert_eq!(u64::from_ne_bytes(key.try_into().unwrap()), CGID);
                if self.env.owner.is_some() { VALUE } else { 0 }
            }
            HELPER_MAP_LOOKUP_ELEM => {
                assert_eq!(r[1], MAP + MAPS.addrs as u64);
                let key: [u8; 16] = self.mem(r[2], 16).try_into().unwrap();
                let key = Ipv6Addr::from(key);
                let hit = self.env.set.iter().any(|a| as_v6(*a) == key);
                self.out.looked_up = Some(key);
                if hit { FOUND } else { 0 }
            }
            HELPER_BIND => {
                assert_eq!(r[1], CTX, "bpf_bind's first argument is the ctx");
                let len = r[3] as usize;
                self.out.bound = Some(self.mem(r[2], len).to_vec());
                0
            }
            h => panic!("unexpected helper {h}"),
        }
    }
}

/// The verifier refuses a program with an instruction no path reaches.
fn assert_all_reachable(prog: &[Insn]) {
    let mut seen = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(pc) = todo.pop() {
        if pc >= prog.len() || seen[pc] {
            continue;
        }
        seen[pc] = true;
        let i = prog[pc];
        let target = (pc as i64 + 1 + i.off as i64) as usize;
        match i.code {
            0x95 => {}
            0x05 => todo.push(target),
            0x15 | 0x16 | 0x55 | 0x56 | 0x5e => todo.extend([pc + 1, target]),
            0x18 => {
                seen[pc + 1] = true;
                todo.push(pc + 2)
            }
            _ => todo.push(pc + 1),
        }
    }
    let dead: Vec<usize> = (0..prog.len()).filter(|i| !seen[*i]).collect();
    assert!(dead.is_empty(), "unreachable instructions {dead:?}");
}

fn ctx4(ip: Ipv4Addr) -> Vec<u8> {
    let mut c = vec![0u8; 72];
    c[4..8].copy_from_slice(&ip.octets());
    c
}

fn ctx6(ip: Ipv6Addr) -> Vec<u8> {
    let mut c = vec![0u8; 72];
    c[8..24].copy_from_slice(&ip.octets());
    c
}

fn ip4(c: &[u8]) -> Ipv4Addr {
    Ipv4Addr::from(<[u8; 4]>::try_from(&c[4..8]).unwrap())
}

fn ip6(c: &[u8], off: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&c[off..off + 16]).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_instruction_of_every_program_is_reachable() {
    for how in [Refusal::AddrNotAvail, Refusal::Eperm] {
        assert_all_reachable(&bind4(MAPS, how));
        assert_all_reachable(&bind6(MAPS, how));
    }
    for p in [connect4, connect6, sendmsg4, sendmsg6] {
        assert_all_reachable(&p(MAPS.owners));
    }
}

#[test]
fn bind4_rewrites_the_wildcard_refuses_the_others_and_passes_the_rest() {
    // 10.0.0.200 has the top bit set in its network-order word: a 64-bit
    // compare would never match it. The set holds the own address too (it
    // is the node's): that one is never refused.
    let e = env(
        &["10.0.0.201", "127.0.0.3", "10.0.0.200", "fd00::1"],
        Some("10.0.0.200"),
    );
    let p = bind4(MAPS, Refusal::AddrNotAvail);
    let r = run_in(&p, ctx4(Ipv4Addr::UNSPECIFIED), &e);
    assert_eq!((r.ret, ip4(&r.ctx)), (1, "10.0.0.200".parse().unwrap()));
    for bad in ["10.0.0.201", "127.0.0.3"] {
        let r = run_in(&p, ctx4(bad.parse().unwrap()), &e);
        assert_eq!((r.ret, r.retval), (0, Some(-libc::EADDRNOTAVAIL)), "{bad}");
        let want: Ipv4Addr = bad.parse().unwrap();
        assert_eq!(
            r.looked_up,
            Some(want.to_ipv6_mapped()),
            "the key is v4-mapped"
        );
    }
    for ok in ["10.0.0.200", "127.0.0.1", "10.0.0.2"] {
        let r = run_in(&p, ctx4(ok.parse().unwrap()), &e);
        assert_eq!(
            (r.ret, ip4(&r.ctx)),
            (1, ok.parse().unwrap()),
            "{ok} untouched"
        );
    }
    // Without bpf_set_retval: a plain 0 (EPERM), no helper call.
    let p = bind4(MAPS, Refusal::Eperm);
    let r = run_in(&p, ctx4("127.0.0.3".parse().unwrap()), &e);
    assert_eq!((r.ret, r.retval), (0, None));
}

#[test]
fn bind4_of_a_v6_instance_or_an_unregistered_cgroup_refuses_the_v4_wildcard() {
    let p = bind4(MAPS, Refusal::AddrNotAvail);
    for e in [env(&["fd00::2"], Some("fd00::2")), env(&["10.0.0.1"], None)] {
        assert_eq!(run_in(&p, ctx4(Ipv4Addr::UNSPECIFIED), &e).ret, 0);
        assert_eq!(run_in(&p, ctx4("127.0.0.1".parse().unwrap()), &e).ret, 1);
        assert_eq!(
            run_in(&p, ctx4("10.0.0.1".parse().unwrap()), &e).ret,
            e.owner.map_or(0, |_| 1)
        );
    }
}

#[test]
fn bind6_of_a_v4_instance_maps_the_wildcards_to_its_address() {
    let e = env(&["10.0.0.200", "10.0.0.201", "fd00::9"], Some("10.0.0.200"));
    let p = bind6(MAPS, Refusal::AddrNotAvail);
    let mapped: Ipv6Addr = "::ffff:10.0.0.200".parse().unwrap();
    for any in ["::", "::ffff:0.0.0.0"] {
        let r = run_in(&p, ctx6(any.parse().unwrap()), &e);
        assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, mapped), "{any}");
    }
    for bad in ["::ffff:10.0.0.201", "fd00::9"] {
        let r = run_in(&p, ctx6(bad.parse().unwrap()), &e);
        assert_eq!((r.ret, r.retval), (0, Some(-libc::EADDRNOTAVAIL)), "{bad}");
    }
    for ok in ["::ffff:10.0.0.200", "::1", "fd00::8", "::ffff:10.0.0.202"] {
        let a: Ipv6Addr = ok.parse().unwrap();
        let r = run_in(&p, ctx6(a), &e);
        assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, a), "{ok}");
    }
}

#[test]
fn bind6_of_a_v6_instance_rewrites_colon_colon_and_refuses_the_mapped_wildcard() {
    let own: Ipv6Addr = "fd00:c0::2".parse().unwrap();
    let e = env(&["fd00:c0::2", "fd00:c0::3"], Some("fd00:c0::2"));
    let p = bind6(MAPS, Refusal::AddrNotAvail);
    let r = run_in(&p, ctx6(Ipv6Addr::UNSPECIFIED), &e);
    assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, own));
    assert_eq!(r.looked_up, None, "the wildcard needs no address lookup");
    assert_eq!(
        run_in(&p, ctx6("::ffff:0.0.0.0".parse().unwrap()), &e).ret,
        0
    );
    assert_eq!(run_in(&p, ctx6("fd00:c0::3".parse().unwrap()), &e).ret, 0);
    assert_eq!(run_in(&p, ctx6(own), &e).ret, 1);
    // Each word matters: near misses of the own address are another's.
    let e = env(
        &["fd00:c0::2", "fd01:c0::2", "fd00:c1::2", "fd00:c0:0:1::2"],
        Some("fd00:c0::2"),
    );
    for other in ["fd01:c0::2", "fd00:c1::2", "fd00:c0:0:1::2"] {
        assert_eq!(
            run_in(&p, ctx6(other.parse().unwrap()), &e).ret,
            0,
            "{other}"
        );
    }
    // An unregistered cgroup: no wildcard at all.
    let e = env(&[], None);
    for any in ["::", "::ffff:0.0.0.0"] {
        assert_eq!(run_in(&p, ctx6(any.parse().unwrap()), &e).ret, 0, "{any}");
    }
}

fn sin6(a: &str) -> Vec<u8> {
    let mut w = vec![0u8; 28];
    w[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    w[8..24].copy_from_slice(&a.parse::<Ipv6Addr>().unwrap().octets());
    w
}

#[test]
fn connect4_binds_a_sockaddr_in_of_a_v4_owner_only() {
    let p = connect4(MAPS.owners);
    let dest = ctx4("10.9.9.9".parse().unwrap());
    let r = run_in(&p, dest.clone(), &env(&[], Some("10.0.0.200")));
    assert_eq!(r.ret, 1);
    let mut want = vec![0u8; 16];
    want[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    want[4..8].copy_from_slice(&[10, 0, 0, 200]);
    assert_eq!(r.bound, Some(want), "family, port 0, address, zero padding");
    for e in [env(&[], Some("fd00:c0::2")), env(&[], None)] {
        let r = run_in(&p, dest.clone(), &e);
        assert_eq!((r.ret, r.bound), (1, None), "left alone");
    }
}

#[test]
fn connect6_binds_when_owner_and_destination_families_agree() {
    let p = connect6(MAPS.owners);
    let mapped_dest = ctx6("::ffff:10.9.9.9".parse().unwrap());
    let v6_dest = ctx6("fd00:9::9".parse().unwrap());
    let (v4, v6, none) = (
        env(&[], Some("10.0.0.200")),
        env(&[], Some("fd00:c0::2")),
        env(&[], None),
    );
    let bound = |d: &Vec<u8>, e: &Env| run_in(&p, d.clone(), e).bound;
    assert_eq!(bound(&mapped_dest, &v4), Some(sin6("::ffff:10.0.0.200")));
    assert_eq!(bound(&v6_dest, &v4), None);
    assert_eq!(bound(&v6_dest, &v6), Some(sin6("fd00:c0::2")));
    assert_eq!(bound(&mapped_dest, &v6), None);
    assert_eq!(bound(&v6_dest, &none), None);
    assert_eq!(bound(&mapped_dest, &none), None);
    // An IPv6 owner whose first words are zero is still IPv6.
    let low = env(&[], Some("::2:0:0:5"));
    assert_eq!(bound(&v6_dest, &low), Some(sin6("::2:0:0:5")));
}

#[test]
fn sendmsg_sets_the_source_only_when_none_is_set() {
    let v4 = env(&[], Some("10.0.0.200"));
    let v6 = env(&[], Some("fd00:c0::2"));
    let p = sendmsg4(MAPS.owners);
    let mut c = vec![0u8; 72];
    let r = run_in(&p, c.clone(), &v4);
    assert_eq!((r.ret, &r.ctx[40..44]), (1, &[10, 0, 0, 200][..]));
    assert_eq!(
        &run_in(&p, c.clone(), &v6).ctx[40..44],
        &[0; 4],
        "no v4 address"
    );
    assert_eq!(&run_in(&p, c.clone(), &Env::default()).ctx[40..44], &[0; 4]);
    c[40..44].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(&run_in(&p, c, &v4).ctx[40..44], &[127, 0, 0, 1]);

    let own: Ipv6Addr = "fd00:c0::2".parse().unwrap();
    let p = sendmsg6(MAPS.owners);
    let r = run_in(&p, ctx6("fd00:9::9".parse().unwrap()), &v6);
    assert_eq!((r.ret, ip6(&r.ctx, 44)), (1, own));
    let r = run_in(&p, ctx6("fd00:9::9".parse().unwrap()), &v4);
    assert_eq!(ip6(&r.ctx, 44), Ipv6Addr::UNSPECIFIED, "no v6 address");
    let r = run_in(&p, ctx6("::ffff:10.9.9.9".parse().unwrap()), &v6);
    assert_eq!(
        ip6(&r.ctx, 44),
        Ipv6Addr::UNSPECIFIED,
        "mapped: the v4 path"
    );
    let mut c = ctx6("fd00:9::9".parse().unwrap());
    c[44..60].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    assert_eq!(ip6(&run_in(&p, c, &v6).ctx, 44), Ipv6Addr::LOCALHOST);
}
