//! Cluster and init integration, checked with the tools ClusterLabs and
//! systemd wrote: ocf-tester, crm_resource (offline CIB), a real
//! single-node Pacemaker, insserv, systemd-analyze; and the LSB init
//! script run for real.
//!
//! These tests install files into system locations (the OCF agent under
//! /usr/lib/ocf/resource.d/cohost, the binary as /usr/local/sbin/cohost)
//! and start a cluster: they run one at a time (SYSTEM lock) and restore
//! what was there before, pass or fail. Missing tools fail the test with
//! the package to install; nothing is skipped.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static SYSTEM: Mutex<()> = Mutex::new(());

fn system_lock() -> std::sync::MutexGuard<'static, ()> {
    SYSTEM.lock().unwrap_or_else(|e| e.into_inner())
}

fn need(tool: &str, package: &str) {
    require_tools(&[(tool, package)]);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What was at a path before a test put something there.
enum Before {
    Nothing,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Files put in place for a test and put back as they were on drop.
struct Installed(Vec<(PathBuf, Before)>);

impl Installed {
    fn new() -> Installed {
        Installed(Vec::new())
    }
    /// Remembers what `dst` is (a symlink as a symlink: an installed
    /// package's agent is one) and makes its directory.
    fn remember(&mut self, dst: &str) -> PathBuf {
        let dst = PathBuf::from(dst);
        let before = match std::fs::symlink_metadata(&dst) {
            Ok(m) if m.file_type().is_symlink() => Before::Link(std::fs::read_link(&dst).unwrap()),
            Ok(_) => Before::File(std::fs::read(&dst).unwrap()),
            Err(_) => Before::Nothing,
        };
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        self.0.push((dst.clone(), before));
        dst
    }
    fn put(&mut self, src: &Path, dst: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let dst = self.remember(dst);
        let tmp = dst.with_extension("cohost-test");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
    fn link(&mut self, target: &str, dst: &str) {
        let dst = self.remember(dst);
        let tmp = dst.with_extension("cohost-test");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (p, before) in self.0.drain(..).rev() {
            let _ = std::fs::remove_file(&p);
            match before {
                Before::File(b) => {
                    let _ = std::fs::write(&p, b);
                }
                Before::Link(t) => {
                    let _ = std::os::unix::fs::symlink(t, &p);
                }
                Before::Nothing => {}
            }
        }
        let _ = std::fs::remove_dir("/usr/lib/ocf/resource.d/cohost");
    }
}

/// The two shipped forms of the OCF agent.
#[derive(Debug, Clone, Copy)]
enum Agent {
    /// The packaged way: a symlink to the cohost binary.
    Binary,
    /// examples/ocf/cohost, which execs `cohost ocf ACTION`.
    Sh,
}

const AGENT_PATH: &str = "/usr/lib/ocf/resource.d/cohost/instance";

fn install_agent_and_binary(agent: Agent) -> Installed {
    let mut i = Installed::new();
    i.put(&cohost_bin(), "/usr/local/sbin/cohost", 0o755);
    match agent {
        Agent::Binary => i.link("/usr/local/sbin/cohost", AGENT_PATH),
        Agent::Sh => i.put(&root().join("examples/ocf/cohost"), AGENT_PATH, 0o755),
    }
    i
}

fn counter_instance(h: &Harness, id: &str, addr: &str) -> String {
    h.mkdirs(&[&format!("{id}/data"), &format!("{id}/log")]);
    format!(
        "[service.counter]\ncommand = [\"{}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"15s\" }}\n\n[instance.{id}]\nservice = \"counter\"\naddress = \"{addr}\"\nport = 9003\npaths = {{ data = \"{}\", log = \"{}\" }}\n",
        example("counter").display(),
        h.path(&format!("{id}/data")).display(),
        h.path(&format!("{id}/log")).display()
    )
}

#[test]
fn ocf_tester_passes_for_a_simple_and_a_multi_process_instance_through_both_agents() {
    require_root_cgroups();
    need("ocf-tester", "resource-agents libxml2-utils");
    let _g = system_lock();
    let mut c = Command::new(root().join("tests/peers/ocf-tester.sh"));
    c.arg(cohost_bin())
        .arg(cohost_bin().parent().unwrap().join("examples"));
    let out = run_cmd(c);
    println!("{out}");
    assert_eq!(out.code, 0, "{out}");
    // Two instances, each through the binary as agent and the sh agent.
    assert_eq!(out.stdout.matches("passed all tests").count(), 4, "{out}");
    assert!(
        !out.all().contains("* rc="),
        "no failed assertion at all\n{out}"
    );
}

#[test]
fn ocf_tester_catches_a_lying_monitor() {
    require_root_cgroups();
    need("ocf-tester", "resource-agents libxml2-utils");
    let _g = system_lock();
    let mut c = Command::new(root().join("tests/peers/ocf-tester.sh"));
    c.arg(cohost_bin())
        .arg(cohost_bin().parent().unwrap().join("examples"))
        .arg("--lying-monitor");
    let out = run_cmd(c);
    assert_ne!(
        out.code, 0,
        "ocf-tester must fail a monitor that lies\n{out}"
    );
    assert!(
        out.all()
            .contains("Monitoring a stopped resource should return 7"),
        "{out}"
    );
}

#[test]
fn ocf_codes_for_misconfiguration_and_missing_storage() {
    let h = Harness::new();
    let addr = h.addr(30);
    h.write_config("c.toml", &counter_instance(&h, "oc1", &addr));
    let ocf = |action: &str, inst: &str| {
        let mut c = Command::new(cohost_bin());
        c.args(["ocf", action])
            .env("OCF_RESKEY_instance", inst)
            .env("OCF_RESKEY_config", &h.config)
            .env("OCF_RESKEY_runtime_dir", &h.runtime)
            .env_remove("COHOST_CONFIG")
            .env_remove("COHOST_RUNTIME_DIR");
        run_cmd(c)
    };
    assert_eq!(ocf("validate-all", "oc1").code, 0);
    let out = ocf("validate-all", "nosuch");
    assert_eq!(out.code, 6, "unknown instance is not configured\n{out}");
    assert!(
        out.stderr.contains("ocf-exit-reason:no instance `nosuch`"),
        "{out}"
    );
    assert_eq!(ocf("monitor", "oc1").code, 7);
    assert_eq!(ocf("stop", "oc1").code, 0, "stop of a stopped instance");
    assert_eq!(ocf("frobnicate", "oc1").code, 3);
    let mut c = Command::new(cohost_bin());
    c.args(["ocf", "start"]).env_remove("OCF_RESKEY_instance");
    assert_eq!(run_cmd(c).code, 6, "missing required parameter");
    // The shared disk is not here: monitor says "not running" (7), start
    // fails (1), never "not configured" (6).
    std::fs::remove_dir_all(h.path("oc1/data")).unwrap();
    assert_eq!(ocf("validate-all", "oc1").code, 0);
    assert_eq!(ocf("monitor", "oc1").code, 7);
    let out = ocf("start", "oc1");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("does not exist on this node"), "{out}");
    assert_eq!(
        ocf("monitor", "oc1").code,
        1,
        "a failed start is failed, until stopped"
    );
    assert_eq!(ocf("stop", "oc1").code, 0);
    assert_eq!(ocf("monitor", "oc1").code, 7);
    // A program that is not installed here: 5.
    h.write_config(
        "c.toml",
        &counter_instance(&h, "oc1", &addr).replace(
            &example("counter").display().to_string(),
            "/nonexistent/bin/counter",
        ),
    );
    assert_eq!(ocf("validate-all", "oc1").code, 5);
    // meta-data needs nothing at all.
    let mut c = Command::new(cohost_bin());
    c.args(["ocf", "meta-data"]).env_clear();
    let out = run_cmd(c);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("<resource-agent name=\"instance\""));
}

/// The cohost binary run as an OCF agent: through a symlink
/// `<tmp>/resource.d/cohost/instance`, as Pacemaker runs the packaged one.
struct LinkAgent {
    path: PathBuf,
    config: PathBuf,
    runtime: PathBuf,
}

impl LinkAgent {
    fn new(h: &Harness) -> LinkAgent {
        let dir = h.path("ocf/resource.d/cohost");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("instance");
        std::os::unix::fs::symlink(cohost_bin(), &path).unwrap();
        LinkAgent {
            path,
            config: h.config.clone(),
            runtime: h.runtime.clone(),
        }
    }

    /// The agent's ACTION with the environment Pacemaker gives it.
    fn cmd(&self, action: &str, instance: Option<&str>) -> Command {
        let mut c = Command::new(&self.path);
        c.arg(action)
            .env(
                "OCF_ROOT",
                self.path
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap(),
            )
            .env("OCF_RESKEY_config", &self.config)
            .env("OCF_RESKEY_runtime_dir", &self.runtime)
            .env("OCF_RESKEY_CRM_meta_timeout", "20000")
            .env_remove("OCF_RESKEY_instance")
            .env_remove("COHOST_CONFIG")
            .env_remove("COHOST_RUNTIME_DIR");
        if let Some(id) = instance {
            c.env("OCF_RESKEY_instance", id);
        }
        c
    }

    fn run(&self, action: &str, instance: Option<&str>) -> Out {
        run_cmd(self.cmd(action, instance))
    }
}

#[test]
fn the_binary_as_agent_starts_monitors_stops_and_validates() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = h.addr(35);
    h.write_config("c.toml", &counter_instance(&h, "la1", &addr));
    let agent = LinkAgent::new(&h);
    let id = Some("la1");
    // meta-data: byte for byte what `cohost ocf meta-data` prints, with
    // no environment at all.
    let mut c = agent.cmd("meta-data", None);
    c.env_clear();
    let md = run_cmd(c).ok();
    let mut c = Command::new(cohost_bin());
    c.args(["ocf", "meta-data"]).env_clear();
    let plain = run_cmd(c).ok();
    assert_eq!(md.stdout, plain.stdout, "meta-data through the symlink");
    assert!(
        md.stdout.contains("<resource-agent name=\"instance\""),
        "{md}"
    );

    agent.run("validate-all", id).ok();
    agent.run("monitor", id).code(7);
    agent.run("stop", id).ok();
    // No daemon runs yet: start launches it, then the instance.
    assert!(h.daemon_pid().is_none());
    agent.run("start", id).ok();
    let answer = ask(&format!("{addr}:9003")).expect("the started instance answers");
    assert!(answer.contains(" counter "), "{answer}");
    assert_eq!(h.state("la1"), "running");
    agent.run("monitor", id).ok();
    let mut c = agent.cmd("monitor", id);
    c.env("OCF_CHECK_LEVEL", "10");
    run_cmd(c).ok();
    agent.run("start", id).ok(); // a start of a running one: 0
    agent.run("reload", id).ok();
    let members = h.members("la1");
    agent.run("stop", id).ok();
    assert!(members.iter().all(|p| !alive(*p)), "{members:?}");
    assert!(ask(&format!("{addr}:9003")).is_err());
    agent.run("monitor", id).code(7);
    agent.run("stop", id).ok(); // a stop of a stopped one: 0

    // No action: the usage, as the sh agent answers; an unknown one: 3.
    let out = run_cmd(agent.cmd("", id)).ok();
    assert!(out.stdout.starts_with("usage: cohost ocf"), "{out}");
    let out = run_cmd({
        let mut c = Command::new(&agent.path);
        c.env_clear();
        c
    })
    .ok();
    assert!(out.stdout.starts_with("usage: cohost ocf"), "{out}");
    let out = agent.run("frobnicate", id).code(3);
    assert!(out.stderr.contains("usage: cohost ocf"), "{out}");
}

