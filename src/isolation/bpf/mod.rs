//! `force_bind` and `force_source`: the kernel keeps an instance on its
//! logical address, whatever address the product asks for.
//!
//! Small `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` programs, hand-assembled
//! ([`asm`], [`progs`]) and loaded with the raw `bpf()` system call
//! ([`sys`]), are attached to the instance's cgroup v2 directory. Every
//! process of the instance, double-forked or not, runs them on bind(2),
//! connect(2) and sendmsg(2) of AF_INET/AF_INET6 sockets (TCP and UDP):
//!
//! - **force_bind** (`BPF_CGROUP_INET4_BIND`, `BPF_CGROUP_INET6_BIND`): a
//!   bind to `0.0.0.0` / `::` becomes a bind to the logical address, the
//!   port untouched, so a product that binds `0.0.0.0:94` runs twice on
//!   one node. A bind to a logical address of another instance of the
//!   node fails.
//! - **force_source** (`BPF_CGROUP_INET{4,6}_CONNECT` calling `bpf_bind`,
//!   `BPF_CGROUP_UDP{4,6}_SENDMSG` setting `msg_src_ip*`): outgoing
//!   connections and datagrams leave from the logical address, so peers and
//!   firewalls see the logical host, and a takeover needs no firewall change.
//!
//! Decisions:
//!
//! - **The error a refused bind sees is EADDRNOTAVAIL** ("Cannot assign
//!   requested address", what a bind to an address not on the host gives;
//!   products already handle it). A sock_addr program can only return 0
//!   (refuse) or 1 (go on; bind hooks also 3, skip the CAP_NET_BIND_SERVICE
//!   check, which we never use); 0 alone becomes EPERM. On Linux 5.18+
//!   the program calls `bpf_set_retval(-EADDRNOTAVAIL)` first, and the
//!   kernel keeps that error. Older kernels refuse the helper at load time;
//!   we then load the plain variant and the process sees EPERM
//!   ([`Attached::refusal`] says which).
//! - **An IPv4 instance's `::` bind becomes `::ffff:ADDR`** (v4-mapped), and
//!   so does `::ffff:0.0.0.0`. A dual-stack listener (Java's default) then
//!   serves IPv4 on the logical address only, instead of failing. A socket
//!   with IPV6_V6ONLY gets EINVAL from the kernel for that bind, as for any
//!   v4-mapped address: it asked for IPv6 only, and the instance has no
//!   IPv6 address. An IPv6 instance's `0.0.0.0` and `::ffff:0.0.0.0` binds
//!   are refused (they would serve every IPv4 address of the node).
//! - **Attached with `BPF_PROG_ATTACH` and `BPF_F_ALLOW_MULTI`, not a BPF
//!   link.** The attachment belongs to the cgroup: it stays when the
//!   program fds close (a restarted daemon adopts the instance with its
//!   programs in place) and goes when the cgroup is removed, or with
//!   [`detach`]. ALLOW_MULTI lets programs of other tools on ancestor
//!   cgroups run too (after ours). Attaching again (a changed set of other
//!   instances' addresses, an adoption) replaces ours in place with
//!   `BPF_F_REPLACE`: no moment without a program, never two of ours.
//! - Our programs are found again by name (`cohost_bind4` …) with
//!   `BPF_PROG_QUERY`, and checked against what they should be by tag (the
//!   kernel's hash of the instructions): [`ForceBind::status`] is what
//!   `cohost verify` reports.
//!
//! Only sockets of the instance's cgroup are affected; the address itself
//! must be on the node (the supervisor's address check). Explicit binds to
//! addresses outside the refused set (127.0.0.1, the node's own address)
//! are left alone: force_bind rewrites the wildcard and protects the other
//! instances, it is not a firewall.
//!
//! References: Documentation/bpf/prog_cgroup_sock_addr.rst (not in every
//! tree; the uapi comments of `struct bpf_sock_addr` in linux/bpf.h are the
//! reference), Documentation/bpf/standardization/instruction-set.rst,
//! the selftests tools/testing/selftests/bpf/test_sock_addr.c,
//! progs/bind4_prog.c, progs/connect4_prog.c, progs/sendmsg4_prog.c,
//! prog_tests/cgroup_getset_retval.c, and bpf(2).

pub mod asm;
mod attach;
pub mod progs;
mod sys;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use attach::{Attached, AttachedProgram, HookState, Program, Status, detach, query};
pub use progs::Refusal;

