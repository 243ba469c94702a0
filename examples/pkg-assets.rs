//! Generates what the Debian package ships besides the binary, from the
//! sources they describe, so none of it can drift:
//!
//! * `cohost.8` from the clap definitions (`cohost::cli::Cli`), with every
//!   subcommand, its options and the exit statuses;
//! * `cohost-instances.d.5` from `instances.d/reference.toml`;
//! * bash, zsh and fish completions from clap_complete, where an instance ID
//!   argument completes from `cohost __ids` (the running daemon's instances,
//!   else the instances file's);
//! * `reference.toml` for /etc/cohost/instances.d: the reference file with
//!   every line commented out, so it loads nothing until edited.
//!
//! A separate program rather than a subcommand: clap_mangen and
//! clap_complete are dev-dependencies, so the `cohost` binary (which
//! cluster software runs every few seconds) carries none of this.
//!
//!     cargo run --example pkg-assets -- OUTDIR     (examples/debian/build-deb.sh does)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_complete::Shell;

const REFERENCE: &str = include_str!("../instances.d/reference.toml");

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: pkg-assets OUTDIR");
        std::process::exit(2)
    }));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| die(&out, e));
    let mut cmd = cohost::cli::Cli::command();
    cmd.build();
    let completable = without_hidden(cohost::cli::Cli::command());
    write(&out.join("cohost.8"), &man8(&cmd));
    write(&out.join("cohost-instances.d.5"), &man5(REFERENCE));
    write(&out.join("reference.toml"), &commented(REFERENCE));
    for (shell, name) in [
        (Shell::Bash, "cohost.bash"),
        (Shell::Zsh, "_cohost"),
        (Shell::Fish, "cohost.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut completable.clone(), "cohost", &mut buf);
        let script = String::from_utf8(buf).expect("completion scripts are UTF-8");
        write(&out.join(name), &with_ids(shell, &completable, &script));
    }
}

fn die(p: &Path, e: std::io::Error) -> ! {
    eprintln!("pkg-assets: {}: {e}", p.display());
    std::process::exit(1)
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap_or_else(|e| die(p, e));
}

// ---------------------------------------------------------------- man pages

/// roff-escapes running text (groff_man(7): backslash, hyphens, and a
/// control character at the start of a line).
fn esc(s: &str) -> String {
    let mut o = String::new();
    for line in s.split('\n') {
        if !o.is_empty() {
            o.push('\n');
        }
        if line.starts_with('.') || line.starts_with('\'') {
            o.push_str("\\&");
        }
        o.push_str(&line.replace('\\', "\\e").replace('-', "\\-"));
    }
    o
}

/// The .TH line of a page written by hand (cohost-instances.d(5)).
fn header(name: &str, section: &str, title: &str) -> String {
    format!(
        ".TH {} {section} \"\" \"cohost {}\" \"{title}\"\n",
        name.to_uppercase(),
        env!("CARGO_PKG_VERSION")
    )
}

/// An option or positional as `\fB--name\fR \fIVALUE\fR`.
fn arg_term(a: &Arg) -> String {
    let value = || {
        a.get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
    };
    let takes = !matches!(
        a.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count | ArgAction::Help
    );
    if a.is_positional() {
        return format!("\\fI{}\\fR", esc(&value()));
    }
    let mut names = Vec::new();
    if let Some(s) = a.get_short() {
        names.push(format!("\\fB\\-{s}\\fR"));
    }
    if let Some(l) = a.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
    }
    let mut t = names.join(", ");
    if takes {
        let _ = write!(t, " \\fI{}\\fR", esc(&value()));
    }
    t
}