#[test]
fn the_binary_as_agent_on_a_bad_day() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = h.addr(36);
    h.write_config("c.toml", &counter_instance(&h, "lb1", &addr));
    let agent = LinkAgent::new(&h);

    // The required parameter is missing: 6, except stop (guarantee 9).
    for action in ["start", "monitor", "validate-all"] {
        let out = agent.run(action, None).code(6);
        assert!(
            out.stderr.contains(
                "ocf-exit-reason:the parameter `instance` (OCF_RESKEY_instance) is required"
            ),
            "{out}"
        );
    }
    agent.run("stop", None).ok();

    // An instance the file does not have: 6, named; stop still 0.
    for action in ["validate-all", "start"] {
        let out = agent.run(action, Some("nosuch")).code(6);
        assert!(
            out.stderr.contains("ocf-exit-reason:no instance `nosuch`"),
            "{out}"
        );
    }
    agent.run("stop", Some("nosuch")).ok();

    // No daemon runs: monitor says "not running", stop succeeds, neither
    // launches one.
    agent.run("monitor", Some("lb1")).code(7);
    agent.run("stop", Some("lb1")).ok();
    assert!(
        h.daemon_pid().is_none(),
        "monitor and stop launch no daemon"
    );

    // An instances file that does not parse: 6, with the file named.
    h.write_config("broken.toml", "[instance.x\n");
    let out = agent.run("start", Some("lb1")).code(6);
    assert!(out.stderr.contains("broken.toml"), "{out}");
    std::fs::remove_file(h.config.join("broken.toml")).unwrap();

    // The shared disk is not mounted on this node: monitor 7, start 1.
    std::fs::remove_dir_all(h.path("lb1/data")).unwrap();
    agent.run("monitor", Some("lb1")).code(7);
    let out = agent.run("start", Some("lb1")).code(1);
    assert!(out.stderr.contains("does not exist on this node"), "{out}");
    agent.run("stop", Some("lb1")).ok();
    agent.run("monitor", Some("lb1")).code(7);
}

