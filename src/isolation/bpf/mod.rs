//! `force_bind` and `force_source`: the kernel keeps an instance on its
//! logical address, whatever address the product asks for.
//!
//! Small `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` programs, hand-assembled
//! ([`asm`], [`progs`]) and loaded with the raw `bpf()` system call
//! (`sys.rs`), are attached to the instance's cgroup v2 directory. Every
//! process of the instance, double-forked or not, runs them on bind(2),
//! connect(2) and sendmsg(2) of AF_INET/AF_INET6 sockets (TCP and UDP):
//!
//! - **force_bind** (`BPF_CGROUP_INET4_BIND`, `BPF_CGROUP_INET6_BIND`): a
//!   bind to `0.0.0.0` / `::` becomes a bind to the logical address, the
//!   port untouched, so a product that binds `0.0.0.0:94` runs twice on
//!   one node. A bind to a logical address of another instance of the
//!   node fails. One pair of programs serves every instance of a
//!   supervisor: they look the caller's cgroup up in a map (cgroup id ->
//!   address) and the asked-for address in the node's address map
//!   ([`AddressSet`], which says why maps: per-instance programs cost
//!   0.4 ms each on the daemon's thread, these 8 µs per instance).
//! - **force_source** (`BPF_CGROUP_INET{4,6}_CONNECT` calling `bpf_bind`,
//!   `BPF_CGROUP_UDP{4,6}_SENDMSG` setting `msg_src_ip*`): outgoing
//!   connections and datagrams leave from the logical address, so peers and
//!   firewalls see the logical host, and a takeover needs no firewall change.
//!   Shared in the same way: they read the caller's address from the same
//!   cgroup map, so one registration serves both features.
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
//!   ([`ForceBind::refusal`] says which).
//! - **An IPv4 instance's `::` bind becomes `::ffff:ADDR`** (v4-mapped), and
//!   so does `::ffff:0.0.0.0`. A dual-stack listener (Java's default) then
//!   serves IPv4 on the logical address only, instead of failing. A socket
//!   with IPV6_V6ONLY gets EINVAL from the kernel for that bind, as for any
//!   v4-mapped address: it asked for IPv6 only, and the instance has no
//!   IPv6 address. An IPv6 instance's `0.0.0.0` and `::ffff:0.0.0.0` binds
//!   are refused (they would serve every IPv4 address of the node).
//! - **A cgroup the product makes inside the instance's** inherits the
//!   programs but is not registered (`bpf_get_current_cgroup_id` names the
//!   innermost cgroup): its wildcard binds and binds to any logical address
//!   of the node are refused. Nothing escapes; such a product needs its
//!   sub-cgroups registered too ([`AddressSet::assign`]).
//! - **Attached with `BPF_PROG_ATTACH` and `BPF_F_ALLOW_MULTI`, not a BPF
//!   link.** The attachment belongs to the cgroup: it stays when our fds
//!   close or the daemon dies (a restarted daemon adopts programs and maps,
//!   [`ForceBind::adopt`]), and goes with [`ForceBind::detach`] or when the
//!   cgroup is removed (the kernel releases a removed cgroup's programs
//!   once its last socket is closed: sockets keep their cgroup's programs
//!   effective). ALLOW_MULTI lets programs of other tools on ancestor
//!   cgroups run too (after ours). Attaching again replaces ours in place
//!   with `BPF_F_REPLACE`: no moment without a program, never two of ours.
//! - Our programs are found again by name (`cohost_bind4` …) with
//!   `BPF_PROG_QUERY`, and checked by id, or by tag (the kernel's hash of
//!   the instructions) and maps: [`ForceBind::status`] (attached, current,
//!   registered for the right address) is what `cohost verify` reports.
//! - **No aya, no libbpf.** Both expect an ELF object built by an eBPF
//!   toolchain (clang or bpf-linker) at build time; our programs are about
//!   60 instructions each, written with the helpers of [`asm`], tested by an
//!   interpreter in the unit tests and by the kernel's verifier in the
//!   integration tests. The raw calls are five commands of bpf(2).
//!
//! Only sockets of the instance's cgroup are affected; the address itself
//! must be on the node (the supervisor's address check). Explicit binds to
//! addresses outside the node's set (127.0.0.1, the node's own address)
//! are left alone: force_bind rewrites the wildcard and protects the other
//! instances, it is not a firewall.
//!
//! References: the uapi comments of `struct bpf_sock_addr` and of the
//! helpers in include/uapi/linux/bpf.h, Documentation/bpf/
//! (standardization/instruction-set.rst, verifier.rst, map_hash.rst), the
//! selftests tools/testing/selftests/bpf/test_sock_addr.c (now
//! prog_tests/sock_addr.c), progs/bind4_prog.c, progs/connect4_prog.c,
//! progs/sendmsg4_prog.c, prog_tests/cgroup_getset_retval.c, and bpf(2).