fn arg_help(a: &Arg) -> String {
    let mut h = a
        .get_long_help()
        .or(a.get_help())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let pv: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let takes_value = !matches!(a.get_action(), ArgAction::SetTrue | ArgAction::Help);
    if takes_value && !pv.is_empty() {
        let _ = write!(h, " One of: {}.", pv.join(", "));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.is_empty() {
        let _ = write!(h, " Default: {}.", defaults.join(", "));
    }
    if let Some(env) = a.get_env() {
        let _ = write!(h, " Environment: {}.", env.to_string_lossy());
    }
    esc(h.trim())
}

/// A subcommand's own arguments (the global ones are in OPTIONS).
fn args_list(cmd: &Command) -> String {
    let mut o = String::new();
    for a in cmd.get_arguments() {
        if a.is_hide_set() || a.is_global_set() || matches!(a.get_id().as_str(), "help" | "version")
        {
            continue;
        }
        let _ = write!(o, ".TP\n{}\n{}\n", arg_term(a), arg_help(a));
    }
    o
}

fn usage(cmd: &mut Command) -> String {
    let u = cmd.render_usage().to_string();
    u.trim_start_matches("Usage:").trim().to_string()
}

fn man8(cmd: &Command) -> String {
    let mut cmd = cmd.clone();
    // clap_mangen renders the page's head from the definitions: title,
    // NAME, SYNOPSIS, DESCRIPTION (long_about), OPTIONS (the global ones).
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("cohost {}", env!("CARGO_PKG_VERSION")));
    let mut head = Vec::new();
    (|| -> std::io::Result<()> {
        man.render_title(&mut head)?;
        man.render_name_section(&mut head)?;
        man.render_synopsis_section(&mut head)?;
        man.render_description_section(&mut head)?;
        head.extend_from_slice(format!(".PP\n{}\n", esc(DESCRIPTION)).as_bytes());
        man.render_options_section(&mut head)
    })()
    .expect("rendering into memory");
    let mut o = String::from_utf8(head).expect("roff is UTF-8");
    // Each subcommand with its usage, description and options (clap_mangen
    // would list only their names).
    o.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands_mut() {
        if sub.is_hide_set() {
            continue;
        }
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let u = usage(sub);
        let _ = write!(
            o,
            ".SS {}\n.B {}\n.PP\n{}\n",
            esc(sub.get_name()),
            esc(&u),
            esc(&about)
        );
        let list = args_list(sub);
        if !list.is_empty() {
            let _ = write!(o, ".RS\n{list}.RE\n");
        }
    }
    o.push_str(MAN8_TAIL);
    o
}

const DESCRIPTION: &str = "A command that needs the supervisor sends one request over its control \
socket in the runtime dir; start (and stop, status or monitor when the runtime state says an \
instance may still run) launches the supervisor first when none runs. Under systemd the \
supervisor is started as cohost.service (or, for another runtime dir, as a transient unit), \
never inside the calling unit. validate, env, exec, logs and import read the instances file \
themselves.";