#[test]
fn the_binary_as_agent_with_a_hung_disk_answers_within_its_timeout() {
    require_root_cgroups();
    let h = Harness::new();
    let fs = HangFs::mount(&h.path("san-backing"), &h.path("san"));
    std::fs::create_dir_all(h.path("san/lh1/data")).unwrap();
    let addr = h.addr(37);
    h.write_config(
        "c.toml",
        &format!(
            "[service.counter]\ncommand = [\"{}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"15s\" }}\n\n[instance.lh1]\nservice = \"counter\"\naddress = \"{addr}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n",
            example("counter").display(),
            h.path("san/lh1/data").display()
        ),
    );
    let agent = LinkAgent::new(&h);
    let id = Some("lh1");
    agent.run("start", id).ok();
    agent.run("stop", id).ok();

    fs.hang();
    // Pacemaker's timeout 9 s: the agent answers within 4 s (5 s less),
    // so that the reason reaches the cluster.
    let mut c = agent.cmd("start", id);
    c.env("OCF_RESKEY_CRM_meta_timeout", "9000");
    let t = std::time::Instant::now();
    let out = run_cmd(c).code(1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "{:?}\n{out}",
        t.elapsed()
    );
    assert!(
        out.stderr.contains("ocf-exit-reason:") && out.stderr.contains("did not answer within 4s"),
        "{out}"
    );
    // Nothing of it runs: stop is 0 at once (no fencing), monitor 7.
    let t = std::time::Instant::now();
    agent.run("stop", id).ok();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    agent.run("monitor", id).code(7);

    // The disk returns: the agent starts it again, no daemon restart.
    fs.go();
    h.wait_for("the stuck check returned", || {
        h.daemon_log().contains("the storage answered again")
    });
    agent.run("start", id).ok();
    assert!(ask(&format!("{addr}:9003")).is_ok());
    agent.run("stop", id).ok();
}

