#!/usr/bin/env bash
# scripts/slurm_local.sh: a one-node Slurm on this machine (munge + slurmctld + slurmd from
# Debian's slurm-wlm), so that the Slurm launch (scripts/slurm_train.sbatch, srun --mpi=pmix) is
# exercised by tests/scripts/slurm_launch.sh. Idempotent; as root (or through sudo). Refuses to
# touch a machine that already has a Slurm configuration it did not write.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if sinfo >/dev/null 2>&1; then echo "slurm_local: Slurm is already answering (sinfo)"; exit 0; fi
CONF=/etc/slurm/slurm.conf
MARK="# written by switchyard scripts/slurm_local.sh"
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm_local: $CONF exists and was not written by this script; not touching it" >&2
  exit 1
fi
missing=()
for p in slurm-wlm munge procps; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
$SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
$SUDO chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO chown munge:munge /etc/munge/munge.key
$SUDO chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged --force
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
HOST=$(hostname -s)
$SUDO tee "$CONF" >/dev/null <<CONF
$MARK
ClusterName=switchyard-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# (re)start what is not running: a daemon that just stopped may still hold its port for a moment
for _ in $(seq 30); do
  pgrep -x slurmctld >/dev/null || $SUDO slurmctld || true
  pgrep -x slurmd >/dev/null || $SUDO slurmd || true
  sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "slurm_local: one-node Slurm up ($HOST, $CPUS CPUs)"; exit 0; }
  sleep 1
done
echo "slurm_local: Slurm did not come up; see /var/log/slurm/" >&2
exit 1
