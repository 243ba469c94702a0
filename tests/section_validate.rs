//! `cohost validate` and `cohost import`: every kind of problem, each
//! reported as FILE:LINE with exit 2, and the shipped files valid.

mod common;
use common::*;

const SERVICE: &str = r#"
[service.counter]
command = ["/bin/counter", "--id", "${id}"]
"#;

/// Runs validate and asserts exit 2 and a line `FILE:LINE: ...fragment`.
fn expect_problem(h: &Harness, file: &str, line: u32, fragment: &str) -> Out {
    let out = h.run(&["validate"]).code(2);
    let path = h.config.join(file);
    let want = format!("{}:{line}: ", path.display());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&want) && l.contains(fragment)),
        "expected a line starting {want:?} containing {fragment:?}\n{out}"
    );
    out
}

#[test]
fn shipped_reference_and_example_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for dir in ["instances.d", "examples/instances.d"] {
        let mut c = std::process::Command::new(cohost_bin());
        c.args(["--config", &format!("{root}/{dir}"), "validate"]);
        let out = run_cmd(c).ok();
        assert!(out.stdout.contains("valid"), "{out}");
    }
}

#[test]
fn toml_syntax_error_names_the_line() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        "[service.counter]\ncommand = [\"/bin/x\"\n\n[instance.x]\n",
    );
    expect_problem(&h, "a.toml", 4, "TOML syntax: unclosed array");
}

#[test]
fn unknown_field_with_suggestion_and_all_reported() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        "[service.counter]\ncomand = [\"/bin/x\"]\ncommand = [\"/bin/x\"]\n\n[instance.x]\nservice = \"counter\"\nadress = \"10.0.0.1\"\n",
    );
    let out = expect_problem(&h, "a.toml", 2, "did you mean `command`");
    // Every problem at once: the second unknown field too.
    let second = format!("{}:7: ", h.config.join("a.toml").display());
    assert!(
        out.stderr.contains(&second) && out.stderr.contains("did you mean `address`"),
        "{out}"
    );
}

#[test]
fn unknown_variable_names_line_and_known_ones() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        "[service.counter]\ncommand = [\"/bin/x\", \"--data\", \"${dta}\"]\n\n[instance.x]\nservice = \"counter\"\npaths = { data = \"/srv/x\" }\n",
    );
    expect_problem(&h, "a.toml", 2, "unknown variable ${dta}");
    let out = h.run(&["validate"]);
    assert!(out.stderr.contains("did you mean ${data}"), "{out}");
}

#[test]
fn duplicate_ids_across_files() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!(
            "{SERVICE}\n[instance.x]\nservice = \"counter\"\naddress = \"10.0.0.1\"\nport = 1\n"
        ),
    );
    h.write_config(
        "b.toml",
        "# second file\n[instance.x]\nservice = \"counter\"\naddress = \"10.0.0.2\"\nport = 1\n",
    );
    let out = expect_problem(&h, "b.toml", 2, "duplicate instance ID `x`");
    assert!(
        out.stderr.contains("a.toml:"),
        "names the first definition\n{out}"
    );
}

#[test]
fn same_address_and_port() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!(
            "{SERVICE}\n[instance.a]\nservice = \"counter\"\naddress = \"10.0.0.1\"\nport = 9003\n\n[instance.b]\nservice = \"counter\"\naddress = \"10.0.0.1\"\nport = 9003\n"
        ),
    );
    expect_problem(&h, "a.toml", 10, "same address and port");
}

#[test]
fn overlapping_paths() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!(
            "{SERVICE}\n[instance.a]\nservice = \"counter\"\npaths = {{ data = \"/u01/data\" }}\n\n[instance.b]\nservice = \"counter\"\npaths = {{ data = \"/u01/data/b\" }}\n"
        ),
    );
    expect_problem(&h, "a.toml", 9, "overlaps paths.data of `a`");
}

#[test]
fn unknown_service() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.a]\nservice = \"countr\"\n"),
    );
    expect_problem(
        &h,
        "a.toml",
        6,
        "unknown service `countr`; did you mean `counter`?",
    );
}

