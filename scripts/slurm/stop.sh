#!/usr/bin/env bash
# Stop what scripts/slurm/start.sh started: slurmd, slurmctld, and munged if start.sh
# launched it; remove the slurm.conf and gres.conf it wrote. Keeps the state directory (logs).
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

ours=false
if [ -e "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    ours=true
    # the pid files of the running cluster, wherever start.sh put its state that time
    conf_value() { sed -n "s/^$1=//p" "$CONF" | head -n1; }
    SLURMD_PID=$(conf_value SlurmdPidFile)
    SLURMCTLD_PID=$(conf_value SlurmctldPidFile)
    STATE_DIR=$(dirname "$SLURMCTLD_PID")
    # jobs still running would outlive slurmd (proctrack/linuxproc): cancel them first
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
        [ -z "$(squeue --noheader --states=RUNNING,COMPLETING,PENDING 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
stop_pidfile slurmd "${SLURMD_PID:-$STATE_DIR/slurmd.pid}"
stop_pidfile slurmctld "${SLURMCTLD_PID:-$STATE_DIR/slurmctld.pid}"
if [ -e "$STATE_DIR/munged.started-by-us" ]; then
    stop_pidfile munged /run/munge/munged.pid
    rm -f "$STATE_DIR/munged.started-by-us"
fi
if $ours; then
    rm -f "$CONF"
fi
if [ -e /etc/slurm/gres.conf ] && grep -qF "$MARKER" /etc/slurm/gres.conf; then
    rm -f /etc/slurm/gres.conf
fi
echo "slurm stopped (logs kept in $STATE_DIR)"
