//! The binary as its own OCF resource agent.
//!
//! Pacemaker runs an agent as `$OCF_ROOT/resource.d/PROVIDER/TYPE ACTION`
//! with the agent's full path as argv[0] (so do `crm_resource` and
//! ocf-tester). Installed as a symlink there
//! (`/usr/lib/ocf/resource.d/cohost/instance -> /usr/sbin/cohost`), the
//! binary sees that path and answers as `cohost ocf ACTION`: no sh in
//! between, which was most of what an agent call cost (BENCHMARKS.md,
//! issue 17), and there is no binary to look up.
//!
//! The test is on the text of argv[0] alone (no stat, no readlink: this
//! runs before anything else in every call; only a relative argv[0] with a
//! slash costs a getcwd). `cohost` run by its name from
//! PATH has argv[0] `cohost`, without a slash: never the agent, wherever
//! the binary lives.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// When argv[0] is an OCF agent's path, the arguments of the same call as
/// `cohost ocf ACTION`, ACTION being argv[1] (`usage` when there is none,
/// as the sh agent, examples/ocf/cohost, says). Like the sh agent, only
/// argv[1] is passed on. The rewritten arguments go the way every other
/// call goes (the fast path, else clap), so the answer is the same as
/// through the sh agent by construction.
pub fn args(args: &[OsString]) -> Option<Vec<OsString>> {
    if !is_agent_path(args.first()?) {
        return None;
    }
    let action = match args.get(1) {
        Some(a) if !a.is_empty() => a.clone(),
        _ => OsString::from("usage"),
    };
    Some(vec!["cohost".into(), "ocf".into(), action])
}

/// argv[0] names `…/resource.d/PROVIDER/TYPE`. A relative path with a
/// slash (`./instance` run from the provider's directory) is taken from
/// the working directory.
fn is_agent_path(argv0: &OsStr) -> bool {
    if !argv0.as_bytes().contains(&b'/') {
        return false;
    }
    let p = Path::new(argv0);
    if p.is_absolute() {
        return under_resource_d(p);
    }
    std::env::current_dir().is_ok_and(|d| under_resource_d(&d.join(p)))
}

/// The last three components are `resource.d`, PROVIDER and TYPE (a `.`
/// or a doubled slash is no component; a `..` is not followed).
fn under_resource_d(p: &Path) -> bool {
    let mut c = p.components().rev();
    matches!(
        (c.next(), c.next(), c.next()),
        (Some(Component::Normal(_)), Some(Component::Normal(_)), Some(Component::Normal(d)))
            if d == "resource.d"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Option<Vec<String>> {
        let v: Vec<OsString> = v.iter().map(OsString::from).collect();
        args(&v).map(|r| {
            r.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn an_agent_path_becomes_cohost_ocf_action() {
        let ocf = |act: &str| Some(vec!["cohost".into(), "ocf".into(), act.to_string()]);
        assert_eq!(
            a(&["/usr/lib/ocf/resource.d/cohost/instance", "start"]),
            ocf("start")
        );
        assert_eq!(
            a(&["/x/resource.d/p/t", "monitor", "extra"]),
            ocf("monitor")
        );
        assert_eq!(a(&["/x//resource.d/./p/t", "stop"]), ocf("stop"));
        assert_eq!(
            a(&["/usr/lib/ocf/resource.d/cohost/instance"]),
            ocf("usage")
        );
        assert_eq!(
            a(&["/usr/lib/ocf/resource.d/cohost/instance", ""]),
            ocf("usage")
        );
        // Options are passed on as the sh agent passes them: clap answers.
        assert_eq!(a(&["/r/resource.d/c/i", "--help"]), ocf("--help"));
    }

    #[test]
    fn anything_else_is_the_plain_cli() {
        for v in [
            &["cohost", "start", "x"][..],
            &["instance", "start"],
            &["/usr/sbin/cohost", "start", "x"],
            &["/usr/lib/ocf/resource.d/cohost", "start"],
            &["/usr/lib/ocf/resource.d/cohost/instance/..", "start"],
            &["/usr/lib/ocf/resource.d/cohost/sub/instance", "start"],
            &["/resource.d/instance", "start"],
            &["/usr/lib/ocf/resource.dx/cohost/instance", "start"],
            &[],
        ] {
            assert_eq!(a(v), None, "{v:?}");
        }
    }

    #[test]
    fn a_relative_path_is_taken_from_the_working_directory() {
        // The test's working directory is the crate's, not a resource.d.
        assert_eq!(a(&["./instance", "start"]), None);
        assert!(under_resource_d(
            &Path::new("/usr/lib/ocf/resource.d/cohost").join("./instance")
        ));
    }
}
