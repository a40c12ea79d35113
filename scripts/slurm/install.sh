#!/usr/bin/env bash
# Install a single-node SLURM (Debian's slurm-wlm: slurmctld + slurmd + client tools)
# and munge, for tests/test_slurm.py. Needs root; idempotent: does nothing when the
# daemons and client tools are already there.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    echo "slurm already installed: $(slurmctld -V)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: scripts/slurm/install.sh must run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# no recommends: keeps the install small (no mail server, docs, ...)
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "installed: $(slurmctld -V)"