#[test]
fn cohost_run_by_its_name_is_the_plain_cli_even_under_resource_d() {
    require_root_cgroups();
    let h = Harness::new();
    let (a1, a2) = (h.addr(38), h.addr(39));
    let text = counter_instance(&h, "pn1", &a1);
    let second = counter_instance(&h, "pn2", &a2);
    let second = &second[second.find("[instance.").unwrap()..];
    h.write_config("c.toml", &format!("{text}\n{second}"));
    // A binary named cohost inside a provider's directory, found on PATH:
    // the shell (and Command) pass argv[0] `cohost`, without a slash.
    let dir = h.path("ocf/resource.d/cohost");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(cohost_bin(), dir.join("cohost")).unwrap();
    let by_name = |args: &[&str]| {
        let mut c = Command::new("cohost");
        c.args(args)
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.display()),
            )
            .env("COHOST_CONFIG", &h.config)
            .env("COHOST_RUNTIME_DIR", &h.runtime)
            // Were it taken for the agent, `start` would start pn2.
            .env("OCF_RESKEY_instance", "pn2")
            .env("OCF_RESKEY_config", &h.config)
            .env("OCF_RESKEY_runtime_dir", &h.runtime);
        run_cmd(c)
    };
    by_name(&["start", "pn1"]).ok();
    assert_eq!(h.state("pn1"), "running");
    assert_ne!(h.state("pn2"), "running", "pn2 was never asked for");
    by_name(&["status", "pn1"]).ok();
    by_name(&["stop", "pn1"]).ok();
    assert_ne!(h.state("pn1"), "running");
    // By an absolute path outside resource.d/: the plain CLI too.
    let bin = h.path("sbin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(cohost_bin(), bin.join("cohost")).unwrap();
    let out = run_cmd({
        let mut c = Command::new(bin.join("cohost"));
        c.args(["start"]);
        c
    });
    assert_eq!(out.code, 2, "clap: `start` needs an ID\n{out}");
}

