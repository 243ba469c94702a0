//! The programs run on a small interpreter of the instructions they use,
//! so their decisions are checked without root; `tests/section_bind.rs`
//! runs them in the kernel.

use super::*;
use crate::isolation::bpf::asm::Insn;

const CTX: u64 = 0x1000;
const STACK_TOP: u64 = 0x3000;

#[derive(Debug, Default)]
struct Run {
    ret: u64,
    retval: Option<i32>,
    /// The sockaddr bytes handed to bpf_bind.
    bound: Option<Vec<u8>>,
    ctx: Vec<u8>,
}

fn run(prog: &[Insn], mut ctx: Vec<u8>) -> Run {
    let mut stack = vec![0xAAu8; 512];
    let mut r = [0u64; 11];
    r[1] = CTX;
    r[10] = STACK_TOP;
    let mut out = Run::default();
    let mut pc = 0usize;
    let mut steps = 0;
    // Resolves an address to (memory, index).
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
    loop {
        steps += 1;
        assert!(steps < 1000, "runaway program");
        let i = prog[pc];
        let (d, s) = (i.dst as usize, i.src as usize);
        let ea = |base: u64| base.wrapping_add(i.off as i64 as u64);
        pc += 1;
        match i.code {
            0xbf => r[d] = r[s],
            0xb7 => r[d] = i.imm as i64 as u64,
            0xb4 => r[d] = i.imm as u32 as u64,
            0x07 => r[d] = r[d].wrapping_add(i.imm as i64 as u64),
            0x61 => {
                let m = at(&mut ctx, &mut stack, ea(r[s]), 4);
                r[d] = u32::from_ne_bytes(m.try_into().unwrap()) as u64;
            }
            0x63 => {
                at(&mut ctx, &mut stack, ea(r[d]), 4).copy_from_slice(&(r[s] as u32).to_ne_bytes())
            }
            0x7b => at(&mut ctx, &mut stack, ea(r[d]), 8).copy_from_slice(&r[s].to_ne_bytes()),
            0x6a => {
                assert!(
                    r[d] >= STACK_TOP - 512,
                    "BPF_ST into ctx is refused by the verifier"
                );
                at(&mut ctx, &mut stack, ea(r[d]), 2).copy_from_slice(&(i.imm as u16).to_ne_bytes())
            }
            0x62 => {
                assert!(
                    r[d] >= STACK_TOP - 512,
                    "BPF_ST into ctx is refused by the verifier"
                );
                at(&mut ctx, &mut stack, ea(r[d]), 4).copy_from_slice(&i.imm.to_ne_bytes())
            }
            0x16 | 0x56 => {
                let eq = r[d] as u32 == i.imm as u32;
                if eq == (i.code == 0x16) {
                    pc = (pc as i64 + i.off as i64) as usize;
                }
            }
            0x05 => pc = (pc as i64 + i.off as i64) as usize,
            0x85 => {
                match i.imm {
                    HELPER_SET_RETVAL => out.retval = Some(r[1] as i32),
                    HELPER_BIND => {
                        assert_eq!(r[1], CTX, "bpf_bind's first argument is the ctx");
                        let len = r[3] as usize;
                        out.bound = Some(at(&mut ctx, &mut stack, r[2], len).to_vec());
                    }
                    h => panic!("unexpected helper {h}"),
                }
                r[0] = 0;
                for x in &mut r[1..6] {
                    *x = 0xdead; // clobbered by the call
                }
            }
            0x95 => {
                out.ret = r[0];
                out.ctx = ctx;
                return out;
            }
            c => panic!("opcode {c:#x} not in the interpreter"),
        }
    }
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
fn bind4_rewrites_the_wildcard_refuses_the_others_and_passes_the_rest() {
    // 10.0.0.200 has the top bit set in its network-order word: a 64-bit
    // compare would never match it.
    let own = ip("10.0.0.200");
    let refused = [
        ip("10.0.0.201"),
        ip("127.0.0.3"),
        ip("10.0.0.200"),
        ip("fd00::1"),
    ];
    let p = bind4(own, &refused, Refusal::AddrNotAvail);
    let r = run(&p, ctx4(Ipv4Addr::UNSPECIFIED));
    assert_eq!((r.ret, ip4(&r.ctx)), (1, "10.0.0.200".parse().unwrap()));
    for bad in ["10.0.0.201", "127.0.0.3"] {
        let r = run(&p, ctx4(bad.parse().unwrap()));
        assert_eq!((r.ret, r.retval), (0, Some(-libc::EADDRNOTAVAIL)), "{bad}");
    }
    for ok in ["10.0.0.200", "127.0.0.1", "10.0.0.2"] {
        let r = run(&p, ctx4(ok.parse().unwrap()));
        assert_eq!(
            (r.ret, ip4(&r.ctx)),
            (1, ok.parse().unwrap()),
            "{ok} untouched"
        );
    }
    // Without bpf_set_retval: a plain 0 (EPERM), no helper call.
    let p = bind4(own, &refused, Refusal::Eperm);
    let r = run(&p, ctx4("127.0.0.3".parse().unwrap()));
    assert_eq!((r.ret, r.retval), (0, None));
}

#[test]
fn bind4_of_a_v6_instance_refuses_the_v4_wildcard() {
    let p = bind4(ip("fd00::2"), &[], Refusal::AddrNotAvail);
    assert_eq!(run(&p, ctx4(Ipv4Addr::UNSPECIFIED)).ret, 0);
    assert_eq!(run(&p, ctx4("127.0.0.1".parse().unwrap())).ret, 1);
}

#[test]
fn bind6_of_a_v4_instance_maps_the_wildcards_to_its_address() {
    let own = ip("10.0.0.200");
    let p = bind6(
        own,
        &[ip("10.0.0.201"), ip("fd00::9")],
        Refusal::AddrNotAvail,
    );
    let mapped: Ipv6Addr = "::ffff:10.0.0.200".parse().unwrap();
    for any in ["::", "::ffff:0.0.0.0"] {
        let r = run(&p, ctx6(any.parse().unwrap()));
        assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, mapped), "{any}");
    }
    for bad in ["::ffff:10.0.0.201", "fd00::9"] {
        let r = run(&p, ctx6(bad.parse().unwrap()));
        assert_eq!((r.ret, r.retval), (0, Some(-libc::EADDRNOTAVAIL)), "{bad}");
    }
    // Near misses of a refused address (each word differing) pass.
    for ok in [
        "::1",
        "fd00::8",
        "fe00::9",
        "::ffff:10.0.0.202",
        "::fffe:10.0.0.201",
    ] {
        let a: Ipv6Addr = ok.parse().unwrap();
        let r = run(&p, ctx6(a));
        assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, a), "{ok}");
    }
}

