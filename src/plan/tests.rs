use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

struct Fake {
    users: BTreeSet<&'static str>,
    programs: BTreeSet<&'static str>,
    paths: BTreeSet<PathBuf>,
    cap: Capacity,
}

impl Fake {
    fn roomy() -> Fake {
        Fake {
            users: ["svc"].into(),
            programs: ["/bin/svc", "/bin/stop", "/bin/sh"].into(),
            paths: [PathBuf::from("/etc/product")].into(),
            cap: Capacity {
                memory_bytes: 8 << 30,
                cpus: 2.0,
                pid_max: 4_194_304,
                running: Default::default(),
            },
        }
    }
}

impl Host for Fake {
    fn user_exists(&self, n: &str) -> bool {
        self.users.contains(n)
    }
    fn group_exists(&self, n: &str) -> bool {
        self.users.contains(n)
    }
    fn program(&self, a: &str, _: &str) -> Result<(), ProgramError> {
        if self.programs.contains(a) {
            Ok(())
        } else {
            Err(ProgramError::Missing)
        }
    }
    fn exists(&self, p: &Path) -> bool {
        self.paths.contains(p)
    }
    fn capacity(&self) -> Capacity {
        self.cap.clone()
    }
}

fn cfg(text: &str) -> (tempfile::TempDir, Config) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.toml"), text).unwrap();
    let c = crate::config::load(d.path(), crate::config::Trust::Relaxed)
        .unwrap_or_else(|e| panic!("{e:?}"));
    (d, c)
}

const SVC: &str = "[service.s]\ncommand = [\"/bin/svc\"]\nstop = { command = [\"/bin/stop\"] }\n";

fn inst(id: &str, addr: &str, data: &str, extra: &str) -> String {
    format!(
        "[instance.{id}]\nservice = \"s\"\naddress = \"{addr}\"\nport = 9003\npaths = {{ data = \"{data}\" }}\n{extra}\n"
    )
}

fn kinds(local: &str, peer: &str, host: &Fake) -> Vec<Kind> {
    let (_a, l) = cfg(&format!("{SVC}{local}"));
    let (_b, p) = cfg(&format!("{SVC}{peer}"));
    plan(&l, &p, host).blockers.iter().map(|b| b.kind).collect()
}

#[test]
fn a_clean_pair_passes() {
    let k = kinds(
        &inst("a1", "10.0.0.1", "/u/a1", ""),
        &inst("b1", "10.0.0.2", "/u/b1", "user = \"svc\""),
        &Fake::roomy(),
    );
    assert_eq!(k, vec![]);
}

#[test]
fn each_kind_of_clash() {
    let h = Fake::roomy();
    let l = inst("a1", "10.0.0.1", "/u/a1", "");
    assert_eq!(
        kinds(&l, &inst("a1", "10.0.0.2", "/u/b1", ""), &h),
        vec![Kind::Id]
    );
    assert_eq!(
        kinds(&l, &inst("b1", "10.0.0.1", "/u/b1", ""), &h),
        vec![Kind::Address]
    );
    assert_eq!(
        kinds(&l, &inst("b1", "10.0.0.2", "/u/a1/sub", ""), &h),
        vec![Kind::Paths]
    );
    assert_eq!(
        kinds(
            &l,
            &inst("b1", "10.0.0.2", "/u/b1", "user = \"nobody9\""),
            &h
        ),
        vec![Kind::User]
    );
    assert_eq!(
        kinds(
            &l,
            &inst("b1", "10.0.0.2", "/u/b1", "group = \"nogroup9\""),
            &h
        ),
        vec![Kind::Group]
    );
    assert_eq!(
        kinds(
            &l,
            &inst(
                "b1",
                "10.0.0.2",
                "/u/b1",
                "bind = { \"/etc/missing\" = \"${data}\" }"
            ),
            &h
        ),
        vec![Kind::Bind]
    );
}

#[test]
fn missing_programs_and_the_after_they_break() {
    let mut h = Fake::roomy();
    h.programs.remove("/bin/stop");
    let peer = format!(
        "{}{}",
        inst("b1", "10.0.0.2", "/u/b1", ""),
        inst("b2", "10.0.0.3", "/u/b2", "after = [\"b1\"]")
    );
    let k = kinds(&inst("a1", "10.0.0.1", "/u/a1", ""), &peer, &h);
    assert_eq!(k, vec![Kind::Binary, Kind::Binary, Kind::After], "{k:?}");
}

#[test]
fn capacity_counts_both_sets_and_current_use() {
    let mut h = Fake::roomy();
    let l = inst(
        "a1",
        "10.0.0.1",
        "/u/a1",
        "memory_max = \"5G\"\ncpu_max = \"150%\"",
    );
    let p = inst(
        "b1",
        "10.0.0.2",
        "/u/b1",
        "memory_max = \"4G\"\ncpu_max = \"100%\"\npids_max = 100",
    );
    assert_eq!(kinds(&l, &p, &h), vec![Kind::Memory, Kind::Cpu]);
    h.cap.pid_max = 50;
    h.cap.memory_bytes = 64 << 30;
    h.cap.cpus = 4.0;
    assert_eq!(kinds(&l, &p, &h), vec![Kind::Pids]);
    // A running instance without a limit counts what it uses.
    h.cap.pid_max = 1000;
    h.cap.memory_bytes = 5 << 30;
    h.cap.running.insert("a0".into(), (2 << 30, 3));
    let l0 = inst("a0", "10.0.0.9", "/u/a0", "");
    let p0 = inst("b1", "10.0.0.2", "/u/b1", "memory_max = \"4G\"");
    assert_eq!(kinds(&l0, &p0, &h), vec![Kind::Memory]);
}