const MAN8_TAIL: &str = r#".SH EXIT STATUS
.TP
.B 0
success; for \fBmonitor\fR: running and healthy
.TP
.B 1
failure, with the reason on standard error; for \fBmonitor\fR: failed, partial or unhealthy; for \fBverify\fR: a violation, each named
.TP
.B 2
invalid instances file (each problem as FILE:LINE: message) or unknown instance
.TP
.B 3
\fBstatus\fR: the instance is not running
.TP
.B 7
\fBmonitor\fR: cleanly stopped; \fBverify\fR and \fBexec \-\-join\fR: the instance is not running
.PP
\fBocf\fR and \fBlsb\fR answer with the OCF and LSB codes of their specifications.
.SH ENVIRONMENT
.TP
.B COHOST_CONFIG
instances directory, as \fB\-\-config\fR
.TP
.B COHOST_RUNTIME_DIR
runtime dir, as \fB\-\-runtime\-dir\fR
.TP
.B OCF_RESKEY_instance\fR, \fBOCF_RESKEY_config\fR, \fBOCF_RESKEY_runtime_dir
parameters of \fBcohost ocf\fR
.SH FILES
.TP
.I /etc/cohost/instances.d/*.toml
the instances file, see \fBcohost\-instances.d\fR(5)
.TP
.I /run/cohost
default runtime dir: control socket, state, daemon.log, logs of instances without paths.log
.TP
.I /lib/systemd/system/cohost.service\fR, \fI/lib/systemd/system/cohost@.service
the supervisor and a start/stop handle per instance
.TP
.I /usr/lib/ocf/resource.d/cohost/instance
the OCF resource agent, ocf:cohost:instance: a symlink to
.IR /usr/sbin/cohost ,
which answers as \fBcohost ocf\fR \fIACTION\fR when run under a path
.IR OCF_ROOT /resource.d/ PROVIDER / TYPE
.TP
.I /usr/share/doc/cohost/examples/cohost-instance
an LSB init script for one instance
.TP
.I /usr/share/doc/cohost/examples/ocf-agent.sh
the same OCF agent as a POSIX sh script that runs \fBcohost ocf\fR \fIACTION\fR,
for a cohost binary elsewhere (\fBCOHOST_BIN\fR)
.SH SEE ALSO
\fBcohost\-instances.d\fR(5), \fBsystemctl\fR(1), \fBcrm\fR(8), \fBpcs\fR(8)
"#;

/// cohost-instances.d(5): the reference file's header as the description,
/// and each of its `# ----` parts as a subsection, verbatim.
fn man5(reference: &str) -> String {
    let mut parts = reference
        .split("# --------------------------------------------------------------------------\n");
    let head = parts.next().unwrap_or_default();
    let mut o = header("cohost-instances.d", "5", "File Formats");
    o.push_str(
        ".SH NAME\ncohost\\-instances.d \\- instances file of the cohost supervisor\n\
         .SH SYNOPSIS\n.I /etc/cohost/instances.d/*.toml\n.SH DESCRIPTION\n",
    );
    let prose: Vec<&str> = head
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l).trim_start())
        .collect();
    for para in prose.join("\n").split("\n\n") {
        let para = para.trim();
        if !para.is_empty() {
            let _ = write!(o, ".PP\n{}\n", esc(para));
        }
    }
    o.push_str(
        ".SH REFERENCE\nEvery field, with its meaning in the comments (this is \
                /usr/share/doc/cohost/reference.toml, which passes \\fBcohost validate\\fR).\n",
    );
    for part in parts {
        let (title, body) = part.split_once('\n').unwrap_or((part, ""));
        let title = title.trim_start_matches('#').trim();
        let _ = write!(
            o,
            ".SS {}\n.nf\n.ft CR\n{}\n.ft\n.fi\n",
            esc(title),
            esc(body.trim_end())
        );
    }
    o.push_str(
        ".SH FILES\n.TP\n.I /etc/cohost/instances.d/reference.toml\n\
         the same reference, commented out: it loads nothing until edited\n\
         .SH SEE ALSO\n\\fBcohost\\fR(8)\n",
    );
    o
}

/// The reference with every line a comment: settings as `#key = ...`,
/// so uncommenting one is deleting one character.
fn commented(reference: &str) -> String {
    let mut o = String::from(
        "# Installed by the cohost package. This file loads nothing until edited:\n\
         # every line is a comment. Uncomment what you need (a setting is `#key`,\n\
         # delete the `#`), or write your own *.toml files beside it. Check the\n\
         # directory with `cohost validate`; every field: man cohost-instances.d.\n#\n",
    );
    for line in reference.lines() {
        if line.is_empty() || line.starts_with('#') {
            o.push_str(line);
        } else {
            o.push('#');
            o.push_str(line);
        }
        o.push('\n');
    }
    o
}

// ---------------------------------------------------------------- completions

/// The command without its hidden subcommands (`__ids`), which
/// clap_complete would otherwise offer.
fn without_hidden(cmd: Command) -> Command {
    let mut bare = Command::new("cohost")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cmd.get_about().cloned().unwrap_or_default())
        .subcommand_required(true)
        .args(cmd.get_arguments().cloned());
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        bare = bare.subcommand(s.clone());
    }
    bare
}

/// Subcommands whose first positional is an instance ID, and the options
/// that take a value (the word after them is not an ID).
fn id_commands(cmd: &Command) -> (Vec<String>, Vec<String>) {
    let mut subs = Vec::new();
    let mut valued = std::collections::BTreeSet::new();
    for a in cmd.get_arguments() {
        value_flags(a, &mut valued);
    }
    for s in cmd.get_subcommands() {
        if s.get_positionals()
            .next()
            .is_some_and(|a| a.get_id() == "id")
        {
            subs.push(s.get_name().to_string());
        }
        for a in s.get_arguments() {
            value_flags(a, &mut valued);
        }
    }
    (subs, valued.into_iter().collect())
}

fn value_flags(a: &Arg, out: &mut std::collections::BTreeSet<String>) {
    if a.is_positional() || matches!(a.get_action(), ArgAction::SetTrue | ArgAction::Help) {
        return;
    }
    if let Some(l) = a.get_long() {
        out.insert(format!("--{l}"));
    }
    if let Some(c) = a.get_short() {
        out.insert(format!("-{c}"));
    }
}

/// Adds instance-ID completion to a clap_complete script: the first word
/// after a subcommand of [`id_commands`] completes from `cohost __ids`
/// (the running daemon's instances, else the instances file's).
fn with_ids(shell: Shell, cmd: &Command, script: &str) -> String {
    let ids = "cohost __ids 2>/dev/null";
    let (subs, valued) = id_commands(cmd);
    match shell {
        // clap's bash function offers only options there: a wrapper answers
        // IDs at that word and leaves everything else to it.
        Shell::Bash => {
            let wrapper = format!(
                r#"
# Instance IDs after {subs}.
_cohost_ids() {{
    local i sub="" cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
        {valued}) ((i++)) ;;
        -*) ;;
        *) sub=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    if [[ $cur != -* && $i -lt $COMP_CWORD ]]; then
        case "$prev" in {valued}) _cohost "$@"; return ;; esac
        local j words=0
        for ((j = i + 1; j < COMP_CWORD; j++)); do
            case "${{COMP_WORDS[j]}}" in {valued}) ((j++)) ;; -*) ;; *) ((words++)) ;; esac
        done
        case "$sub" in
        {alts})
            if [[ $words -eq 0 ]]; then
                COMPREPLY=($(compgen -W "$({ids})" -- "$cur"))
                return 0
            fi ;;
        esac
    fi
    _cohost "$@"
}}
"#,
                subs = subs.join(", "),
                valued = valued.join("|"),
                alts = subs.join("|"),
            );
            let s = script.replace("complete -F _cohost ", "complete -F _cohost_ids ");
            assert!(
                s.contains("complete -F _cohost_ids"),
                "bash: no complete line"
            );
            let at = s
                .rfind("if [[ \"${BASH_VERSINFO")
                .expect("bash: version test");
            format!("{}{wrapper}{}", &s[..at], &s[at..])
        }
        Shell::Zsh => {
            let s = script.replace(":id:_default", ":id:_cohost_ids");
            assert!(s.contains("_cohost_ids"), "zsh: no id argument found");
            format!(
                "{s}\n(( $+functions[_cohost_ids] )) ||\n_cohost_ids() {{\n    local -a ids\n    \
                 ids=(${{(f)\"$({ids})\"}})\n    _describe -t instances 'instance' ids\n}}\n"
            )
        }
        Shell::Fish => format!(
            "{script}complete -c cohost -n \"__fish_cohost_using_subcommand {}\" -f -a \"({ids})\" \
             -d instance\n",
            subs.join(" ")
        ),
        _ => script.to_string(),
    }
}
