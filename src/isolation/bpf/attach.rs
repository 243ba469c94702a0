//! Loading our programs, attaching them to a cgroup (replacing ours in
//! place), finding them again by name and tag, detaching them.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{BpfError, Hook, asm, progs, sys, unavailable};

impl BpfError {
    /// The verifier does not know `bpf_set_retval` (kernels before 5.18).
    pub(super) fn lacks_set_retval(&self) -> bool {
        matches!(self, BpfError::Load { log, .. }
            if log.contains(&format!("#{}", progs::HELPER_SET_RETVAL)))
    }
}

/// One of our programs, loaded (the fd keeps it alive while it is not
/// attached anywhere).
#[derive(Debug)]
pub struct Program {
    pub hook: Hook,
    /// The kernel's id (bpftool prog show id N).
    pub id: u32,
    /// The kernel's hash of the instructions: the same for the same program.
    pub tag: [u8; 8],
    fd: OwnedFd,
}

pub(super) fn load_one(hook: Hook, insns: &[asm::Insn]) -> Result<Program, BpfError> {
    let fd = match sys::prog_load(insns, hook.attach_type(), hook.prog_name()) {
        Ok(fd) => fd,
        // No verifier log: the kernel refused before looking at the code.
        Err((e, log)) if log.is_empty() => return Err(unavailable(e)),
        Err((source, log)) => return Err(BpfError::Load { hook, log, source }),
    };
    let info = sys::prog_info(fd.as_fd()).map_err(|source| BpfError::ProgInfo { id: 0, source })?;
    Ok(Program {
        hook,
        id: info.id,
        tag: info.tag,
        fd,
    })
}

pub(super) fn load_all(plan: &[(Hook, Vec<asm::Insn>)]) -> Result<Vec<Program>, BpfError> {
    plan.iter().map(|(h, insns)| load_one(*h, insns)).collect()
}

/// One of our programs found attached to a cgroup.
pub(super) struct Found {
    pub(super) info: sys::ProgInfo,
    fd: OwnedFd,
}

impl Found {
    pub(super) fn into_program(self, hook: Hook) -> Program {
        Program {
            hook,
            id: self.info.id,
            tag: self.info.tag,
            fd: self.fd,
        }
    }
}

/// Our programs attached to the cgroup itself at `hook`, found by name.
pub(super) fn ours(cgroup: BorrowedFd, hook: Hook) -> Result<Vec<Found>, BpfError> {
    Ok(attached_at(cgroup, hook)?
        .into_iter()
        .filter(|f| f.info.name == hook.prog_name())
        .collect())
}

fn attached_at(cgroup: BorrowedFd, hook: Hook) -> Result<Vec<Found>, BpfError> {
    let ids = sys::prog_query(cgroup, hook.attach_type())
        .map_err(|source| BpfError::Query { hook, source })?;
    let mut out = Vec::new();
    for id in ids {
        let fd = match sys::prog_fd_by_id(id) {
            Ok(fd) => fd,
            // Detached and freed since the query.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => return Err(BpfError::ProgInfo { id, source }),
        };
        let info =
            sys::prog_info(fd.as_fd()).map_err(|source| BpfError::ProgInfo { id, source })?;
        out.push(Found { info, fd });
    }
    Ok(out)
}

fn attach_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBADF) => " (not a cgroup v2 directory)",
        Some(libc::EPERM) => {
            " (an ancestor cgroup holds a program attached without BPF_F_ALLOW_MULTI, or CAP_NET_ADMIN is missing)"
        }
        Some(libc::EINVAL) => " (this kernel lacks BPF_F_ALLOW_MULTI or BPF_F_REPLACE, Linux 5.6+)",
        _ => "",
    }
}