#[test]
fn bad_instance_id() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.\"a/b\"]\nservice = \"counter\"\n"),
    );
    expect_problem(&h, "a.toml", 5, "is not allowed");
    // `..` anywhere, not only as a whole name (found by the fuzz test).
    h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.\"a..b\"]\nservice = \"counter\"\n"),
    );
    expect_problem(&h, "a.toml", 5, "no `..`");
}

#[test]
fn unknown_and_cyclic_after() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!(
            "{SERVICE}\n[instance.a]\nservice = \"counter\"\nafter = [\"b\"]\n\n[instance.b]\nservice = \"counter\"\nafter = [\"a\"]\n\n[instance.c]\nservice = \"counter\"\nafter = [\"zz\"]\n"
        ),
    );
    expect_problem(&h, "a.toml", 15, "no instance `zz` exists");
    expect_problem(&h, "a.toml", 5, "cycle: a -> b -> a");
}

/// Cycles behind chains and among instances without `after`: a three-way
/// cycle reached through a chain, a self-loop; a diamond is no cycle.
#[test]
fn a_cycle_anywhere_in_the_after_graph_is_found_and_a_diamond_is_none() {
    let h = Harness::new();
    let inst = |id: &str, after: &[&str]| {
        let list: Vec<String> = after.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "\n[instance.{id}]\nservice = \"counter\"\nafter = [{}]\n",
            list.join(", ")
        )
    };
    let diamond = [
        ("d1", &["d2", "d3"][..]),
        ("d2", &["d4"]),
        ("d3", &["d4"]),
        ("d4", &[]),
    ];
    let mut cfg = SERVICE.to_string();
    for (id, after) in diamond {
        cfg += &inst(id, after);
    }
    h.write_config("a.toml", &cfg);
    h.run(&["validate"]).ok();
    for (id, after) in [
        ("a0", &["d1", "b1"][..]),
        ("b1", &["b2"]),
        ("b2", &["b3"]),
        ("b3", &["b1"]),
    ] {
        cfg += &inst(id, after);
    }
    h.write_config("a.toml", &cfg);
    let out = h.run(&["validate"]).code(2);
    assert!(out.stderr.contains("cycle: b1 -> b2 -> b3 -> b1"), "{out}");
    h.write_config(
        "a.toml",
        &format!("{SERVICE}{}{}", inst("x", &["y"]), inst("y", &["y"])),
    );
    let out = h.run(&["validate"]).code(2);
    assert!(out.stderr.contains("cycle: y -> y"), "{out}");
}

#[test]
fn relative_paths_and_bad_values() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.a]\nservice = \"counter\"\naddress = \"10.0.0.300\"\npaths = {{ data = \"rel/dir\" }}\n"),
    );
    expect_problem(&h, "a.toml", 7, "not an IP address");
    expect_problem(&h, "a.toml", 8, "absolute path");
}

#[test]
fn missing_directory_is_clear() {
    let h = Harness::new();
    let mut c = std::process::Command::new(cohost_bin());
    c.args(["--config", "/nonexistent/cohost.d", "validate"]);
    let out = run_cmd(c).code(2);
    assert!(
        out.stderr
            .contains("/nonexistent/cohost.d: cannot read the instances directory"),
        "{out}"
    );
    drop(h);
}

#[test]
fn import_converts_and_names_bad_lines() {
    let h = Harness::new();
    let good = h.path("legacy.txt");
    write(
        &good,
        "# ID:DBDIR:ETCDIR:PORT:HOSTNAME\nessrv01:/u01/db:/u01/etc:9003:essrv01.example\nessrv02:/u02/db:/u02/etc:9003:\n",
    );
    let out = h
        .run(&["import", good.to_str().unwrap(), "--service", "counter"])
        .ok();
    assert!(
        out.stdout.contains("[instance.essrv01]")
            && out
                .stdout
                .contains("paths = { data = \"/u01/db\", etc = \"/u01/etc\" }"),
        "{out}"
    );
    // The output is a valid instances file once a service is added.
    h.write_config("svc.toml", "[service.counter]\ncommand = [\"/bin/x\"]\n");
    let imported = out
        .stdout
        .replace("# address", "address")
        .replacen("\"...\"", "\"10.0.0.1\"", 1)
        .replacen("\"...\"", "\"10.0.0.2\"", 1);
    h.write_config("imported.toml", &imported);
    h.run(&["validate"]).ok();

    let bad = h.path("bad.txt");
    write(&bad, "ok:/a:/b:1:h\nbroken:/a\n");
    let out = h
        .run(&["import", bad.to_str().unwrap(), "--service", "counter"])
        .code(2);
    assert!(
        out.stderr
            .contains(&format!("{}:2: expected 5 fields", bad.display())),
        "{out}"
    );
}