#[test]
fn crm_resource_validate_and_force_operations_offline() {
    require_root_cgroups();
    need("crm_resource", "pacemaker-cli-utils");
    let _g = system_lock();
    for agent in [Agent::Binary, Agent::Sh] {
        println!("== agent {agent:?}");
        crm_resource_offline(agent);
    }
}

fn crm_resource_offline(agent: Agent) {
    let _i = install_agent_and_binary(agent);
    let h = Harness::new();
    let addr = h.addr(31);
    h.write_config("c.toml", &counter_instance(&h, "crm1", &addr));
    let crm = |args: &[&str], cib: Option<&Path>| {
        let mut c = Command::new("crm_resource");
        c.args(args);
        if let Some(f) = cib {
            c.env("CIB_file", f);
        }
        run_cmd(c)
    };
    let cfg = format!("config={}", h.config.display());
    let rt = format!("runtime_dir={}", h.runtime.display());
    let base = [
        "--validate",
        "--class",
        "ocf",
        "--provider",
        "cohost",
        "--agent",
        "instance",
    ];
    let mut ok = base.to_vec();
    ok.extend([
        "--option",
        "instance=crm1",
        "--option",
        &cfg,
        "--option",
        &rt,
    ]);
    let out = crm(&ok, None);
    assert_eq!(out.code, 0, "{out}");
    let mut bad = base.to_vec();
    bad.extend([
        "--option",
        "instance=nosuch",
        "--option",
        &cfg,
        "--option",
        &rt,
    ]);
    assert_eq!(crm(&bad, None).code, 6);

    // An offline CIB with a cohost primitive: force-check/start/stop.
    let cib = h.path("cib.xml");
    let empty = run_cmd({
        let mut c = Command::new("cibadmin");
        c.arg("--empty");
        c
    });
    std::fs::write(&cib, &empty.stdout).unwrap();
    let mut c = Command::new("cibadmin");
    c.env("CIB_file", &cib).args([
        "--create",
        "--scope",
        "resources",
        "--xml-text",
        &format!(
            r#"<primitive id="crm1" class="ocf" provider="cohost" type="instance"><instance_attributes id="crm1-ia"><nvpair id="crm1-i" name="instance" value="crm1"/><nvpair id="crm1-c" name="config" value="{}"/><nvpair id="crm1-r" name="runtime_dir" value="{}"/></instance_attributes></primitive>"#,
            h.config.display(),
            h.runtime.display()
        ),
    ]);
    run_cmd(c).ok();
    assert_eq!(crm(&["-r", "crm1", "--force-check"], Some(&cib)).code, 7);
    let out = crm(&["-r", "crm1", "--force-start"], Some(&cib));
    assert_eq!(out.code, 0, "{out}");
    assert!(ask(&format!("{addr}:9003")).is_ok());
    assert_eq!(crm(&["-r", "crm1", "--force-check"], Some(&cib)).code, 0);
    assert_eq!(crm(&["-r", "crm1", "--force-stop"], Some(&cib)).code, 0);
    assert_eq!(crm(&["-r", "crm1", "--force-check"], Some(&cib)).code, 7);
}

