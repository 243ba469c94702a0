#!/bin/bash
# Adapter: cohost (one daemon, one cgroup per instance, thin CLI client).
# Protocol: see ../README.md.  Env: BENCH_N BENCH_PORT BENCH_LISTENER BENCH_WORK
# BENCH_PROBE, and COHOST_BIN (the cohost binary; run.sh sets it).
set -euo pipefail
W=$BENCH_WORK
COHOST=${COHOST_BIN:-cohost}
CFG=$W/instances.d
RT=$W/run
# The OCF agent as packaged (what Pacemaker runs): the cohost binary itself
# through a symlink RESOURCE.D/cohost/instance (setup makes it). ocf-sh-*:
# the sh agent, examples/ocf/cohost (one sh, then exec cohost).
# COHOST_BENCH_OCF_AGENT=sh makes the ocf-* actions use the sh agent too
# (as results before the symlink measured them).
LINK=$W/ocf/resource.d/cohost/instance
SH_AGENT=$(cd "$(dirname "$0")/../../examples/ocf" && pwd)/cohost
AGENT=$LINK
[ "${COHOST_BENCH_OCF_AGENT:-link}" = sh ] && AGENT=$SH_AGENT
c() { printf '%s\n' "$COHOST" --config "$CFG" --runtime-dir "$RT" "$@"; }
case "${1:-}" in
setup)
    rm -rf "$W"; mkdir -p "$CFG"
    {
        # No readiness check (like runit and s6: started = exec'd); every
        # instance starts with the daemon (the harness's cold start).
        # shellcheck disable=SC2016 # ${address} is for cohost, not the shell
        printf '[service.listener]\ncommand = ["%s", "${address}", "${port}"]\n' "$BENCH_LISTENER"
        # COHOST_BENCH_FORCE_BIND=1: the same with force_bind (force_bind_ab.sh).
        [ "${COHOST_BENCH_FORCE_BIND:-0}" = 1 ] && printf 'force_bind = true\n'
        for i in $(seq 1 "$BENCH_N"); do
            printf '\n[instance.inst%d]\nservice = "listener"\naddress = "127.10.%d.%d"\nport = %d\nautostart = true\n' \
                "$i" $(( (i - 1) / 250 )) $(( (i - 1) % 250 + 1 )) "$BENCH_PORT"
        done
    } > "$CFG/bench.toml"
    mkdir -p "$(dirname "$LINK")"
    ln -s "$(command -v "$COHOST")" "$LINK"
    ;;
argv)
    case "$2" in
    daemon)    c daemon --foreground ;;
    start-all) c up ;;
    stop-all)  c down ;;
    status)    c status "inst$3" ;;
    monitor)   c monitor "inst$3" ;;
    # The default build (`cargo build --release`), when run.sh built it.
    monitor-default)
        [ -n "${COHOST_DEFAULT_BIN:-}" ] || exit 2
        printf '%s\n' "$COHOST_DEFAULT_BIN" --config "$CFG" --runtime-dir "$RT" monitor "inst$3" ;;
    # Per instance, N at once (probe -f: %i is the instance number; leading
    # NAME=VALUE words are that command's environment).
    start-each) c start 'inst%i' ;;
    stop-each)  c stop 'inst%i' ;;
    ocf-start-each | ocf-stop-each | ocf-monitor | ocf-sh-start-each | ocf-sh-stop-each | ocf-sh-monitor)
        i='%i'; agent=$AGENT
        case "$2" in *monitor) i=$3 ;; esac
        case "$2" in ocf-sh-*) agent=$SH_AGENT ;; esac
        printf '%s\n' "OCF_RESKEY_instance=inst$i" "OCF_RESKEY_config=$CFG" \
            "OCF_RESKEY_runtime_dir=$RT" "COHOST_BIN=$COHOST" "$agent"
        case "$2" in *start-each) echo start ;; *stop-each) echo stop ;; *) echo monitor ;; esac ;;
    # Timed once with N instances running (--timings).
    validate)  c validate ;;
    reload)    c reload ;;
    list-json) c list --json ;;
    *) echo "unknown action $2" >&2; exit 2 ;;
    esac
    ;;
shutdown)   # stops every instance; the daemon exits when they are gone
    "$COHOST" --config "$CFG" --runtime-dir "$RT" shutdown >/dev/null
    ;;
cleanup)
    rm -rf "$W"
    ;;
*) echo "usage: $0 setup|argv ACTION [I]|shutdown PID|cleanup" >&2; exit 2 ;;
esac
