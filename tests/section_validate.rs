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
