//! The node's logical addresses and which cgroup owns which, as two BPF
//! hash maps that the (shared) bind programs look up at each bind.
//!
//! Why maps and not the addresses compiled into a program per instance:
//! a program per instance costs a load, a verification and a JIT each
//! (measured here: 0.4 ms per instance, 200 ms on the daemon's one thread
//! for 500 instances, against a start-all of 280 ms), and one that
//! compares with every other instance's address grows with the node (20 ms
//! per instance at 500). With maps there is one set of programs per
//! supervisor (two for force_bind, four for force_source), loaded once;
//! starting an instance is two map updates and an attach call per hook
//! (8 µs for force_bind), and a takeover that brings new addresses is one
//! map update, seen by every instance at its next bind.
//!
//! Keys and values hold 16-byte addresses: IPv6, or IPv4 v4-mapped
//! (`::ffff:a.b.c.d`), the form the v6 bind program sees anyway. The maps
//! live as long as a program uses them: a restarted daemon finds them
//! again through the programs attached to any instance's cgroup
//! ([`AddressSet::adopt`], [`crate::isolation::bpf::ForceBind::adopt`]).

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::progs::BindMaps;
use super::{BpfError, Hook, attach, sys, unavailable};

/// The names the maps carry in the kernel (bpftool map show).
pub const ADDRS_NAME: &str = "cohost_addrs";
pub const OWNERS_NAME: &str = "cohost_owners";

/// The node's logical addresses (binds to them are refused to every
/// instance but their owner) and the owner of each instance cgroup.
#[derive(Debug)]
pub struct AddressSet {
    addrs: OwnedFd,
    owners: OwnedFd,
    ids: (u32, u32),
}

fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn from_key(k: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(k);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The id of a cgroup v2 directory, as `bpf_get_current_cgroup_id()`
/// returns it: the inode number of the directory (kernfs node id).
pub fn cgroup_id(cgroup: BorrowedFd) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(cgroup)?.st_ino)
}

fn set_err(what: String) -> impl FnOnce(io::Error) -> BpfError {
    move |source| BpfError::Set { what, source }
}

impl AddressSet {
    /// Room for this many addresses and instances unless told otherwise
    /// (memory is allocated per entry present, not up front).
    pub const DEFAULT_CAPACITY: u32 = 4096;

    pub fn create(capacity: u32) -> Result<AddressSet, BpfError> {
        let addrs = sys::map_create_hash(16, 1, capacity, ADDRS_NAME).map_err(unavailable)?;
        let owners = sys::map_create_hash(8, 16, capacity, OWNERS_NAME).map_err(unavailable)?;
        AddressSet::from_fds(addrs, owners)
    }

    fn from_fds(addrs: OwnedFd, owners: OwnedFd) -> Result<AddressSet, BpfError> {
        let id = |fd: &OwnedFd| {
            sys::map_info(fd.as_fd())
                .map(|(id, _)| id)
                .map_err(set_err("reading a map's id".into()))
        };
        let ids = (id(&addrs)?, id(&owners)?);
        Ok(AddressSet { addrs, owners, ids })
    }

