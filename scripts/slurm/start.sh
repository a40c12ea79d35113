#!/usr/bin/env bash
# Start a single-node SLURM on this machine (controller and compute node on 127.0.0.1)
# for tests/test_slurm.py: munged, slurmctld and slurmd, with the node's CPUs and
# memory as `slurmd -C` detects them. Needs root and scripts/slurm/install.sh first.
# Idempotent: returns at once when our cluster is already up. Stop with stop.sh.
#
# State, logs and the job-completion record live in $SEQSETVAE_SLURM_DIR
# (default /tmp/seqsetvae-slurm). The configuration goes to /etc/slurm/slurm.conf,
# where every SLURM command (also `srun` inside a job, whose environment the
# Snakemake job step strips of SLURM_* variables such as SLURM_CONF) finds it; an
# existing slurm.conf that this script did not write is never touched.
set -euo pipefail

STATE_DIR=${SEQSETVAE_SLURM_DIR:-/tmp/seqsetvae-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by seqsetvae scripts/slurm/start.sh"

die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "scripts/slurm/start.sh must run as root (it starts munged, slurmctld, slurmd)"
for tool in munged slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/slurm/install.sh first"
done
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's configuration"
fi

node_state() { sinfo --noheader --Node --format=%t 2>/dev/null | head -n1; }

if [ -e "$CONF" ] && [ "$(node_state)" = idle ]; then
    echo "slurm already running: $(sinfo --noheader --Node --format='%N %t %c CPUs %m MB')"
    exit 0
fi

mkdir -p "$STATE_DIR"/{state,spool}

# munge: authentication between the SLURM daemons and commands
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE_DIR/munged.started-by-us"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged did not start"
fi

# this machine as `slurmd -C` sees it: NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
node_line=$(slurmd -C | head -n1)
node_name=$(hostname -s)
case "$node_line" in
    NodeName=*" CPUs="*" RealMemory="*) ;;
    *) die "unexpected 'slurmd -C' output: $node_line" ;;
esac

mkdir -p "$(dirname "$CONF")"
cat >"$CONF" <<CONF
$MARKER
# A single-node test cluster: controller and node on 127.0.0.1, no accounting
# database (job status via squeue, kept MinJobAge seconds after a job ends), no cgroups.
ClusterName=seqsetvae
SlurmctldHost=$node_name(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
MinJobAge=3600
ReturnToService=2
KillWait=5
InactiveLimit=0
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
${node_line/NodeName=* CPUs=/NodeName=$node_name NodeAddr=127.0.0.1 CPUs=} State=UNKNOWN
PartitionName=debug Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
CONF

# -c: start from a clean controller state (job ids from 1, no jobs of an earlier run)
slurmctld -c
slurmd
for _ in $(seq 120); do
    [ "$(node_state)" = idle ] && break
    sleep 0.5
done
if [ "$(node_state)" != idle ]; then
    echo "--- sinfo" >&2; sinfo >&2 || true
    echo "--- slurmctld.log" >&2; tail -n 30 "$STATE_DIR/slurmctld.log" >&2 || true
    echo "--- slurmd.log" >&2; tail -n 30 "$STATE_DIR/slurmd.log" >&2 || true
    die "the SLURM node did not become idle within 60 s"
fi
echo "slurm running: $(sinfo --noheader --Node --format='%N %t %c CPUs %m MB'), state in $STATE_DIR"