#[test]
fn bind6_of_a_v6_instance_rewrites_colon_colon_and_refuses_the_mapped_wildcard() {
    let own: Ipv6Addr = "fd00:c0::2".parse().unwrap();
    let p = bind6(IpAddr::V6(own), &[ip("fd00:c0::3")], Refusal::AddrNotAvail);
    let r = run(&p, ctx6(Ipv6Addr::UNSPECIFIED));
    assert_eq!((r.ret, ip6(&r.ctx, 8)), (1, own));
    assert_eq!(run(&p, ctx6("::ffff:0.0.0.0".parse().unwrap())).ret, 0);
    assert_eq!(run(&p, ctx6("fd00:c0::3".parse().unwrap())).ret, 0);
    assert_eq!(run(&p, ctx6(own)).ret, 1);
}

#[test]
fn connect4_binds_a_sockaddr_in_of_the_logical_address() {
    let r = run(
        &connect4("10.0.0.200".parse().unwrap()),
        ctx4("10.9.9.9".parse().unwrap()),
    );
    assert_eq!(r.ret, 1);
    let sin = r.bound.expect("bpf_bind called");
    let mut want = vec![0u8; 16];
    want[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    want[4..8].copy_from_slice(&[10, 0, 0, 200]);
    assert_eq!(sin, want, "family, port 0, address, zero padding");
}

#[test]
fn connect6_binds_by_family_of_instance_and_destination() {
    let sin6 = |a: &str| {
        let mut w = vec![0u8; 28];
        w[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        w[8..24].copy_from_slice(&a.parse::<Ipv6Addr>().unwrap().octets());
        w
    };
    let mapped_dest = ctx6("::ffff:10.9.9.9".parse().unwrap());
    let v6_dest = ctx6("fd00:9::9".parse().unwrap());
    let p4 = connect6(ip("10.0.0.200"));
    assert_eq!(
        run(&p4, mapped_dest.clone()).bound,
        Some(sin6("::ffff:10.0.0.200"))
    );
    assert_eq!(run(&p4, v6_dest.clone()).bound, None);
    let p6 = connect6(ip("fd00:c0::2"));
    assert_eq!(run(&p6, v6_dest).bound, Some(sin6("fd00:c0::2")));
    let r = run(&p6, mapped_dest);
    assert_eq!((r.ret, r.bound), (1, None));
}

#[test]
fn sendmsg_sets_the_source_only_when_none_is_set() {
    let p = sendmsg4("10.0.0.200".parse().unwrap());
    let mut c = vec![0u8; 72];
    let r = run(&p, c.clone());
    assert_eq!((r.ret, &r.ctx[40..44]), (1, &[10, 0, 0, 200][..]));
    c[40..44].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(&run(&p, c).ctx[40..44], &[127, 0, 0, 1]);

    let own: Ipv6Addr = "fd00:c0::2".parse().unwrap();
    let p = sendmsg6(own);
    let r = run(&p, ctx6("fd00:9::9".parse().unwrap()));
    assert_eq!((r.ret, ip6(&r.ctx, 44)), (1, own));
    let r = run(&p, ctx6("::ffff:10.9.9.9".parse().unwrap()));
    assert_eq!(
        ip6(&r.ctx, 44),
        Ipv6Addr::UNSPECIFIED,
        "mapped: the v4 path"
    );
    let mut c = ctx6("fd00:9::9".parse().unwrap());
    c[44..60].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    assert_eq!(ip6(&run(&p, c).ctx, 44), Ipv6Addr::LOCALHOST);
}