/// A live single-node Pacemaker (corosync + pacemakerd by hand), torn
/// down on drop.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn up(dir: &Path) -> Cluster {
        let mut c = Command::new(root().join("tests/peers/pacemaker-up.sh"));
        c.arg(dir);
        let cluster = Cluster {
            dir: dir.to_path_buf(),
        };
        run_cmd(c).ok();
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run_cmd({
            let mut c = Command::new("cibadmin");
            c.args([
                "--delete",
                "--scope",
                "resources",
                "--xml-text",
                r#"<primitive id="pcmk1"/>"#,
            ]);
            c
        });
        let mut c = Command::new(root().join("tests/peers/pacemaker-down.sh"));
        c.arg(&self.dir);
        let _ = run_cmd(c);
    }
}

fn crm_out(args: &[&str]) -> Out {
    let mut c = Command::new("crm_resource");
    c.args(args);
    run_cmd(c)
}

#[test]
fn pacemaker_starts_monitors_recovers_and_stops_an_instance() {
    require_root_cgroups();
    need("pacemakerd", "pacemaker");
    need("corosync", "corosync");
    let _g = system_lock();
    // The packaged agent: the binary through a symlink.
    let _i = install_agent_and_binary(Agent::Binary);
    let h = Harness::new();
    let addr = h.addr(32);
    let svc = format!("{addr}:9003");
    h.write_config("c.toml", &counter_instance(&h, "pcmk1", &addr));
    let _cluster = Cluster::up(&h.path("pcmk"));
    let xml = format!(
        r#"<primitive id="pcmk1" class="ocf" provider="cohost" type="instance"><instance_attributes id="pcmk1-ia"><nvpair id="pcmk1-i" name="instance" value="pcmk1"/><nvpair id="pcmk1-c" name="config" value="{}"/><nvpair id="pcmk1-r" name="runtime_dir" value="{}"/></instance_attributes><operations><op id="pcmk1-mon" name="monitor" interval="2s" timeout="20s"/><op id="pcmk1-start" name="start" interval="0s" timeout="60s"/><op id="pcmk1-stop" name="stop" interval="0s" timeout="60s"/></operations></primitive>"#,
        h.config.display(),
        h.runtime.display()
    );
    run_cmd({
        let mut c = Command::new("cibadmin");
        c.args(["--create", "--scope", "resources", "--xml-text", &xml]);
        c
    })
    .ok();
    crm_out(&["--wait", "--timeout", "60s"]).ok();
    let loc = crm_out(&["-r", "pcmk1", "--locate"]);
    assert!(loc.stdout.contains("is running on"), "{loc}");
    let first = ask(&svc).expect("Pacemaker started the instance: it answers");
    assert!(first.contains(" counter "), "{first}");

    // Kill the service behind the cluster's back: its recurring monitor
    // sees it (1) and Pacemaker recovers it (stop, start).
    let pid = h.status_json("pcmk1")["processes"][0]["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill(2) of the instance's process we just looked up.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_for("Pacemaker to record the failure", || {
        let f = run_cmd({
            let mut c = Command::new("crm_failcount");
            c.args(["-r", "pcmk1", "-G", "-N", "node1"]);
            c
        });
        f.stdout.contains("value=1") || f.stdout.contains("value=2")
    });
    h.wait_for("the instance to run again with a new process", || {
        h.state("pcmk1") == "running"
            && h.status_json("pcmk1")["processes"][0]["pid"].as_i64() != Some(pid as i64)
            && ask(&svc).is_ok()
    });

    // target-role=Stopped: stopped, nothing left.
    let members = h.members("pcmk1");
    crm_out(&[
        "-r",
        "pcmk1",
        "--meta",
        "-p",
        "target-role",
        "-v",
        "Stopped",
    ])
    .ok();
    crm_out(&["--wait", "--timeout", "60s"]).ok();
    assert!(
        crm_out(&["-r", "pcmk1", "--locate"])
            .all()
            .contains("NOT running")
    );
    assert!(
        members.iter().all(|p| !alive(*p)),
        "no process left: {members:?}"
    );
    assert!(ask(&svc).is_err());
    h.run(&["monitor", "pcmk1"]).code(7);
}

