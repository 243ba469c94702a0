//! The `bpf()` commands we use, on `#[repr(C)]` prefixes of `union
//! bpf_attr` (bpf(2); the kernel zero-fills what a shorter attr leaves out,
//! so each command passes only its own fields).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::asm::{Insn, encode_all};

// enum bpf_cmd.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
// enum bpf_prog_type.
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
// Attach flags (linux/bpf.h): several programs per hook and cgroup, run in
// order, the descendants' before the ancestors'; REPLACE swaps one in place.
pub const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
pub const BPF_F_REPLACE: u32 = 1 << 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: attr is a live, initialised #[repr(C)] prefix of union
    // bpf_attr of the given size; the kernel reads (and for queries
    // writes) at most that many bytes, and the pointers inside it point
    // to buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// How often a load the verifier gave up on for a pending signal is tried.
const LOAD_ATTEMPTS: u32 = 5;

/// BPF_PROG_LOAD with this thread's signals blocked: the verifier returns
/// EAGAIN when a signal is pending (bpf(2), kernel commit c3494801cd17),
/// and a blocked one is not pending to it. What still gets through (a
/// signal the kernel itself raises) is retried, as libbpf does.
fn load_blocking_signals(attr: &mut ProgLoad) -> io::Result<i32> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))?;
    let mut r = bpf(BPF_PROG_LOAD, attr);
    for _ in 1..LOAD_ATTEMPTS {
        if !matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EAGAIN)) {
            break;
        }
        r = bpf(BPF_PROG_LOAD, attr);
    }
    // What was sent meanwhile is delivered here, after the load.
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    r
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd (O_CLOEXEC by bpf(2)'s
    // default for program fds) and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a sock_addr program. On failure the second element is the
/// verifier's log (a second load with logging on, as libbpf does: logging
/// costs time and the first try usually succeeds).
pub fn prog_load(
    insns: &[Insn],
    attach_type: u32,
    name: &str,
) -> Result<OwnedFd, (io::Error, String)> {
    let code = encode_all(insns);
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    match load_blocking_signals(&mut attr) {
        Ok(fd) => return Ok(owned(fd)),
        Err(e)
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::EACCES) =>
        {
            return Err((e, String::new()));
        }
        Err(_) => {}
    }
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match load_blocking_signals(&mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).trim().to_string()))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI (and BPF_F_REPLACE of `replace`).
pub fn prog_attach(
    cgroup: BorrowedFd,
    prog: BorrowedFd,
    attach_type: u32,
    replace: Option<BorrowedFd>,
) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: BPF_F_ALLOW_MULTI | replace.map_or(0, |_| BPF_F_REPLACE),
        replace_bpf_fd: replace.map_or(0, |f| f.as_raw_fd() as u32),
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// BPF_PROG_DETACH of one program (ALLOW_MULTI needs the program named).
pub fn prog_detach(cgroup: BorrowedFd, prog: BorrowedFd, attach_type: u32) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf(BPF_PROG_DETACH, &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The ids of the programs attached to this cgroup itself at
/// `attach_type` (not the inherited ones: no BPF_F_QUERY_EFFECTIVE).
pub fn prog_query(cgroup: BorrowedFd, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = ProgQuery {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // More than fit: prog_cnt says how many there are.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0u32; attr.prog_cnt as usize + 16];
            }
            Err(e) => return Err(e),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById {
        prog_id: id,
        ..Default::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

pub fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // The same attr: map_id shares its place with prog_id.
    let mut attr = GetFdById {
        prog_id: id,
        ..Default::default()
    };
    bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// A BPF_MAP_TYPE_HASH map, not preallocated (BPF_F_NO_PREALLOC: memory
/// only for the entries there are).
pub fn map_create_hash(
    key_size: u32,
    value_size: u32,
    max: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let mut map_name = [0u8; 16];
    let n = name.len().min(15);
    map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries: max,
        map_flags: BPF_F_NO_PREALLOC,
        map_name,
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(map: BorrowedFd, key: &[u8], value: *const u8) -> MapElem {
    MapElem {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value as u64,
        ..Default::default()
    }
}

/// Inserts or overwrites (BPF_ANY). `key` and `value` must have the map's sizes.
pub fn map_update(map: BorrowedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    bpf(BPF_MAP_UPDATE_ELEM, &mut elem(map, key, value.as_ptr())).map(drop)
}

/// Removes; false when the key was not there.
pub fn map_delete(map: BorrowedFd, key: &[u8]) -> io::Result<bool> {
    match bpf(BPF_MAP_DELETE_ELEM, &mut elem(map, key, std::ptr::null())) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first with None) into `next`; false at the end.
/// (`next_key` shares the place of `value` in the attr.)
pub fn map_next_key(map: BorrowedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(map, key.unwrap_or(&[]), next.as_mut_ptr());
    if key.is_none() {
        attr.key = 0;
    }
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Looks up into `value`; false when the key is not there.
pub fn map_lookup(map: BorrowedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut elem(map, key, value.as_mut_ptr())) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The id and name of a map (struct bpf_map_info: type @0, id @4,
/// name[16] @24).
pub fn map_info(map: BorrowedFd) -> io::Result<(u32, String)> {
    let mut buf = [0u8; 88];
    let mut attr = GetInfo {
        bpf_fd: map.as_raw_fd() as u32,
        info_len: buf.len() as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &buf[24..40];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok((
        u32::from_ne_bytes(buf[4..8].try_into().unwrap()),
        String::from_utf8_lossy(&name[..end]).into_owned(),
    ))
}

#[repr(C)]
#[derive(Default)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What `struct bpf_prog_info` tells about a program: id, tag (the hash of
/// its instructions with map fds zeroed, the same for the same program),
/// name, the maps it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub tag: [u8; 8],
    pub name: String,
    pub map_ids: Vec<u32>,
}

pub fn prog_info(prog: BorrowedFd) -> io::Result<ProgInfo> {
    // struct bpf_prog_info: type @0, id @4, tag[8] @8, nr_map_ids @52,
    // map_ids (a user pointer the kernel fills) @56, name[16] @64.
    let mut maps = [0u32; 8];
    let mut buf = [0u8; 80];
    buf[52..56].copy_from_slice(&(maps.len() as u32).to_ne_bytes());
    buf[56..64].copy_from_slice(&(maps.as_mut_ptr() as u64).to_ne_bytes());
    let mut attr = GetInfo {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: buf.len() as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &buf[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    let nr = u32::from_ne_bytes(buf[52..56].try_into().unwrap()) as usize;
    Ok(ProgInfo {
        id: u32::from_ne_bytes(buf[4..8].try_into().unwrap()),
        tag: buf[8..16].try_into().unwrap(),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        map_ids: maps[..nr.min(maps.len())].to_vec(),
    })
}