use attach::{install, load_all, status_of};

/// A place in the socket calls where a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Bind4,
    Bind6,
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::Bind4,
        Hook::Bind6,
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ];

    /// enum bpf_attach_type.
    pub fn attach_type(self) -> u32 {
        match self {
            Hook::Bind4 => 8,     // BPF_CGROUP_INET4_BIND
            Hook::Bind6 => 9,     // BPF_CGROUP_INET6_BIND
            Hook::Connect4 => 10, // BPF_CGROUP_INET4_CONNECT
            Hook::Connect6 => 11, // BPF_CGROUP_INET6_CONNECT
            Hook::Sendmsg4 => 14, // BPF_CGROUP_UDP4_SENDMSG
            Hook::Sendmsg6 => 15, // BPF_CGROUP_UDP6_SENDMSG
        }
    }

    /// The name our program carries in the kernel (bpftool shows it).
    pub fn prog_name(self) -> &'static str {
        match self {
            Hook::Bind4 => "cohost_bind4",
            Hook::Bind6 => "cohost_bind6",
            Hook::Connect4 => "cohost_conn4",
            Hook::Connect6 => "cohost_conn6",
            Hook::Sendmsg4 => "cohost_send4",
            Hook::Sendmsg6 => "cohost_send6",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Bind4 => "cgroup/bind4",
            Hook::Bind6 => "cgroup/bind6",
            Hook::Connect4 => "cgroup/connect4",
            Hook::Connect6 => "cgroup/connect6",
            Hook::Sendmsg4 => "cgroup/sendmsg4",
            Hook::Sendmsg6 => "cgroup/sendmsg6",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "{path} is not a cgroup v2 directory: force_bind and force_source need cgroup v2 (on a hybrid host it is mounted at /sys/fs/cgroup/unified)"
    )]
    NotCgroup2 { path: PathBuf },
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bpf() is not available: {missing}: {source}")]
    Unavailable {
        missing: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the {hook} program: {source}; verifier log:\n{log}")]
    Load {
        hook: Hook,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching the {hook} program to the cgroup{hint}: {source}")]
    Attach {
        hook: Hook,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("detaching the {hook} program {id} from the cgroup: {source}")]
    Detach {
        hook: Hook,
        id: u32,
        #[source]
        source: io::Error,
    },
    #[error("querying the {hook} programs of the cgroup: {source}")]
    Query {
        hook: Hook,
        #[source]
        source: io::Error,
    },
    #[error("reading program {id} attached to the cgroup: {source}")]
    ProgInfo {
        id: u32,
        #[source]
        source: io::Error,
    },
}

/// What is missing when bpf() fails before the verifier ran.
fn unavailable(e: io::Error) -> BpfError {
    let missing = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)",
        Some(libc::EPERM) => {
            "loading cgroup programs needs CAP_BPF and CAP_NET_ADMIN (run as root)"
        }
        _ => "the kernel does not know cgroup sock_addr programs (CONFIG_CGROUP_BPF, Linux 4.17+)",
    };
    BpfError::Unavailable { missing, source: e }
}