#[test]
fn world_writable_file_is_refused_as_root() {
    require_root_cgroups();
    let h = Harness::new();
    let f = h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.a]\nservice = \"counter\"\n"),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = h.run(&["validate"]).code(2);
    assert!(
        out.stderr
            .contains(&format!("{}: writable by everyone", f.display()))
            && out.stderr.contains("chmod go-w"),
        "{out}"
    );
    // And the daemon refuses to start on it.
    let out = h.run(&["start", "a"]).code(2);
    assert!(out.stderr.contains("writable by everyone"), "{out}");
}

#[test]
fn private_tmp_over_the_instances_own_paths_is_refused() {
    let h = Harness::new();
    h.write_config(
        "a.toml",
        &format!("{SERVICE}isolate = {{ private_tmp = true }}\n\n[instance.a]\nservice = \"counter\"\npaths = {{ data = \"/tmp/a/data\" }}\n"),
    );
    expect_problem(
        &h,
        "a.toml",
        4,
        "private_tmp hides /tmp, where paths.data live",
    );
}

fn svc_instance(id: &str, extra: &str) -> String {
    format!("\n[instance.{id}]\nservice = \"counter\"\n{extra}\n")
}

#[test]
fn a_data_path_that_is_a_file_says_so() {
    let h = Harness::new();
    let file = h.path("data-file");
    std::fs::write(&file, "").unwrap();
    h.write_config(
        "a.toml",
        &format!(
            "{SERVICE}{}",
            svc_instance("a", &format!("paths = {{ data = \"{}\" }}", file.display()))
        ),
    );
    // [instance.a] is on line 5.
    expect_problem(
        &h,
        "a.toml",
        5,
        &format!(
            "paths.data of `a` ({}) is a regular file, not a directory",
            file.display()
        ),
    );
}

#[test]
fn a_start_on_a_data_path_that_is_a_file_says_so() {
    require_root_cgroups();
    let h = Harness::new();
    let file = h.path("data-file");
    std::fs::write(&file, "").unwrap();
    h.write_config(
        "a.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.a]\nservice = \"s\"\npaths = {{ data = \"{}\" }}\n",
            example("testsvc").display(),
            file.display()
        ),
    );
    let out = h.run(&["start", "a"]).code(1);
    assert!(
        out.stderr.contains("not a directory") && !out.stderr.contains("does not exist"),
        "{out}"
    );
}

#[test]
fn a_bind_target_through_a_symlink_is_refused_and_never_covers_the_root() {
    require_root_cgroups();
    let h = Harness::new();
    h.mkdirs(&["a/data"]);
    let link = h.path("to-root");
    std::os::unix::fs::symlink("/", &link).unwrap();
    h.write_config(
        "b.toml",
        &format!(
            r#"
[service.s]
command = ["{t}", "sleep"]

[instance.b1]
service = "s"
paths = {{ data = "{data}" }}
bind = {{ "{link}" = "${{data}}" }}
"#,
            t = example("testsvc").display(),
            data = h.path("a/data").display(),
            link = link.display(),
        ),
    );
    let out = expect_problem(&h, "b.toml", 5, "is a symbolic link (to /)");
    assert!(out.stderr.contains(&link.display().to_string()), "{out}");
    // And a start (which does not run validate) refuses before any mount.
    let out = h.run(&["start", "b1"]).code(1);
    assert!(out.stderr.contains("is a symbolic link (to /)"), "{out}");
    assert!(h.members("b1").is_empty(), "nothing ran");
}

