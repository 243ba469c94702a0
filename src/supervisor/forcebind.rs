//! The daemon's side of `force_bind` / `force_source`: one set of shared
//! programs and one [`AddressSet`] per supervisor (isolation::bpf says why),
//! made or adopted when the first instance needs them, attached to an
//! instance's cgroup after it is made and before its first fork (children
//! are born in it with clone3, so no exec runs without the programs), and
//! detached before the cgroup is removed.
//!
//! All of it is a few bpf(2) calls on local kernel objects: it runs on the
//! loop (no storage, no name service). A node without cgroup v2 or bpf()
//! fails the start of a force_bind instance naming what is missing; the
//! others never touch any of it.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::Daemon;
use crate::isolation::bpf::{self, AddressSet, ForceBind, ForceSource};
use crate::isolation::cgroup::InstanceCgroup;

/// The programs and the set, once made (or why they cannot be).
#[derive(Debug, Default)]
pub(crate) enum Kernel {
    /// No instance asked yet.
    #[default]
    Unused,
    Ready(Box<(ForceBind, ForceSource)>),
    /// bpf() or cgroup v2 is missing: every force_bind start names it.
    Missing(Arc<bpf::BpfError>),
}

impl Kernel {
    fn ready(&self) -> Option<&(ForceBind, ForceSource)> {
        match self {
            Kernel::Ready(k) => Some(k),
            _ => None,
        }
    }
}

/// Why a start could not have its addresses kept by the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ForceBindError {
    #[error("{what} needs cgroup v2, which cannot be used here: {why}")]
    NeedsCgroupV2 { what: &'static str, why: String },
    #[error("{what} cannot be enforced here: {source}")]
    Unavailable {
        what: &'static str,
        #[source]
        source: Arc<bpf::BpfError>,
    },
    #[error("{what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: bpf::BpfError,
    },
}

