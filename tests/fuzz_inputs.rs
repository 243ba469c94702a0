//! Hostile input, by property testing (bounded: a few thousand cases, a
//! few seconds): the instances-file parser and the control-protocol decoder
//! never panic and reject what they must; substitution never adds argv
//! elements; accepted IDs are safe as file and cgroup names; a live daemon
//! fed garbage keeps serving.

mod common;
use common::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// TOML-shaped noise that reaches deep into the reader: real section
/// names and keys, `${}` templates, wrong types, stray bytes.
fn toml_doc() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "service",
        "command",
        "type",
        "address",
        "port",
        "hostname",
        "paths",
        "after",
        "ready",
        "stop",
        "restart",
        "health",
        "env",
        "user",
        "isolate",
        "bind",
        "count",
        "name",
        "timeout",
        "interval",
        "tcp",
        "file",
        "process",
        "policy",
        "max",
        "window",
        "backoff",
        "memory_max",
        "cpu_max",
        "rlimits",
        "umask",
        "lock",
        "address_mode",
        "bogus",
    ]);
    let value = prop_oneof![
        "[a-z0-9 ${}./:_-]{0,20}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_string()),
        Just("[\"/bin/x\", \"${address}:${port}\", \"${nope}\"]".to_string()),
        Just("{ tcp = \"${address}:${port}\", timeout = \"1x\" }".to_string()),
        Just("{ data = \"/u/${id}\", log = \"rel\" }".to_string()),
        Just("[\"a\", 1]".to_string()),
        "[ -~]{0,12}",
    ];
    let line = prop_oneof![
        "[a-z0-9_.\"/-]{1,8}".prop_map(|n| format!("[service.{n}]")),
        "[a-z0-9_.\"/-]{1,8}".prop_map(|n| format!("[instance.{n}]")),
        "[a-z]{1,5}".prop_map(|n| format!("[[service.{n}.process]]")),
        Just("[supervisor]".to_string()),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        "[ -~]{0,30}",
    ];
    prop::collection::vec(line, 0..40).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn config_parser_never_panics(a in toml_doc(), b in toml_doc()) {
        let files = vec![(PathBuf::from("/x/a.toml"), a), (PathBuf::from("/x/b.toml"), b)];
        match cohost::config::parse_text(Path::new("/x"), files) {
            Ok(cfg) => {
                for spec in cfg.instances.values() {
                    prop_assert!(cohost::config::resolve::valid_id(&spec.id));
                    prop_assert!(spec.paths.values().all(|p| p.is_absolute()));
                }
            }
            Err(diags) => {
                prop_assert!(!diags.is_empty());
                prop_assert!(diags.iter().all(|d| d.file.starts_with("/x")));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = cohost::config::parse_text(Path::new("/x"), vec![(PathBuf::from("/x/a.toml"), text)]);
    }

    #[test]
    fn protocol_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<cohost::control::proto::Envelope>(&bytes);
    }

    #[test]
    fn json_shaped_requests_decode_or_are_refused(op in "[a-z-]{0,10}", id in "[ -~]{0,20}", extra in "[a-z_]{0,8}") {
        let line = format!(r#"{{"op":"{op}","id":{id:?},"{extra}":1}}"#);
        if let Ok(env) = serde_json::from_str::<cohost::control::proto::Envelope>(&line) {
            // Only known operations decode, and unknown fields are refused.
            prop_assert!(extra.is_empty() || extra == "id" || extra == "timeout_ms" || extra == "depth" || extra == "with_deps" || extra == "config", "{env:?}");
        }
    }

    #[test]
    fn substitution_never_adds_arguments(value in "[ -~\\t\\n]{0,40}") {
        let mut vars = cohost::config::subst::Vars::new();
        vars.set("data", Some(value.clone()));
        let argv = ["prog", "--data", "${data}", "x${data}y"];
        let out: Vec<String> = argv.iter().map(|a| vars.subst(a).unwrap()).collect();
        prop_assert_eq!(out.len(), argv.len());
        prop_assert_eq!(&out[2], &value);
    }

    #[test]
    fn accepted_ids_are_safe_names(id in "[ -~\\x00-\\x1f]{0,20}") {
        if cohost::config::resolve::valid_id(&id) {
            prop_assert!(!id.contains('/') && !id.contains("..") && !id.starts_with('.') && !id.starts_with('-'));
            prop_assert!(id.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}

#[test]
fn a_live_daemon_fed_garbage_keeps_serving() {
    use std::io::{Read, Write};
    let h = Harness::new();
    h.write_config(
        "g.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.g1]\nservice = \"s\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "g1"]).ok();
    let members = h.members("g1");
    let sock = h.runtime.join("cohost.sock");
    let mut runner = proptest::test_runner::TestRunner::new(cases(300));
    let garbage = prop::collection::vec(any::<u8>(), 1..200);
    runner
        .run(&garbage, |mut bytes| {
            bytes.retain(|b| *b != b'\n');
            bytes.push(b'\n');
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.write_all(&bytes).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            prop_assert!(
                reply.contains("\"code\":2")
                    || reply.contains("\"code\":4")
                    || reply.contains("\"code\":0")
                    || reply.contains("\"code\":3"),
                "{reply}"
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(h.members("g1"), members, "garbage disturbed nothing");
    h.run(&["monitor", "g1"]).ok();
}