#[test]
fn a_bind_over_the_kernels_trees_is_refused() {
    let h = Harness::new();
    h.write_config(
        "k.toml",
        &format!(
            r#"{SERVICE}
[instance.k]
service = "counter"
paths = {{ data = "/u01/k" }}
bind = {{ "/proc" = "${{data}}" }}

[instance.k2]
service = "counter"
paths = {{ data = "/u01/k2" }}
bind = {{ "/sys/fs/cgroup" = "${{data}}" }}

[instance.k3]
service = "counter"
paths = {{ data = "/u01/k3" }}
bind = {{ "/dev" = "${{data}}" }}
"#
        ),
    );
    let out = expect_problem(&h, "k.toml", 8, "cannot bind over /proc");
    for (line, what) in [(13, "/sys/fs/cgroup"), (18, "/dev")] {
        let want = format!("{}:{line}: ", h.config.join("k.toml").display());
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(&format!("cannot bind over {what}"))),
            "{want} {what}\n{out}"
        );
    }
}

#[test]
fn one_storage_under_two_names_overlaps() {
    let h = Harness::new();
    h.mkdirs(&["disk/a"]);
    let alias = h.path("alias");
    std::os::unix::fs::symlink(h.path("disk"), &alias).unwrap();
    h.write_config(
        "o.toml",
        &format!(
            "{SERVICE}{}{}",
            svc_instance(
                "a",
                &format!("paths = {{ data = \"{}\" }}", h.path("disk/a").display())
            ),
            svc_instance(
                "b",
                &format!("paths = {{ data = \"{}\" }}", alias.join("a").display())
            ),
        ),
    );
    expect_problem(&h, "o.toml", 9, "the same storage under two names");
}

#[test]
fn an_instances_dir_another_user_could_write_is_refused_naming_the_fix() {
    require_root_cgroups();
    use std::os::unix::fs::PermissionsExt;
    let user = TestUser::new("cohtv");
    let h = Harness::new();
    let f = h.write_config(
        "a.toml",
        &format!("{SERVICE}\n[instance.a]\nservice = \"counter\"\n"),
    );
    let cfg = h.config.display().to_string();
    // World-writable directory.
    std::fs::set_permissions(&h.config, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = h.run(&["validate"]).code(2);
    assert!(
        out.stderr.contains(&format!("{cfg}: writable by everyone"))
            && out.stderr.contains(&format!("chmod go-w {cfg}")),
        "{out}"
    );
    // Owned by another user.
    std::fs::set_permissions(&h.config, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&h.config, Some(user.uid), None).unwrap();
    let out = h.run(&["validate"]).code(2);
    assert!(
        out.stderr
            .contains(&format!("{cfg}: owned by uid {}", user.uid))
            && out.stderr.contains(&format!("chown root {cfg}")),
        "{out}"
    );
    let out = h.run(&["start", "a"]).code(2);
    assert!(out.stderr.contains("chown root"), "{out}");
    std::os::unix::fs::chown(&h.config, Some(0), None).unwrap();
    // A directory above it that another user may write (not sticky).
    let top = h.dir.path().display().to_string();
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = h.run(&["validate"]).code(2);
    assert!(
        out.stderr.contains(&format!("{top}: writable by everyone"))
            && out.stderr.contains(&format!("chmod go-w {top}")),
        "{out}"
    );
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // A file that is a symbolic link is never followed as root.
    let elsewhere = h.path("elsewhere.toml");
    std::fs::rename(&f, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &f).unwrap();
    let out = h.run(&["validate"]).code(2);
    assert!(
        out.stderr.contains(&format!(
            "{}: a symbolic link, which is never followed",
            f.display()
        )),
        "{out}"
    );
    std::fs::remove_file(&f).unwrap();
    std::fs::rename(&elsewhere, &f).unwrap();
    h.run(&["validate"]).ok();
}

/// tests/tools/hangfs.py mounted under the test's dir: a shared disk that
/// hangs on demand. Released, killed and unmounted on drop.
struct HangFs {
    child: std::process::Child,
    mnt: std::path::PathBuf,
    ctl: std::path::PathBuf,
}

impl HangFs {
    fn mount(h: &Harness, name: &str) -> HangFs {
        use std::io::BufRead;
        require_tools(&[("/usr/bin/python3", "python3"), ("fusermount3", "fuse3")]);
        let backing = h.path(&format!("{name}-backing"));
        let mnt = h.path(name);
        let ctl = h.path(&format!("{name}.ctl"));
        std::fs::create_dir_all(backing.join("data")).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/hangfs.py");
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args([&backing, &mnt, &ctl])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let fs = HangFs { child, mnt, ctl };
        assert_eq!(
            line.trim(),
            "ready",
            "hangfs did not come up (python3-fusepy installed?)"
        );
        fs
    }

    fn send(&self, cmd: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.ctl)?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        let _ = self.send("go");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .output();
    }
}