#[test]
fn lsb_init_script_actions_and_status_codes() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = h.addr(33);
    h.write_config("c.toml", &counter_instance(&h, "lsb01", &addr));
    let initd = h.path("init.d");
    std::fs::create_dir_all(&initd).unwrap();
    for name in ["lsb01", "nosuch"] {
        std::fs::copy(
            root().join("examples/init.d/cohost-instance"),
            initd.join(name),
        )
        .unwrap();
    }
    let script = |name: &str, action: &str| {
        let mut c = Command::new(initd.join(name));
        c.arg(action)
            .env("COHOST_BIN", cohost_bin())
            .env("COHOST_CONFIG", &h.config)
            .env("COHOST_RUNTIME_DIR", &h.runtime);
        run_cmd(c)
    };
    assert_eq!(script("lsb01", "status").code, 3, "stopped");
    script("lsb01", "start").ok();
    script("lsb01", "start").ok(); // start of a running one: 0
    assert_eq!(script("lsb01", "status").code, 0, "running");
    let pid = h.status_json("lsb01")["processes"][0]["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill(2) of the instance's process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_for("lsb01 failed", || h.state("lsb01") == "failed");
    let out = script("lsb01", "status");
    assert_eq!(out.code, 1, "dead with state left\n{out}");
    assert!(out.stdout.contains("killed by signal 9"), "{out}");
    script("lsb01", "restart").ok();
    assert_eq!(script("lsb01", "status").code, 0);
    script("lsb01", "stop").ok();
    script("lsb01", "stop").ok(); // stop of a stopped one: 0
    assert_eq!(script("lsb01", "status").code, 3);
    assert_eq!(script("nosuch", "status").code, 4, "unknown instance");
    assert_eq!(script("lsb01", "bogus").code, 2);
}

#[test]
fn lsb_header_passes_insserv_and_shellcheck() {
    need("insserv", "insserv");
    need("shellcheck", "shellcheck");
    let h = Harness::new();
    // A layout insserv accepts: init.d plus empty rc?.d siblings.
    let base = h.path("lsb");
    for d in [
        "init.d", "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d",
    ] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy(
        root().join("examples/init.d/cohost-instance"),
        base.join("init.d/cohost-instance"),
    )
    .unwrap();
    let out = run_cmd({
        let mut c = Command::new("insserv");
        c.args(["-n", "-v", "-p"])
            .arg(base.join("init.d"))
            .arg("-i")
            .arg(base.join("deps"))
            .arg("cohost-instance");
        c
    });
    assert_eq!(out.code, 0, "{out}");
    let text = out.all();
    for bad in ["warning", "missing LSB tags", "overlapping", "FATAL"] {
        assert!(!text.contains(bad), "insserv complains ({bad})\n{out}");
    }
    let sc = run_cmd({
        let mut c = Command::new("shellcheck");
        c.args(["-s", "sh"])
            .arg(root().join("examples/init.d/cohost-instance"))
            .arg(root().join("examples/ocf/cohost"));
        c
    });
    assert_eq!(sc.code, 0, "{sc}");
}

