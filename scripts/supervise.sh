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
on_stop() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap on_stop TERM INT

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
    "$@" </dev/null >&"$log" 2>&1 &
    child=$!
    record "$child" "$DIR/$NAME.pid"
    # `wait` returns early when a trapped signal arrives: wait again until CMD
    # is reaped, so that it is gone before anything else starts.
    while :; do
        rc=0
        wait "$child" || rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    child=""
    echo "$(ended "$rc") $(date +%s)" >"$DIR/$NAME.exit"
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