    /// Another handle on the same maps.
    pub fn try_clone(&self) -> Result<AddressSet, BpfError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(set_err("duplicating a map fd".into()))
        };
        Ok(AddressSet {
            addrs: dup(&self.addrs)?,
            owners: dup(&self.owners)?,
            ids: self.ids,
        })
    }

    /// The set among the maps with these ids (those of an attached bind
    /// program), found by name.
    pub(super) fn from_map_ids(ids: &[u32]) -> Result<Option<AddressSet>, BpfError> {
        let (mut addrs, mut owners) = (None, None);
        for &id in ids {
            let fd = match sys::map_fd_by_id(id) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(set_err(format!("opening map {id}"))(e)),
            };
            let (_, name) =
                sys::map_info(fd.as_fd()).map_err(set_err(format!("reading map {id}")))?;
            match name.as_str() {
                ADDRS_NAME => addrs = Some(fd),
                OWNERS_NAME => owners = Some(fd),
                _ => {}
            }
        }
        match (addrs, owners) {
            (Some(a), Some(o)) => AddressSet::from_fds(a, o).map(Some),
            // Only force_source programs use the owners map alone: the
            // node's addresses went with the last bind program; the
            // supervisor fills a new map from its configuration.
            (None, Some(o)) => {
                let a = sys::map_create_hash(16, 1, Self::DEFAULT_CAPACITY, ADDRS_NAME)
                    .map_err(unavailable)?;
                AddressSet::from_fds(a, o).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A restarted daemon: the maps our programs on `cgroup_dir` (any
    /// instance's) use. None when none of ours is attached there. Adopt
    /// from an instance with force_bind when there is one: a cgroup with
    /// force_source only leads to the owners map alone, and a new map of
    /// addresses (the bind programs elsewhere then show as stale until
    /// attached again).
    pub fn adopt(cgroup_dir: BorrowedFd) -> Result<Option<AddressSet>, BpfError> {
        let mut ids = Vec::new();
        for hook in Hook::ALL {
            for f in attach::ours(cgroup_dir, hook)? {
                ids.extend(f.info.map_ids);
            }
        }
        ids.sort();
        ids.dedup();
        AddressSet::from_map_ids(&ids)
    }

    /// The kernel's ids of the two maps (addresses, owners).
    pub fn ids(&self) -> (u32, u32) {
        self.ids
    }

    pub(super) fn maps(&self) -> BindMaps {
        BindMaps {
            addrs: self.addrs.as_raw_fd(),
            owners: self.owners.as_raw_fd(),
        }
    }

    /// Adds a logical address of the node (idempotent).
    pub fn insert(&self, ip: IpAddr) -> Result<(), BpfError> {
        sys::map_update(self.addrs.as_fd(), &key(ip), &[1])
            .map_err(set_err(format!("adding {ip} to the node's addresses")))
    }

    /// Removes `ip`; false when it was not there.
    pub fn remove(&self, ip: IpAddr) -> Result<bool, BpfError> {
        sys::map_delete(self.addrs.as_fd(), &key(ip))
            .map_err(set_err(format!("removing {ip} from the node's addresses")))
    }

    /// Every address in the set (a reload removes the ones no longer
    /// configured, also those an earlier daemon added).
    pub fn addresses(&self) -> Result<Vec<IpAddr>, BpfError> {
        let mut out = Vec::new();
        let mut k = [0u8; 16];
        let mut prev: Option<[u8; 16]> = None;
        while sys::map_next_key(self.addrs.as_fd(), prev.as_ref().map(|p| &p[..]), &mut k)
            .map_err(set_err("listing the node's addresses".into()))?
        {
            out.push(from_key(k));
            prev = Some(k);
        }
        Ok(out)
    }

    pub fn contains(&self, ip: IpAddr) -> Result<bool, BpfError> {
        let mut v = [0u8; 1];
        sys::map_lookup(self.addrs.as_fd(), &key(ip), &mut v)
            .map_err(set_err(format!("looking {ip} up in the node's addresses")))
    }

    /// Records that the processes of cgroup `id` are the instance on `ip`.
    pub fn assign(&self, cgroup: u64, ip: IpAddr) -> Result<(), BpfError> {
        sys::map_update(self.owners.as_fd(), &cgroup.to_ne_bytes(), &key(ip))
            .map_err(set_err(format!("registering cgroup {cgroup} for {ip}")))
    }

    pub fn unassign(&self, cgroup: u64) -> Result<bool, BpfError> {
        sys::map_delete(self.owners.as_fd(), &cgroup.to_ne_bytes())
            .map_err(set_err(format!("unregistering cgroup {cgroup}")))
    }

    /// The address cgroup `id` is registered for.
    pub fn owner(&self, cgroup: u64) -> Result<Option<IpAddr>, BpfError> {
        let mut v = [0u8; 16];
        let found = sys::map_lookup(self.owners.as_fd(), &cgroup.to_ne_bytes(), &mut v)
            .map_err(set_err(format!("looking cgroup {cgroup} up")))?;
        Ok(found.then(|| from_key(v)))
    }
}