#[test]
fn systemd_units_verify_without_any_output() {
    need("systemd-analyze", "systemd");
    let _g = system_lock();
    let mut i = Installed::new();
    // The units name /usr/local/sbin/cohost; verify checks that it exists.
    i.put(&cohost_bin(), "/usr/local/sbin/cohost", 0o755);
    let h = Harness::new();
    let dir = h.path("units");
    std::fs::create_dir_all(&dir).unwrap();
    for u in ["cohost.service", "cohost@.service"] {
        std::fs::copy(root().join("examples/systemd").join(u), dir.join(u)).unwrap();
    }
    let out = run_cmd({
        let mut c = Command::new("systemd-analyze");
        c.args(["verify", "--man=no"])
            .arg(dir.join("cohost.service"))
            .arg(dir.join("cohost@.service"));
        c
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
        "systemd-analyze must print nothing (it exits 0 on unknown keys)\n{out}"
    );
}

#[test]
fn the_daemon_tells_systemd_it_is_ready() {
    // Type=notify: READY=1 on $NOTIFY_SOCKET once the socket listens.
    use std::os::unix::net::UnixDatagram;
    let mut h = Harness::new();
    h.write_config("c.toml", &counter_instance(&h, "sd1", &h.addr(34)));
    let sock_path = h.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    h.env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    h.run(&["daemon"]).ok();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(
        msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", h.daemon_pid().unwrap())),
        "{msg}"
    );
}

#[test]
fn partial_multi_process_instance_is_named_by_monitor() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config(
        "m.toml",
        &format!(
            "[service.pm4data]\n[[service.pm4data.process]]\nname = \"xmserver\"\ncommand = [\"{t}\", \"sleep\"]\n[[service.pm4data.process]]\nname = \"xmofts\"\ncommand = [\"{t}\", \"sleep\"]\ncount = 3\n\n[instance.pm01]\nservice = \"pm4data\"\n",
            t = example("testsvc").display()
        ),
    );
    h.run(&["start", "pm01"]).ok();
    let st = h.status_json("pm01");
    let procs = st["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 4, "{st}");
    let victim = procs.iter().find(|p| p["name"] == "xmofts.2").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill(2) of one of the instance's processes.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    h.wait_for("pm01 failed", || h.state("pm01") == "failed");
    let out = h.run(&["monitor", "pm01"]).code(1);
    assert!(
        out.stderr.contains("partial: xmofts 2/3")
            && out.stderr.contains("xmofts.2 killed by signal 9"),
        "{out}"
    );
}

#[test]
fn forking_service_process_count_check_reports_partial() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config(
        "f.toml",
        &format!(
            "[service.xm]\ntype = \"forking\"\ncommand = [\"{}\", \"daemons\", \"xmofts\", \"3\"]\nready = {{ process = \"xmofts\", count = 3, timeout = \"20s\" }}\nhealth = [{{ process = \"xmofts\", count = 3, interval = \"1h\" }}]\n\n[instance.xm1]\nservice = \"xm\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "xm1"]).ok();
    h.run(&["monitor", "xm1"]).code(0);
    let members = h.members("xm1");
    assert_eq!(members.len(), 3, "{members:?}");
    // SAFETY: kill(2) of one daemon of the instance.
    unsafe { libc::kill(members[0], libc::SIGKILL) };
    h.wait_for("the daemon to be gone", || !alive(members[0]));
    // Process counts are evaluated at every monitor, whatever the interval.
    let out = h.run(&["monitor", "xm1"]).code(1);
    assert!(out.stderr.contains("partial: xmofts 2/3"), "{out}");
    h.run(&["monitor", "xm1", "--depth", "0"]).code(1);
    let st = h.status_json("xm1");
    assert_eq!(st["healthy"], false, "{st}");
}