/// Opens a cgroup v2 directory for attaching, refusing anything else (a v1
/// hierarchy, a plain directory) with the reason.
pub fn open_cgroup(path: &Path) -> Result<OwnedFd, BpfError> {
    let dir = std::fs::File::open(path).map_err(|source| BpfError::OpenCgroup {
        path: path.to_path_buf(),
        source,
    })?;
    let fs = nix::sys::statfs::fstatfs(&dir).map_err(|e| BpfError::OpenCgroup {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(BpfError::NotCgroup2 {
            path: path.to_path_buf(),
        });
    }
    Ok(dir.into())
}

/// force_bind: the bind programs.
pub struct ForceBind;

impl ForceBind {
    /// The programs for an instance on `addr` beside instances on `refused`
    /// (pure; `refused` may contain `addr`, it is skipped).
    pub fn programs(addr: IpAddr, refused: &[IpAddr], how: Refusal) -> Vec<(Hook, Vec<asm::Insn>)> {
        vec![
            (Hook::Bind4, progs::bind4(addr, refused, how)),
            (Hook::Bind6, progs::bind6(addr, refused, how)),
        ]
    }

    fn load(addr: IpAddr, refused: &[IpAddr]) -> Result<(Vec<Program>, Refusal), BpfError> {
        match load_all(&Self::programs(addr, refused, Refusal::AddrNotAvail)) {
            Err(e) if e.lacks_set_retval() => {
                load_all(&Self::programs(addr, refused, Refusal::Eperm))
                    .map(|p| (p, Refusal::Eperm))
            }
            r => r.map(|p| (p, Refusal::AddrNotAvail)),
        }
    }

    /// Attaches (or updates in place) the bind programs on the cgroup.
    /// Call it before the instance's first exec, and again on every
    /// instance when the node's set of logical addresses changes.
    pub fn attach(
        cgroup_dir: BorrowedFd,
        addr: IpAddr,
        refused: &[IpAddr],
    ) -> Result<Attached, BpfError> {
        let (programs, refusal) = Self::load(addr, refused)?;
        install(cgroup_dir, &programs)?;
        Ok(Attached { programs, refusal })
    }

    /// Whether the cgroup has exactly the programs [`ForceBind::attach`]
    /// would attach for these addresses (loads them to learn their tags).
    pub fn status(
        cgroup_dir: BorrowedFd,
        addr: IpAddr,
        refused: &[IpAddr],
    ) -> Result<Status, BpfError> {
        status_of(cgroup_dir, &Self::load(addr, refused)?.0)
    }

    pub const HOOKS: [Hook; 2] = [Hook::Bind4, Hook::Bind6];
}

/// force_source: the connect and sendmsg programs.
pub struct ForceSource;

impl ForceSource {
    /// The programs for an instance on `addr` (pure). An IPv4 instance
    /// gets connect4, sendmsg4 and connect6 (for v4-mapped destinations of
    /// dual-stack sockets); an IPv6 instance connect6 and sendmsg6.
    pub fn programs(addr: IpAddr) -> Vec<(Hook, Vec<asm::Insn>)> {
        match addr {
            IpAddr::V4(v4) => vec![
                (Hook::Connect4, progs::connect4(v4)),
                (Hook::Connect6, progs::connect6(addr)),
                (Hook::Sendmsg4, progs::sendmsg4(v4)),
            ],
            IpAddr::V6(v6) => vec![
                (Hook::Connect6, progs::connect6(addr)),
                (Hook::Sendmsg6, progs::sendmsg6(v6)),
            ],
        }
    }

    pub fn attach(cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<Attached, BpfError> {
        let programs = load_all(&Self::programs(addr))?;
        install(cgroup_dir, &programs)?;
        Ok(Attached {
            programs,
            refusal: Refusal::AddrNotAvail,
        })
    }

    pub fn status(cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<Status, BpfError> {
        status_of(cgroup_dir, &load_all(&Self::programs(addr))?)
    }

    pub const HOOKS: [Hook; 4] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_have_distinct_kernel_names_that_fit() {
        let mut names: Vec<_> = Hook::ALL.iter().map(|h| h.prog_name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.len() < 16 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn open_cgroup_names_a_directory_that_is_not_cgroup_v2() {
        let d = tempfile::tempdir().unwrap();
        let e = open_cgroup(d.path()).unwrap_err();
        assert!(matches!(e, BpfError::NotCgroup2 { .. }), "{e}");
        assert!(e.to_string().contains("not a cgroup v2 directory"), "{e}");
    }

    #[test]
    fn the_refused_set_changes_the_program_and_the_own_address_is_skipped() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p = |r: &[IpAddr]| ForceBind::programs(a, r, Refusal::AddrNotAvail);
        assert_eq!(p(&[b]), p(&[a, b]));
        assert_ne!(p(&[]), p(&[b]));
    }

    /// Needs root (CAP_BPF): the project's tests run as root and fail
    /// with the reason otherwise.
    #[test]
    fn the_kernel_verifier_accepts_every_program() {
        let v4: IpAddr = "10.0.0.200".parse().unwrap();
        let v6: IpAddr = "fd00:c0::2".parse().unwrap();
        let refused: Vec<IpAddr> =
            vec!["10.0.0.201".parse().unwrap(), "fd00:c0::3".parse().unwrap()];
        for own in [v4, v6] {
            let (progs, how) = ForceBind::load(own, &refused).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(how, Refusal::AddrNotAvail, "Linux 5.18+ has bpf_set_retval");
            assert_eq!(progs.len(), 2);
            let progs = load_all(&ForceSource::programs(own)).unwrap_or_else(|e| panic!("{e}"));
            assert!(progs.iter().all(|p| p.id > 0));
        }
    }
}
