#!/usr/bin/env bash
# Stop what scripts/slurm/start.sh started: slurmd, slurmctld, and munged if start.sh
# launched it; remove the slurm.conf it wrote. Keeps $SEQSETVAE_SLURM_DIR (logs).
set -euo pipefail

STATE_DIR=${SEQSETVAE_SLURM_DIR:-/tmp/seqsetvae-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by seqsetvae scripts/slurm/start.sh"

stop_pidfile() {  # name pidfile
    local pid
    [ -s "$2" ] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "warning: $1 ($pid) ignored SIGTERM, killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$2"
}

# jobs still running would outlive slurmd (proctrack/linuxproc): cancel them first
if command -v scancel >/dev/null && [ -e "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi
stop_pidfile slurmd "$STATE_DIR/slurmd.pid"
stop_pidfile slurmctld "$STATE_DIR/slurmctld.pid"
if [ -e "$STATE_DIR/munged.started-by-us" ]; then
    stop_pidfile munged /run/munge/munged.pid
    rm -f "$STATE_DIR/munged.started-by-us"
fi
if [ -e "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    rm -f "$CONF"
fi
echo "slurm stopped (logs kept in $STATE_DIR)"
