#!/usr/bin/env bash
# Keeps one program running, the way systemd's Restart=always does.
#
#   scripts/supervise.sh DIR NAME [--log-max BYTES] -- CMD...
#
# Runs CMD, waits for it (blocked in `wait`, never polling), and when it exits
# for any reason starts it again once it is gone (reaped), after a backoff:
# 100 ms, doubling at each quick death up to 5 s, back to 100 ms once a run has
# lasted 10 s. What it records in DIR:
#   NAME.pid        "PID STARTTIME" of the running CMD (STARTTIME: field 22 of
#                   /proc/PID/stat, so a reused PID is never taken for it)
#   NAME.restarts   how many times CMD was started again
#   NAME.exit       how the last run ended ("exit 1", "signal 9") and when (epoch s)
#   NAME.log        CMD's stdout and stderr and this script's notes, capped at
#                   --log-max bytes (default 8 MiB) with one rotated file
#                   NAME.log.1, written by one tapestry-logcap for the life of
#                   this script
#   NAME.logcap.pid "PID STARTTIME" of that tapestry-logcap (it exits once the
#                   last writer is gone)
# SIGTERM or SIGINT: passes SIGTERM to CMD, waits for it to be gone, exits 0.
# SIGUSR2: a planned upgrade without a gap. Starts `CMD... --upgrade` next to
# the running CMD (tapestryd: the new process takes the old one's descriptors
# over its control socket, and the old one exits 0). When the old one has
# exited 0 and the new one runs, the new one is the supervised CMD from then
# on: no restart, no backoff, NAME.pid names it. If the hand-off fails, the
# old one (if still running) stays supervised, and a new one still running
# when the old one ends is stopped before CMD is started again as usual.
# The caller records this script's own PID and start time (lab.sh: supervise.pid).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"

BACKOFF_MIN_MS=100
BACKOFF_MAX_MS=5000
# A run at least this long resets the backoff.
STABLE_MS=10000

[ $# -ge 4 ] || { usage_of "${BASH_SOURCE[0]}" >&2; exit 2; }
DIR=$1
NAME=$2
shift 2
LOG_MAX=$((8 * 1024 * 1024))
if [ "$1" = --log-max ]; then LOG_MAX=$2; shift 2; fi
[ "$1" = -- ] || { usage_of "${BASH_SOURCE[0]}" >&2; exit 2; }
shift
LOGCAP=${LOGCAP:-$REPO/target/release/tapestry-logcap}

child=""
stopping=""
# The `--upgrade` process while a hand-off is under way.
next=""
upgrade_asked=""
on_stop() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
    if [ -n "$next" ]; then kill -TERM "$next" 2>/dev/null || true; fi
}
trap on_stop TERM INT
on_upgrade() { upgrade_asked=1; }
trap on_upgrade USR2

# ended STATUS: "exit N" or "signal N" for a status `wait` returned.
ended() { if [ "$1" -gt 128 ]; then echo "signal $(($1 - 128))"; else echo "exit $1"; fi; }

# record PID FILE: "PID STARTTIME" into FILE, replaced whole.
record() {
    echo "$1 $(proc_starttime "$1")" >"$2.tmp"
    mv -f "$2.tmp" "$2"
}

# One log writer for every run: it caps and rotates the log, and this script's
# own notes (stderr) go there too.
exec {log}> >(exec "$LOGCAP" --max-bytes "$LOG_MAX" "$DIR/$NAME.log")
logcap=$!
record "$logcap" "$DIR/$NAME.logcap.pid"
exec 2>&"$log"

restarts=0
backoff=$BACKOFF_MIN_MS
echo 0 >"$DIR/$NAME.restarts"
while [ -z "$stopping" ]; do
    started=$(now_ms)
    if [ -n "$next" ]; then
        # The upgraded process, already running: adopted, not started.
        child=$next
        next=""
    else
        # CMD gets the log as stdout and stderr only: the log's own descriptor
        # is closed for it, or every process CMD starts would hold the log open
        # and the log writer would never see its end (a TERM would then hang).
        "$@" </dev/null >&"$log" 2>&1 {log}>&- &
        child=$!
    fi
    record "$child" "$DIR/$NAME.pid"
    # `wait` returns early when a trapped signal arrives: wait again until CMD
    # is reaped, so that it is gone before anything else starts.
    while :; do
        rc=0
        if [ -n "$next" ]; then
            # During an upgrade: whichever of the two ends first.
            which=""
            wait -n -p which "$child" "$next" || rc=$?
            if [ -n "$which" ] && [ "$which" = "$next" ]; then
                echo "supervise: upgrade of $NAME failed ($next: $(ended "$rc")); $child still runs" >&2
                next=""
                continue
            fi
        else
            wait "$child" || rc=$?
        fi
        if [ -n "$upgrade_asked" ]; then
            upgrade_asked=""
            if [ -z "$next" ] && [ -z "$stopping" ] && kill -0 "$child" 2>/dev/null; then
                "$@" --upgrade </dev/null >&"$log" 2>&1 {log}>&- &
                next=$!
                echo "supervise: upgrade asked: $NAME $child hands over to $next" >&2
            fi
        fi
        kill -0 "$child" 2>/dev/null || break
    done
    old=$child
    child=""
    echo "$(ended "$rc") $(date +%s)" >"$DIR/$NAME.exit"
    if [ -n "$next" ]; then
        if [ -z "$stopping" ] && [ "$rc" -eq 0 ] && kill -0 "$next" 2>/dev/null; then
            echo "supervise: $NAME $old handed over to $next; supervising $next" >&2
            continue
        fi
        echo "supervise: upgrade of $NAME failed ($old: $(ended "$rc")); stopping $next" >&2
        kill -TERM "$next" 2>/dev/null || true
        wait "$next" 2>/dev/null || true
        next=""
    fi
    [ -z "$stopping" ] || break
    ran=$(($(now_ms) - started))
    if [ "$ran" -ge "$STABLE_MS" ]; then backoff=$BACKOFF_MIN_MS; fi
    echo "supervise: $NAME ended ($(ended "$rc")) after ${ran} ms; starting it again in ${backoff} ms" >&2
    # The backoff, in the background so that SIGTERM interrupts it.
    sleep "$(printf '%d.%03d' $((backoff / 1000)) $((backoff % 1000)))" &
    wait $! || true
    [ -z "$stopping" ] || break
    backoff=$((backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2))
    restarts=$((restarts + 1))
    echo "$restarts" >"$DIR/$NAME.restarts"
done
rm -f "$DIR/$NAME.pid"
echo "supervise: $NAME stopped" >&2
# The last writer gone, the log writer flushes and exits; it is waited for, so
# that nothing of this script outlives it.
exec 2>/dev/null {log}>&-
wait "$logcap" || true
rm -f "$DIR/$NAME.logcap.pid"
