//! The host look-ups a plan needs, done in the parent: the user and group
//! (NSS), the child's environment, the program along `PATH`.

use std::path::{Path, PathBuf};

use super::{SpawnError, cstr};
use crate::model::RunContext;

/// The environment a cohost child inherits from the supervisor: only these,
/// plus the names a service lists in `pass_env` (contract).
pub const INHERITED_ENV: &[&str] = &["PATH", "LANG", "TZ"];
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolved credentials.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub name: String,
}

/// Looks up `user`/`group` on this node (NSS): done in the parent.
pub fn resolve_creds(user: Option<&str>, group: Option<&str>) -> Result<Option<Creds>, SpawnError> {
    use nix::unistd::{Group, User};
    let Some(user) = user else {
        if let Some(g) = group {
            let gr = lookup_group(g)?;
            return Ok(Some(Creds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: gr,
                groups: vec![gr],
                home: PathBuf::from("/"),
                name: String::new(),
            }));
        }
        return Ok(None);
    };
    let pw = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|source| SpawnError::Lookup {
        name: user.to_string(),
        source,
    })?
    .ok_or_else(|| SpawnError::NoUser(user.to_string()))?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => pw.gid.as_raw(),
    };
    let cname = cstr(pw.name.as_bytes())?;
    let groups = nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid))
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid]);
    let _ = Group::from_gid(nix::unistd::Gid::from_raw(gid));
    Ok(Some(Creds {
        uid: pw.uid.as_raw(),
        gid,
        groups,
        home: pw.dir,
        name: pw.name,
    }))
}

fn lookup_group(g: &str) -> Result<u32, SpawnError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(g)
        .map_err(|source| SpawnError::Lookup {
            name: g.to_string(),
            source,
        })?
        .map(|gr| gr.gid.as_raw())
        .ok_or_else(|| SpawnError::NoGroup(g.to_string()))
}

/// The final environment of a process of the instance.
pub fn environment(
    run: &RunContext,
    creds: Option<&Creds>,
    pass_env: &[String],
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for name in INHERITED_ENV
        .iter()
        .copied()
        .chain(pass_env.iter().map(String::as_str))
    {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.to_string(), v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(c) = creds.filter(|c| !c.name.is_empty()) {
        env.insert("HOME".into(), c.home.display().to_string());
        env.insert("USER".into(), c.name.clone());
        env.insert("LOGNAME".into(), c.name.clone());
    }
    for (k, v) in run.env.iter() {
        env.insert(k.to_string(), v.to_string());
    }
    env.into_iter().collect()
}

/// Finds `cmd` the way execvp(3) would, but in the parent, so that "not
/// found" is a clear error and not an exit status 127 of a child.
pub fn find_program(cmd: &str, path_var: &str) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let exec_bits = |m: &std::fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    let is_exec = |p: &Path| std::fs::metadata(p).is_ok_and(|m| exec_bits(&m));
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match std::fs::metadata(&p) {
            Err(_) => Err(SpawnError::NotFound {
                cmd: cmd.into(),
                path: "(absolute path)".into(),
            }),
            Ok(m) if !exec_bits(&m) => Err(SpawnError::NotExecutable { cmd: cmd.into() }),
            Ok(_) => Ok(p),
        };
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(SpawnError::NotFound {
        cmd: cmd.into(),
        path: path_var.into(),
    })
}
