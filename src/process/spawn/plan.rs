//! Building an [`ExecPlan`]: every string, fd number, namespace flag and
//! limit the child will need, made in the parent before the fork.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::child::non_default_signals;
use super::{
    Creds, DEFAULT_PATH, ExecPlan, ORIGINAL_NOFILE, Output, Spawn, SpawnError, cstr, dev_null,
    environment, find_program, high, os, resolve_creds,
};
use crate::model::{Isolation, RunContext};

impl ExecPlan {
    /// A plan with every look-up on the host: the user and group (NSS),
    /// the program (stat along PATH) and the bind paths. These can block
    /// (a hung shared disk, a slow directory service): call it where a
    /// hang stalls nothing else (the supervisor's worker, the CLI).
    pub fn new(s: Spawn<'_>) -> Result<ExecPlan, SpawnError> {
        let run = s.run;
        let creds = resolve_creds(run.user.as_deref(), run.group.as_deref())?;
        for (inside, shown) in &run.isolate.bind {
            if !shown.exists() {
                return Err(SpawnError::BindSource(shown.clone()));
            }
            // Never through a symbolic link: mount(2) would follow it.
            crate::paths::check_bind_target(inside)?;
        }
        Self::build(s, creds, true)
    }

    /// A plan from credentials resolved before (by [`ExecPlan::new`] at the
    /// instance's start), for the supervisor's own loop: no NSS, no stat
    /// of the instance's paths. An absolute program is taken as it is (a
    /// missing one fails the exec, reported through the pipe), a bare name
    /// is looked up along PATH.
    pub fn with_creds(s: Spawn<'_>, creds: Option<Creds>) -> Result<ExecPlan, SpawnError> {
        Self::build(s, creds, false)
    }

    fn build(s: Spawn<'_>, creds: Option<Creds>, check: bool) -> Result<ExecPlan, SpawnError> {
        let run = s.run;
        let env = environment(run, creds.as_ref(), &run.pass_env);
        let program = program(s.argv, &env, check)?;
        let argv: Vec<CString> = s.argv.iter().map(cstr).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        let devnull = dev_null().map_err(os("opening /dev/null"))?;
        let mut owned = Vec::new();
        let mut keep = |fd: RawFd| -> Result<RawFd, SpawnError> {
            let h = high(fd)?;
            let n = h.as_raw_fd();
            owned.push(h);
            Ok(n)
        };
        let (stdin, stdout, stderr) = match &s.output {
            Output::Inherit => (None, None, None),
            Output::Null => (
                Some(keep(devnull.as_raw_fd())?),
                Some(keep(devnull.as_raw_fd())?),
                Some(keep(devnull.as_raw_fd())?),
            ),
            Output::File(f) => {
                let out = keep(f.as_raw_fd())?;
                (Some(keep(devnull.as_raw_fd())?), Some(out), Some(out))
            }
        };
        let cgroups = s
            .cgroups
            .iter()
            .map(|f| keep(f.as_raw_fd()))
            .collect::<Result<Vec<_>, _>>()?;
        let inherit = s.inherit.map(&mut keep).transpose()?;
        let cgroup_dir = s.into_cgroup.map(|d| {
            let n = d.as_raw_fd();
            owned.push(d);
            n
        });
        let iso = &run.isolate;
        let binds = binds(iso)?;
        let hostname = run
            .hostname
            .as_ref()
            .filter(|_| iso.uts)
            .map(cstr)
            .transpose()?;
        let rlimits = rlimits(run);
        Ok(ExecPlan {
            program: cstr(program.as_os_str().as_bytes())?,
            argv,
            argv_ptrs,
            envp,
            envp_ptrs,
            cwd: cstr(run.cwd.as_os_str().as_bytes())?,
            stdin,
            stdout,
            stderr,
            cgroups,
            cgroup_dir,
            inherit,
            owned,
            setsid: s.setsid,
            unshare_flags: unshare_flags(iso),
            mount_private: iso.needs_mount_ns(),
            binds,
            private_tmp: iso.private_tmp,
            hostname,
            rlimits,
            umask: run.umask.map(|m| m as libc::mode_t),
            creds: creds.map(|c| (c.uid, c.gid, c.groups)),
            reset_signals: non_default_signals(),
            display: s.argv.join(" "),
        })
    }

    pub fn argv(&self) -> &[CString] {
        &self.argv
    }

    pub fn env(&self) -> &[CString] {
        &self.envp
    }
}

/// The program to exec: `argv[0]` as given when it has a `/` and no check
/// is asked for, else found along the child's own `PATH`.
fn program(argv: &[String], env: &[(String, String)], check: bool) -> Result<PathBuf, SpawnError> {
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let argv0 = argv.first().ok_or(SpawnError::NotFound {
        cmd: String::new(),
        path: String::new(),
    })?;
    if !check && argv0.contains('/') {
        Ok(PathBuf::from(argv0))
    } else {
        find_program(argv0, path_var)
    }
}

/// The pointer array execve(2) takes, pointing into `strings`.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
}

/// The namespaces the child unshares.
fn unshare_flags(iso: &Isolation) -> libc::c_int {
    let mut flags = 0;
    if iso.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    if iso.needs_mount_ns() {
        flags |= libc::CLONE_NEWNS;
    }
    flags
}

/// (source shown, mount point inside) of each bind, as C strings.
fn binds(iso: &Isolation) -> Result<Vec<(CString, CString)>, SpawnError> {
    iso.bind
        .iter()
        .map(|(inside, shown)| {
            Ok((
                cstr(shown.as_os_str().as_bytes())?,
                cstr(inside.as_os_str().as_bytes())?,
            ))
        })
        .collect()
}

/// The child's resource limits: its own, and the supervisor's original
/// soft RLIMIT_NOFILE back unless it sets `nofile` (see `ORIGINAL_NOFILE`).
fn rlimits(run: &RunContext) -> Vec<(libc::c_int, libc::rlimit)> {
    let mut rlimits: Vec<(libc::c_int, libc::rlimit)> = run
        .rlimits
        .iter()
        .map(|r| {
            let v = |x: Option<u64>| x.unwrap_or(libc::RLIM_INFINITY);
            (
                r.resource as libc::c_int,
                libc::rlimit {
                    rlim_cur: v(r.soft),
                    rlim_max: v(r.hard),
                },
            )
        })
        .collect();
    if let Some(orig) = ORIGINAL_NOFILE.get()
        && !rlimits
            .iter()
            .any(|(r, _)| *r == libc::RLIMIT_NOFILE as libc::c_int)
    {
        rlimits.push((libc::RLIMIT_NOFILE as libc::c_int, *orig));
    }
    rlimits
}
