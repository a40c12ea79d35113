#!/usr/bin/env bash
# Start a single-node SLURM on this machine (controller and compute node on 127.0.0.1)
# for tests/test_slurm.py: munged, slurmctld and slurmd, with the node's CPUs and
# memory as `slurmd -C` detects them. Needs root and scripts/slurm/install.sh first.
# Idempotent: returns at once when our cluster is already up. Stop with stop.sh.
#
# GPUs: the node offers the machine's /dev/nvidia[0-9]* as GRES "gpu"; on a machine
# without any it offers one stand-in GPU (File=/dev/null), so that jobs asking for a GPU
# (--gpus=1) are scheduled and the whole request path can be tested on CPUs.
#
# State, logs and the job-completion record live in $SEQSETVAE_SLURM_DIR
# (default /tmp/seqsetvae-slurm). The configuration goes to /etc/slurm/slurm.conf,
# where every SLURM command (also `srun` inside a job, whose environment the
# Snakemake job step strips of SLURM_* variables such as SLURM_CONF) finds it; an
# existing slurm.conf that this script did not write is never touched.
set -euo pipefail

STATE_DIR=${SEQSETVAE_SLURM_DIR:-/tmp/seqsetvae-slurm}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARKER="# written by seqsetvae scripts/slurm/start.sh"

die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "scripts/slurm/start.sh must run as root (it starts munged, slurmctld, slurmd)"
for tool in munged slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/slurm/install.sh first"
done
for file in "$CONF" "$GRES_CONF"; do
    if [ -e "$file" ] && ! grep -qF "$MARKER" "$file"; then
        die "$file exists and was not written by this script; refusing to replace a real cluster's configuration"
    fi
done

node_state() { sinfo --noheader --Node --format=%t 2>/dev/null | head -n1; }

wait_for_node() {  # until the node takes jobs (idle, or busy with some), at most 60 s
    for _ in $(seq 120); do
        case "$(node_state)" in idle | mix | alloc) return 0 ;; esac
        sleep 0.5
    done
    return 1
}

# already up (controller answers): make sure the node takes jobs, and leave it running
if [ -e "$CONF" ] && sinfo >/dev/null 2>&1; then
    case "$(node_state)" in
        down* | drain* | drng*) scontrol update NodeName="$(hostname -s)" State=RESUME || true ;;
    esac
    wait_for_node || die "slurm is running but its node is '$(node_state)'; see scripts/slurm/stop.sh"
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

gpu_files=(/dev/nvidia[0-9]*)
[ -e "${gpu_files[0]}" ] || gpu_files=(/dev/null)

mkdir -p "$(dirname "$CONF")"
{
    echo "$MARKER"
    for file in "${gpu_files[@]}"; do echo "NodeName=$node_name Name=gpu File=$file"; done
} >"$GRES_CONF"
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
GresTypes=gpu
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
${node_line/NodeName=* CPUs=/NodeName=$node_name NodeAddr=127.0.0.1 CPUs=} Gres=gpu:${#gpu_files[@]} State=UNKNOWN
PartitionName=debug Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
CONF

# -c: start from a clean controller state (job ids from 1, no jobs of an earlier run)
slurmctld -c
slurmd
if ! wait_for_node; then
    echo "--- sinfo" >&2; sinfo >&2 || true
    echo "--- slurmctld.log" >&2; tail -n 30 "$STATE_DIR/slurmctld.log" >&2 || true
    echo "--- slurmd.log" >&2; tail -n 30 "$STATE_DIR/slurmd.log" >&2 || true
    die "the SLURM node did not become idle within 60 s"
fi
echo "slurm running: $(sinfo --noheader --Node --format='%N %t %c CPUs %m MB %G'), state in $STATE_DIR"