pub mod asm;
mod attach;
pub mod progs;
mod set;
mod sys;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use attach::{AttachedProgram, HookState, Program, Status, detach, query};
pub use progs::Refusal;
pub use set::{AddressSet, cgroup_id};

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
    #[error("{what}: {source}")]
    Set {
        what: String,
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
        Some(libc::EAGAIN) => {
            "the kernel's verifier was interrupted by a signal at every try (bpf(2) EAGAIN): run the command again"
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

fn id_of(cgroup_dir: BorrowedFd) -> Result<u64, BpfError> {
    set::cgroup_id(cgroup_dir).map_err(|source| BpfError::Set {
        what: "reading the cgroup's id".into(),
        source,
    })
}

/// force_bind for the instances of one supervisor: the two bind programs,
/// loaded once, and the [`AddressSet`] they look addresses up in.
#[derive(Debug)]
pub struct ForceBind {
    set: AddressSet,
    programs: Vec<Program>,
    refusal: Refusal,
}

impl ForceBind {
    pub const HOOKS: [Hook; 2] = [Hook::Bind4, Hook::Bind6];

    /// The programs (pure).
    pub fn programs(maps: progs::BindMaps, how: Refusal) -> Vec<(Hook, Vec<asm::Insn>)> {
        vec![
            (Hook::Bind4, progs::bind4(maps, how)),
            (Hook::Bind6, progs::bind6(maps, how)),
        ]
    }

    /// Loads the programs for `set` (once per supervisor): with
    /// `bpf_set_retval` first, without it on kernels that lack the helper.
    pub fn load(set: AddressSet) -> Result<ForceBind, BpfError> {
        let maps = set.maps();
        let (programs, refusal) = match load_all(&Self::programs(maps, Refusal::AddrNotAvail)) {
            Err(e) if e.lacks_set_retval() => (
                load_all(&Self::programs(maps, Refusal::Eperm))?,
                Refusal::Eperm,
            ),
            r => (r?, Refusal::AddrNotAvail),
        };
        Ok(ForceBind {
            set,
            programs,
            refusal,
        })
    }

    /// A restarted daemon: the set and programs attached to `cgroup_dir`
    /// (any instance's), so that new instances share them. None when none
    /// of ours is attached there. (force_source needs no adoption of its
    /// programs: [`ForceSource::load`] on the adopted set, and attaching
    /// again replaces them in place.) Programs of an older cohost (another
    /// tag) are not taken: fresh ones are loaded, and each [`attach`]
    /// replaces the old ones in place.
    ///
    /// [`attach`]: ForceBind::attach
    pub fn adopt(cgroup_dir: BorrowedFd) -> Result<Option<ForceBind>, BpfError> {
        let Some(set) = AddressSet::adopt(cgroup_dir)? else {
            return Ok(None);
        };
        let mut fb = ForceBind::load(set)?;
        for hook in Self::HOOKS {
            let attached = attach::ours(cgroup_dir, hook)?;
            let i = fb.programs.iter().position(|p| p.hook == hook).unwrap();
            if let Some(f) = attached
                .into_iter()
                .find(|f| f.info.tag == fb.programs[i].tag)
            {
                fb.programs[i] = f.into_program(hook);
            }
        }
        Ok(Some(fb))
    }

    pub fn set(&self) -> &AddressSet {
        &self.set
    }

    /// What a refused bind fails with on this kernel.
    pub fn refusal(&self) -> Refusal {
        self.refusal
    }

    pub fn program_ids(&self) -> Vec<u32> {
        self.programs.iter().map(|p| p.id).collect()
    }

    /// Makes `cgroup_dir` the instance on `addr`: registers the cgroup and
    /// the address in the set and attaches the programs (replacing ours
    /// in place if some are there). Call it before the instance's first
    /// exec. Idempotent.
    pub fn attach(&self, cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<(), BpfError> {
        let id = id_of(cgroup_dir)?;
        self.set.insert(addr)?;
        self.set.assign(id, addr)?;
        install(cgroup_dir, &self.programs)
    }

    /// Detaches the programs from the cgroup and unregisters it (the
    /// address stays in the set: it is still a logical address of the
    /// node until [`AddressSet::remove`]). Call it before removing an
    /// instance's cgroup, or [`AddressSet::unassign`] with the id
    /// ([`cgroup_id`]) after: cgroup ids are never reused, so a forgotten
    /// entry misleads nobody, but it takes room in the map.
    pub fn detach(&self, cgroup_dir: BorrowedFd) -> Result<(), BpfError> {
        detach(cgroup_dir, &Self::HOOKS)?;
        self.set.unassign(id_of(cgroup_dir)?)?;
        Ok(())
    }

    /// Whether the cgroup has these programs attached and is registered
    /// for `addr`: what `cohost verify` reports.
    pub fn status(&self, cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<Status, BpfError> {
        let mut st = status_of(cgroup_dir, &self.programs)?;
        let id = id_of(cgroup_dir)?;
        st.address = Some((addr, self.set.owner(id)?));
        Ok(st)
    }
}

/// force_source for the instances of one supervisor: four programs,
/// loaded once, that make connections and datagrams leave from the
/// address the calling cgroup is registered for in the [`AddressSet`].
#[derive(Debug)]
pub struct ForceSource {
    set: AddressSet,
    programs: Vec<Program>,
}

impl ForceSource {
    pub const HOOKS: [Hook; 4] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ];

    /// The programs (pure). Each decides by the families of the owner's
    /// address and of the destination, so an instance of either family
    /// gets all four.
    pub fn programs(owners_fd: i32) -> Vec<(Hook, Vec<asm::Insn>)> {
        vec![
            (Hook::Connect4, progs::connect4(owners_fd)),
            (Hook::Connect6, progs::connect6(owners_fd)),
            (Hook::Sendmsg4, progs::sendmsg4(owners_fd)),
            (Hook::Sendmsg6, progs::sendmsg6(owners_fd)),
        ]
    }

    /// Loads the programs for `set` (once per supervisor; share the set
    /// with [`ForceBind`]: one registration per instance serves both).
    pub fn load(set: &AddressSet) -> Result<ForceSource, BpfError> {
        let set = set.try_clone()?;
        let programs = load_all(&Self::programs(set.maps().owners))?;
        Ok(ForceSource { set, programs })
    }

    /// Registers `cgroup_dir` for `addr` and attaches the programs
    /// (replacing ours in place). Before the first exec; idempotent.
    pub fn attach(&self, cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<(), BpfError> {
        self.set.assign(id_of(cgroup_dir)?, addr)?;
        install(cgroup_dir, &self.programs)
    }

    /// Detaches the programs (the registration stays for force_bind;
    /// [`ForceBind::detach`] or [`AddressSet::unassign`] removes it).
    pub fn detach(&self, cgroup_dir: BorrowedFd) -> Result<(), BpfError> {
        detach(cgroup_dir, &Self::HOOKS).map(drop)
    }

    /// Whether the cgroup has these programs attached and is registered
    /// for `addr`.
    pub fn status(&self, cgroup_dir: BorrowedFd, addr: IpAddr) -> Result<Status, BpfError> {
        let mut st = status_of(cgroup_dir, &self.programs)?;
        st.address = Some((addr, self.set.owner(id_of(cgroup_dir)?)?));
        Ok(st)
    }
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

    /// Needs root (CAP_BPF), as below.
    #[test]
    fn the_address_set_lists_what_was_inserted_and_not_what_was_removed() {
        let set = AddressSet::create(16).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.addresses().unwrap().is_empty());
        let (a, b): (IpAddr, IpAddr) = ("10.1.2.3".parse().unwrap(), "fd00::7".parse().unwrap());
        set.insert(a).unwrap();
        set.insert(b).unwrap();
        let mut got = set.addresses().unwrap();
        got.sort();
        assert_eq!(got, vec![a, b]);
        assert!(set.remove(a).unwrap());
        assert_eq!(set.addresses().unwrap(), vec![b]);
    }

    /// Needs root (CAP_BPF): the project's tests run as root and fail
    /// with the reason otherwise.
    #[test]
    fn the_kernel_verifier_accepts_every_program() {
        let set = AddressSet::create(16).unwrap_or_else(|e| panic!("{e}"));
        let fs = ForceSource::load(&set).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs.programs.len(), 4);
        let fb = ForceBind::load(set).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fb.refusal(),
            Refusal::AddrNotAvail,
            "Linux 5.18+ has bpf_set_retval"
        );
        assert_eq!(fb.program_ids().len(), 2);
    }
}