#[test]
fn a_hung_shared_path_does_not_hang_validate() {
    require_root_cgroups();
    let h = Harness::new();
    let fs = HangFs::mount(&h, "san");
    h.write_config(
        "h.toml",
        &format!(
            "{SERVICE}{}",
            svc_instance(
                "h",
                &format!("paths = {{ data = \"{}\" }}", fs.mnt.join("data").display())
            )
        ),
    );
    // Hung before anything looked (FUSE caches what it answered).
    assert!(fs.send("hang").unwrap().starts_with("ok"));
    let t0 = std::time::Instant::now();
    let out = h.run(&["validate"]).ok();
    let took = t0.elapsed();
    assert!(
        out.stderr.contains("did not answer within 3s: not checked"),
        "{out}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "validate took {took:?}"
    );
    assert!(fs.send("go").unwrap().starts_with("ok"));
}

/// Every clash is reported once, at the later instance, naming the earlier
/// one: a wildcard instance clashes with every instance on its port, two
/// instances on one address only on the same port; equal paths, an
/// ancestor in either order, but never two paths of one instance.
#[test]
fn each_address_and_path_clash_once_at_the_later_instance() {
    let h = Harness::new();
    let inst =
        |id: &str, extra: &str| format!("\n[instance.{id}]\nservice = \"counter\"\n{extra}\n");
    let mut cfg = SERVICE.to_string();
    cfg += &inst("a", "address = \"10.0.0.1\"\nport = 1");
    cfg += &inst("b", "address = \"10.0.0.1\"\nport = 2");
    cfg += &inst("c", "port = 1");
    cfg += &inst("d", "address = \"10.0.0.2\"\nport = 1");
    cfg += &inst("e", "paths = { data = \"/u/e\", log = \"/u/e/log\" }");
    cfg += &inst("f", "paths = { data = \"/u/e/f\" }");
    cfg += &inst("g", "paths = { data = \"/u\" }");
    cfg += &inst("h", "paths = { data = \"/v\", log = \"/v/\" }");
    cfg += &inst("i", "paths = { data = \"/v\" }");
    h.write_config("a.toml", &cfg);
    let out = h.run(&["validate"]).code(2);
    let mut got: Vec<String> = out
        .stderr
        .lines()
        .filter(|l| l.contains("a.toml:"))
        .filter_map(|l| {
            let at = l.split(": ").next()?.rsplit(':').next()?.to_string();
            let names: Vec<&str> = l.split('`').skip(1).step_by(2).collect();
            Some(format!("{at} {}", names.join(" ")))
        })
        .collect();
    got.sort();
    // Lines of c, d, f, g, i: (later, earlier) pairs.
    let mut want = [
        "15 c a", "19 d c", "28 f e", "32 g e", "32 g e", "32 g f", "40 i h", "40 i h",
    ];
    want.sort();
    assert_eq!(got, want, "{out}");
}

/// 10,000 instances with three paths each: the clash checks look each
/// path's ancestors up instead of comparing all pairs (450 million
/// comparisons took minutes).
#[test]
fn validate_of_10000_instances_is_not_quadratic() {
    let h = Harness::new();
    let mut cfg = SERVICE.to_string();
    for i in 0..10_000 {
        cfg += &format!(
            "\n[instance.i{i}]\nservice = \"counter\"\naddress = \"10.{}.{}.{}\"\nport = 9003\npaths = {{ data = \"/u/{i}/data\", etc = \"/u/{i}/etc\", log = \"/l/{i}\" }}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    h.write_config("a.toml", &cfg);
    let t = std::time::Instant::now();
    h.run(&["validate"]).ok();
    let took = t.elapsed();
    eprintln!("validate of 10,000 instances: {took:?}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
}
