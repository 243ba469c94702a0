//! What the package ships, checked without installing it: the generated
//! man pages, completions and commented reference file
//! (examples/pkg-assets.rs), and that the OCF agent and the LSB script find
//! a `cohost` that is only on PATH (as `cargo install` leaves it). The .deb
//! itself is installed under a real systemd by section_systemd.rs and on
//! the CI machine by tests/check-installed.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn assets() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("pkg");
    run_cmd({
        let mut c = Command::new(example("pkg-assets"));
        c.arg(&out);
        c
    })
    .ok();
    (t, out)
}

fn validate(dir: &Path) -> Out {
    run_cmd({
        let mut c = Command::new(cohost_bin());
        c.arg("--config").arg(dir).arg("validate");
        c
    })
}

#[test]
fn the_shipped_reference_file_loads_nothing_until_uncommented() {
    let (t, out) = assets();
    let etc = t.path().join("instances.d");
    std::fs::create_dir(&etc).unwrap();
    std::fs::copy(out.join("reference.toml"), etc.join("reference.toml")).unwrap();
    let v = validate(&etc).ok();
    assert!(v.stdout.contains("valid (0 instances"), "{v}");
    // Every setting is `#` + the reference's line: deleting that one `#`
    // everywhere gives the reference back, which is valid and complete.
    let text = std::fs::read_to_string(out.join("reference.toml")).unwrap();
    let reference = std::fs::read_to_string(root().join("instances.d/reference.toml")).unwrap();
    let body: Vec<&str> = text.lines().skip_while(|l| *l != "#").skip(1).collect();
    let uncommented: Vec<String> = body
        .iter()
        .zip(reference.lines())
        .map(|(c, r)| {
            if r.is_empty() || r.starts_with('#') {
                assert_eq!(*c, r);
                r.to_string()
            } else {
                assert_eq!(c.strip_prefix('#'), Some(r));
                c[1..].to_string()
            }
        })
        .collect();
    assert_eq!(uncommented.len(), reference.lines().count());
    let full = t.path().join("full.d");
    std::fs::create_dir(&full).unwrap();
    write(
        &full.join("reference.toml"),
        &(uncommented.join("\n") + "\n"),
    );
    let v = validate(&full).ok();
    let want = validate(&root().join("instances.d")).ok();
    assert_eq!(
        v.stdout.replace(&*full.to_string_lossy(), "DIR"),
        want.stdout
            .replace(&*root().join("instances.d").to_string_lossy(), "DIR")
    );
}

#[test]
fn man_pages_render_without_warnings_and_cover_every_command() {
    require_tools(&[("man", "man-db")]);
    let (_t, out) = assets();
    let render = |page: &str| {
        let o = run_cmd({
            let mut c = Command::new("man");
            c.args(["--warnings", "-l"])
                .arg(out.join(page))
                .env("MANWIDTH", "200");
            c
        });
        assert!(o.code == 0 && o.stderr.trim().is_empty(), "{o}");
        o.stdout
    };
    let m8 = render("cohost.8");
    let cmd = <cohost::cli::Cli as clap::CommandFactory>::command();
    for sub in cmd.get_subcommands() {
        let listed = m8.lines().any(|l| l == format!("   {}", sub.get_name()));
        assert_eq!(
            listed,
            !sub.is_hide_set(),
            "cohost(8) and {}",
            sub.get_name()
        );
    }
    for want in [
        "--runtime-dir",
        "--with-deps",
        "--depth",
        "EXIT STATUS",
        "COHOST_CONFIG",
    ] {
        assert!(m8.contains(want), "cohost(8) lacks {want}");
    }
    let m5 = render("cohost-instances.d.5");
    for want in [
        "[supervisor]",
        "[service.NAME]",
        "[instance.ID]",
        "address_mode",
        "${address}",
    ] {
        assert!(m5.contains(want), "cohost-instances.d(5) lacks {want}");
    }
}

#[test]
fn bash_completion_offers_instance_ids_from_the_instances_file() {
    require_tools(&[("bash", "bash")]);
    let (_t, out) = assets();
    let bin = cohost_bin();
    let path = format!("{}:/usr/bin:/bin", bin.parent().unwrap().to_string_lossy());
    let complete = |words: &str| {
        let o = run_cmd({
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!(
                    ". {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
                     _cohost_ids cohost \"${{COMP_WORDS[COMP_CWORD]}}\" x; echo \"${{COMPREPLY[*]}}\"",
                    out.join("cohost.bash").display()
                ))
                .env("PATH", &path)
                .env("COHOST_CONFIG", root().join("examples/instances.d"))
                .env("COHOST_RUNTIME_DIR", "/nonexistent/cohost-completion");
            c
        });
        assert_eq!(o.code, 0, "{o}");
        o.stdout.trim().to_string()
    };
    assert_eq!(complete("cohost start ''"), "demo01 demo02");
    assert_eq!(complete("cohost --config /x monitor d"), "demo01 demo02");
    assert_eq!(complete("cohost st"), "start stop status");
    // After the ID: options, not IDs.
    assert!(complete("cohost stop demo01 ''").contains("--timeout"));
    assert!(!complete("cohost validate ''").contains("demo01"));
}