/// Attaches `programs`, each replacing ours already at its hook. If one
/// fails, the ones this call added are detached again.
pub(super) fn install(cgroup: BorrowedFd, programs: &[Program]) -> Result<(), BpfError> {
    let mut added: Vec<&Program> = Vec::new();
    let result = (|| {
        for p in programs {
            let old = ours(cgroup, p.hook)?;
            if let Some(i) = old.iter().position(|f| f.info.id == p.id) {
                // Already there; never two of ours at one hook.
                for f in old.iter().enumerate().filter(|(j, _)| *j != i) {
                    detach_one(cgroup, p.hook, f.1)?;
                }
                continue;
            }
            let at = p.hook.attach_type();
            let replace = old.first().map(|f| f.fd.as_fd());
            sys::prog_attach(cgroup, p.fd.as_fd(), at, replace).map_err(|source| {
                BpfError::Attach {
                    hook: p.hook,
                    hint: attach_hint(&source),
                    source,
                }
            })?;
            if replace.is_none() {
                added.push(p);
            }
            // Never two of ours at one hook (two supervisors' programs on
            // one cgroup, a crash of an older cohost between two steps).
            for f in old.iter().skip(1) {
                detach_one(cgroup, p.hook, f)?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for p in added {
            let _ = sys::prog_detach(cgroup, p.fd.as_fd(), p.hook.attach_type());
        }
    }
    result
}

fn detach_one(cgroup: BorrowedFd, hook: Hook, f: &Found) -> Result<(), BpfError> {
    match sys::prog_detach(cgroup, f.fd.as_fd(), hook.attach_type()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(BpfError::Detach {
            hook,
            id: f.info.id,
            source,
        }),
    }
}

/// Detaches our programs at `hooks` from the cgroup (whoever attached
/// them, this process or an earlier daemon); returns how many. Removing
/// the cgroup detaches them too.
pub fn detach(cgroup: BorrowedFd, hooks: &[Hook]) -> Result<usize, BpfError> {
    let mut n = 0;
    for &hook in hooks {
        for f in ours(cgroup, hook)? {
            detach_one(cgroup, hook, &f)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Programs attached to the cgroup itself (ours and others').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub hook: Hook,
    pub id: u32,
    pub name: String,
    pub tag: [u8; 8],
}

impl AttachedProgram {
    pub fn is_ours(&self) -> bool {
        self.name == self.hook.prog_name()
    }
}

/// Every sock_addr program attached to the cgroup itself, at every hook we
/// use (BPF_PROG_QUERY; inherited programs of ancestors are not listed).
pub fn query(cgroup: BorrowedFd) -> Result<Vec<AttachedProgram>, BpfError> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        for f in attached_at(cgroup, hook)? {
            out.push(AttachedProgram {
                hook,
                id: f.info.id,
                name: f.info.name,
                tag: f.info.tag,
            });
        }
    }
    Ok(out)
}

/// How one hook of a cgroup compares with what should be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookState {
    /// Our program, exactly the expected one.
    Current,
    /// One of ours, but not the expected one: built for another address
    /// (force_source), using another address set (another supervisor, a
    /// daemon that lost its maps), or by another cohost version. Attaching
    /// again replaces it.
    Stale,
    Missing,
}

/// The answer of [`super::ForceBind::status`] / [`super::ForceSource::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub hooks: Vec<(Hook, HookState)>,
    /// force_bind: (the instance's address, the one its cgroup is
    /// registered for in the set).
    pub address: Option<(IpAddr, Option<IpAddr>)>,
}

impl Status {
    pub fn ok(&self) -> bool {
        self.hooks.iter().all(|(_, s)| *s == HookState::Current)
            && self.address.is_none_or(|(want, got)| got == Some(want))
    }

    /// One line per hook that is not as it should be.
    pub fn problems(&self) -> Vec<String> {
        self.hooks
            .iter()
            .filter_map(|(h, s)| match s {
                HookState::Current => None,
                HookState::Stale => Some(format!(
                    "{h}: another {} is attached (for another address, address set or cohost version)",
                    h.prog_name()
                )),
                HookState::Missing => Some(format!("{h}: {} is not attached", h.prog_name())),
            })
            .chain(self.address.and_then(|(want, got)| match got {
                Some(g) if g == want => None,
                Some(g) => Some(format!("the cgroup is registered for {g}, not {want}")),
                None => Some(format!("the cgroup is not registered for {want}")),
            }))
            .collect()
    }
}

/// Compares what is attached with `expected`: the same program (id), or
/// the same code (tag) with the same maps, is current.
pub(super) fn status_of(cgroup: BorrowedFd, expected: &[Program]) -> Result<Status, BpfError> {
    let mut hooks = Vec::new();
    for p in expected {
        let found = ours(cgroup, p.hook)?;
        let state = if found
            .iter()
            .any(|f| f.info.id == p.id || f.info.tag == p.tag && same_maps(f, p))
        {
            HookState::Current
        } else if found.is_empty() {
            HookState::Missing
        } else {
            HookState::Stale
        };
        hooks.push((p.hook, state));
    }
    Ok(Status {
        hooks,
        address: None,
    })
}

fn same_maps(f: &Found, p: &Program) -> bool {
    sys::prog_info(p.fd.as_fd()).is_ok_and(|i| i.map_ids == f.info.map_ids)
}