impl Daemon {
    /// At daemon start (after adoption): adopt the set and programs an
    /// earlier daemon left on a running instance's cgroup, or make them if
    /// some instance wants them. Nothing when no instance does.
    pub(super) fn init_force_bind(&mut self) {
        let wanted = self
            .insts
            .iter()
            .any(|i| i.spec.force_bind || i.spec.force_source);
        let mut adopted = None;
        for inst in &self.insts {
            let Some(cg) = &inst.cgroup else { continue };
            let Ok(fd) = bpf::open_cgroup(&cg.dir()) else {
                continue;
            };
            match ForceBind::adopt(fd.as_fd()) {
                Ok(Some(fb)) => {
                    tracing::info!(instance = %inst.id(), "force_bind: adopted the programs and address set of the last daemon");
                    adopted = Some(fb);
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(instance = %inst.id(), "force_bind: adopting: {e}"),
            }
        }
        if adopted.is_some() || wanted {
            self.kernel = make(adopted);
            self.sync_addresses();
        }
    }

    /// The programs, made on first use; tried again at each start while
    /// they cannot be made (a failing bpf() call is cheap), so a start
    /// works as soon as the cause is gone, without a daemon restart.
    /// `Err`: why the programs cannot be made here.
    fn kernel(&mut self) -> Result<&(ForceBind, ForceSource), Arc<bpf::BpfError>> {
        if matches!(self.kernel, Kernel::Unused | Kernel::Missing(_)) {
            self.kernel = make(None);
            self.sync_addresses();
        }
        match &self.kernel {
            Kernel::Ready(k) => Ok(k),
            Kernel::Missing(why) => Err(why.clone()),
            Kernel::Unused => unreachable!(),
        }
    }

    /// Every logical address of the instances file is in the set (binds to
    /// it refused to all but its owner), and no other: at init and reload.
    pub(super) fn sync_addresses(&mut self) {
        let Some((fb, _)) = self.kernel.ready() else {
            return;
        };
        // A running instance's address stays until it stops, whatever the
        // reload says (its programs and spec change at its next start).
        let want: std::collections::BTreeSet<IpAddr> = self
            .insts
            .iter()
            .flat_map(|i| [i.spec.address, i.next_spec.as_ref().and_then(|s| s.address)])
            .flatten()
            .collect();
        for &a in &want {
            if let Err(e) = fb.set().insert(a) {
                tracing::warn!("force_bind: adding {a} to the address set: {e}");
            }
        }
        match fb.set().addresses() {
            Ok(have) => {
                for a in have.into_iter().filter(|a| !want.contains(a)) {
                    let _ = fb.set().remove(a);
                }
            }
            Err(e) => tracing::warn!("force_bind: listing the address set: {e}"),
        }
    }

    /// After the instance's cgroup exists, before any of its forks: attach
    /// what the spec asks for, and on a cgroup `kept` from an earlier run
    /// (maybe before a reload) detach what it no longer asks for. A new
    /// cgroup holds no program: nothing to look for (four queries less per
    /// start).
    pub(super) fn apply_force_bind(
        &mut self,
        idx: usize,
        kept: bool,
    ) -> Result<(), ForceBindError> {
        let spec = self.insts[idx].spec.clone();
        let want = spec.force_bind || spec.force_source;
        if !want && (!kept || matches!(self.kernel, Kernel::Unused | Kernel::Missing(_))) {
            return Ok(());
        }
        let what = if spec.force_bind {
            "force_bind"
        } else {
            "force_source"
        };
        let Some(cg) = self.insts[idx].cgroup.as_ref().map(|c| c.dir()) else {
            if !want {
                return Ok(());
            }
            let why = match &self.cgroot {
                Err(why) => why.to_string(),
                Ok(_) => "the instance has no cgroup".into(),
            };
            return Err(ForceBindError::NeedsCgroupV2 { what, why });
        };
        let addr = spec.address;
        let k = match self.kernel() {
            Ok(k) => k,
            Err(source) if want => return Err(ForceBindError::Unavailable { what, source }),
            Err(_) => return Ok(()),
        };
        let fd = bpf::open_cgroup(&cg).map_err(|source| ForceBindError::Kernel { what, source })?;
        let fd = fd.as_fd();
        let (fb, fs) = (&k.0, &k.1);
        let r = (|| {
            match (spec.force_bind, addr) {
                (true, Some(a)) => fb.attach(fd, a)?,
                _ if kept => {
                    bpf::detach(fd, &ForceBind::HOOKS)?;
                }
                _ => {}
            }
            match (spec.force_source, addr) {
                (true, Some(a)) => fs.attach(fd, a)?,
                _ if kept => fs.detach(fd)?,
                _ => {}
            }
            if !want {
                fb.set().unassign(bpf::cgroup_id(fd).unwrap_or(0))?;
            }
            Ok::<(), bpf::BpfError>(())
        })();
        r.map_err(|source| ForceBindError::Kernel { what, source })
    }

    /// Before an instance's cgroup is removed: our programs off it and its
    /// registration out of the set (cgroup ids are never reused, but the
    /// entry would take room).
    pub(super) fn forget_force_bind(&self, cg: &InstanceCgroup) {
        let Some((fb, fs)) = self.kernel.ready() else {
            return;
        };
        let Ok(fd) = bpf::open_cgroup(&cg.dir()) else {
            return;
        };
        let fd = fd.as_fd();
        if let Err(e) = fb.detach(fd).and_then(|()| fs.detach(fd)) {
            tracing::warn!(cgroup = %cg.dir().display(), "force_bind: detaching: {e}");
        }
    }

    /// Removes an instance's cgroup, detaching our programs first.
    pub(super) fn remove_cgroup(&mut self, cg: InstanceCgroup) {
        self.forget_force_bind(&cg);
        self.host.cgroup_remove(&cg);
    }
}

fn make(adopted: Option<ForceBind>) -> Kernel {
    let fb = match adopted {
        Some(fb) => Ok(fb),
        None => AddressSet::create(AddressSet::DEFAULT_CAPACITY).and_then(ForceBind::load),
    };
    match fb.and_then(|fb| ForceSource::load(fb.set()).map(|fs| (fb, fs))) {
        Ok(k) => {
            tracing::info!(
                refusal = ?k.0.refusal(),
                "force_bind: programs loaded"
            );
            Kernel::Ready(Box::new(k))
        }
        Err(e) => {
            tracing::warn!("force_bind and force_source are not available: {e}");
            Kernel::Missing(Arc::new(e))
        }
    }
}