/// A PATH holding only a `cohost` that records its calls, then runs ours.
fn path_with_recording_cohost(t: &Path) -> (String, PathBuf) {
    let dir = t.join("bin");
    std::fs::create_dir(&dir).unwrap();
    let log = t.join("calls");
    write(
        &dir.join("cohost"),
        &format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            cohost_bin().display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("cohost"), std::fs::Permissions::from_mode(0o755)).unwrap();
    (format!("{}:/usr/bin:/bin", dir.display()), log)
}

#[test]
fn the_ocf_agent_and_the_lsb_script_find_cohost_on_path() {
    let t = tempfile::tempdir().unwrap();
    let (path, log) = path_with_recording_cohost(t.path());
    let agent = run_cmd({
        let mut c = Command::new(root().join("examples/ocf/cohost"));
        c.arg("meta-data").env_clear().env("PATH", &path);
        c
    });
    assert_eq!(agent.code, 0, "{agent}");
    assert!(agent.stdout.contains("<resource-agent"), "{agent}");
    let lsb = run_cmd({
        let mut c = Command::new(root().join("examples/init.d/cohost-instance"));
        c.arg("status")
            .env_clear()
            .env("PATH", &path)
            .env("COHOST_INSTANCE", "demo01")
            .env("COHOST_CONFIG", root().join("examples/instances.d"))
            .env("COHOST_RUNTIME_DIR", t.path().join("run"));
        c
    });
    assert_eq!(lsb.code, 3, "not running\n{lsb}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "ocf meta-data\nlsb demo01 status\n");
}

fn counter(h: &Harness, id: &str, addr: &str) -> String {
    h.mkdirs(&[&format!("{id}/data")]);
    format!(
        "[service.c_{id}]\ncommand = [\"{}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"15s\" }}\n\n\
         [instance.{id}]\nservice = \"c_{id}\"\naddress = \"{addr}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n",
        example("counter").display(),
        h.path(&format!("{id}/data")).display(),
    )
}

#[test]
fn completion_ids_come_from_the_daemon_and_never_launch_one() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config("a.toml", &counter(&h, "ida", &h.addr(2)));
    h.run(&["start", "ida"]).ok();
    // An instance added to the file but not reloaded: the daemon does not
    // know it yet, so a listing that has it did not come from the daemon.
    h.write_config("b.toml", &counter(&h, "idb", &h.addr(3)));
    assert_eq!(h.run(&["__ids"]).ok().stdout, "ida\n");
    // The daemon dies; its state says ida runs. Any other command would
    // launch a daemon to adopt it: a TAB must not, and reads the file.
    let pid = h.daemon_pid().expect("a daemon");
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the daemon gone", || !alive(pid));
    assert_eq!(h.run(&["__ids"]).ok().stdout, "ida\nidb\n");
    assert_eq!(h.daemon_pid(), Some(pid), "no new daemon was launched");
    // Adopt and clean up through the normal path.
    h.run(&["stop", "ida"]).ok();
}

#[test]
fn zsh_and_fish_completions_parse_and_fish_offers_instance_ids() {
    require_tools(&[("zsh", "zsh"), ("fish", "fish")]);
    let (_t, out) = assets();
    let zsh = run_cmd({
        let mut c = Command::new("zsh");
        c.arg("-n").arg(out.join("_cohost"));
        c
    });
    assert_eq!(zsh.code, 0, "{zsh}");
    let z = std::fs::read_to_string(out.join("_cohost")).unwrap();
    assert!(
        z.contains("':id:_cohost_ids'") && z.contains("_cohost_ids() {"),
        "zsh: no ID completion"
    );
    let path = format!("{}:/usr/bin:/bin", cohost_bin().parent().unwrap().display());
    let fish = |line: &str| {
        let o = run_cmd({
            let mut c = Command::new("fish");
            c.arg("--no-config")
                .arg("-c")
                .arg(format!(
                    "source {}; complete -C '{line}'",
                    out.join("cohost.fish").display()
                ))
                .env("PATH", &path)
                .env("COHOST_CONFIG", root().join("examples/instances.d"))
                .env("COHOST_RUNTIME_DIR", "/nonexistent/cohost-completion");
            c
        });
        assert_eq!(o.code, 0, "{o}");
        o.stdout
    };
    assert_eq!(fish("cohost stop "), "demo01\tinstance\ndemo02\tinstance\n");
    assert!(fish("cohost sta").starts_with("start\t"));
}
