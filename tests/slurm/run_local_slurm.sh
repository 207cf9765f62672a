#!/usr/bin/env bash
# The SLURM profile (slurm/config.yaml) on a real SLURM: a one-node cluster on this machine.
#
#   sudo tests/slurm/run_local_slurm.sh            # or as root in a container; 9-11 min on 2 cores
#   RUN_SLURM=1 .venv/bin/python -m pytest -m slurm tests/test_slurm_local.py   # the same, from pytest
#
# 1. installs Debian's SLURM (slurmctld, slurmd, munge, slurm-client) when it is missing,
# 2. writes a single-node slurm.conf into a scratch dir (no cgroups: proctrack/linuxproc,
#    task/none; no slurmdbd: accounting_storage/none, so Snakemake asks squeue for job status,
#    which MinJobAge=600 keeps reliable) to /etc/slurm/slurm.conf (an existing one is put back
#    at exit; state and logs go to $WORK/slurm) and starts munged, slurmctld and slurmd,
# 3. runs the whole smoke DAG through real sbatch with `snakemake --profile slurm`,
# 4. cancel case: reruns RL (rloo, seed 0), `scancel`s its SLURM job once it has written a
#    checkpoint, and checks that the profile's `retries` resubmit it, that the new job resumes
#    from the checkpoint (the RL log says "resumed from") and that the DAG completes.
# The daemons it started are stopped at exit. Exit status 0 means every check passed.
#
# Environment: WORK (scratch dir; default a new /tmp/local_slurm.XXXXXX, kept for inspection),
# PYTHON (default .venv/bin/python), SKIP_INSTALL=1 (do not apt-get install), SKIP_SMOKE=1 (with a
# WORK of an earlier run: only the cancel case).
# Heavy on CPU: on a shared machine run it under `flock /tmp/cpu.lock`.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
WORK="${WORK:-$(mktemp -d /tmp/local_slurm.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
T0=$(date +%s)
say() { echo "[local-slurm +$(( $(date +%s) - T0 ))s] $*"; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (installs packages, starts slurmctld/slurmd as root)"

# --- 1. packages ------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  [ "${SKIP_INSTALL:-0}" = 1 ] && fail "SLURM is not installed and SKIP_INSTALL=1"
  say "installing slurmctld slurmd munge slurm-client"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd munge slurm-client >/dev/null
fi
say "$(slurmctld -V)"

# --- 2. a one-node cluster ----------------------------------------------------------------------
CONF_DIR="$WORK/slurm"
mkdir -p "$CONF_DIR"/{state,spool,log}
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
# the default path: the job steps Snakemake starts inside a job (srun) drop SLURM_* variables,
# SLURM_CONF included, so a config elsewhere would not be found there
SLURM_CONF_PATH=/etc/slurm/slurm.conf
unset SLURM_CONF
mkdir -p /etc/slurm
if [ -e "$SLURM_CONF_PATH" ]; then
  mv "$SLURM_CONF_PATH" "$CONF_DIR/slurm.conf.orig"   # put back at exit
fi
cat > "$SLURM_CONF_PATH" <<EOF
# one node on localhost, written by tests/slurm/run_local_slurm.sh
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$CONF_DIR/state
SlurmdSpoolDir=$CONF_DIR/spool
SlurmctldPidFile=$CONF_DIR/slurmctld.pid
SlurmdPidFile=$CONF_DIR/slurmd.pid
SlurmctldLogFile=$CONF_DIR/log/slurmctld.log
SlurmdLogFile=$CONF_DIR/log/slurmd.log
# no cgroups (containers, gVisor): track processes by parent pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: sacct answers "accounting storage is disabled", so status comes from squeue,
# which shows finished jobs for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

STARTED=()
cleanup() {
  for pidfile in "${STARTED[@]}"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  cp "$SLURM_CONF_PATH" "$CONF_DIR/slurm.conf" 2>/dev/null || true
  if [ -e "$CONF_DIR/slurm.conf.orig" ]; then mv "$CONF_DIR/slurm.conf.orig" "$SLURM_CONF_PATH"; else rm -f "$SLURM_CONF_PATH"; fi
}
trap cleanup EXIT

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey -c 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  su -s /bin/sh munge -c munged
  STARTED+=(/run/munge/munged.pid)
  sleep 1
  munge -n | unmunge >/dev/null || fail "munged does not answer"
fi
say "starting slurmctld and slurmd ($NODE: $CPUS CPUs, $MEM_MB MB)"
slurmctld
STARTED+=("$CONF_DIR/slurmctld.pid")
slurmd
STARTED+=("$CONF_DIR/slurmd.pid")
for _ in $(seq 60); do
  sinfo -h -o %t 2>/dev/null | grep -qx idle && break
  sleep 1
done
sinfo -h -o %t | grep -qx idle || { tail -20 "$CONF_DIR"/log/*.log; fail "the node never became idle"; }
say "cluster up: $(sinfo -h -o '%P %D %t %c CPUs')"

# Snakemake with the project's profile; the flags only adapt it to this cluster: squeue for status
# (no slurmdbd), status checks from 5 s (jobs here take seconds, not hours)
SMK=("$PYTHON" -m snakemake -s "$REPO/Snakefile" --directory "$WORK/run" --profile "$REPO/slurm"
     --configfile "$REPO/config/smoke.yaml" --slurm-status-command squeue
     --slurm-init-seconds-before-status-checks 5 --slurm-keep-successful-logs)
mkdir -p "$WORK/run"

# --- 3. the smoke DAG through sbatch --------------------------------------------------------------
R="$WORK/run/results"
if [ "${SKIP_SMOKE:-0}" = 1 ] && [ -s "$WORK/smoke.log" ]; then
  say "SKIP_SMOKE=1: reusing the smoke DAG of $WORK/smoke.log"
  SMOKE_S="(earlier run) "
else
say "smoke DAG via sbatch (log: $WORK/smoke.log)"
t=$(date +%s)
"${SMK[@]}" > "$WORK/smoke.log" 2>&1 || { tail -60 "$WORK/smoke.log"; fail "smoke DAG failed under SLURM"; }
SMOKE_S=$(( $(date +%s) - t ))
fi
for f in table1.csv table2.csv table3.csv table4.csv; do [ -s "$R/$f" ] || fail "missing $f"; done
N_SUBMITTED=$(grep -c "has been submitted with SLURM jobid" "$WORK/smoke.log" || true)
say "smoke DAG done in ${SMOKE_S}s: $N_SUBMITTED jobs went through sbatch"

# --- 4. cancel an RL job mid-run: the retry resumes from its checkpoint ------------------------------
say "cancel case: rerun rl rloo s0, scancel it after its first checkpoint (log: $WORK/cancel.log)"
# table2 is newer than the deleted run, so ask for the run itself; the evaluation and table2
# then rerun because their input is updated
rm -rf "$R/rl/rloo/s0"
CKPT="$R/checkpoints/rl/rloo/s0/latest.json"
t=$(date +%s)
"${SMK[@]}" -- results/rl/rloo/s0/summary.json results/table2.csv > "$WORK/cancel.log" 2>&1 &
SMK_PID=$!
JOBID=""
for _ in $(seq 3000); do   # poll fast: after the first checkpoint (iteration 2 of 6) the smoke RL job has seconds left
  if [ -f "$CKPT" ]; then
    JOBID=$(squeue -h -t RUNNING -o '%i|%k' | awk -F'|' '$2 ~ /^rule_rl_/ {print $1; exit}')
    [ -n "$JOBID" ] && break
  fi
  kill -0 $SMK_PID 2>/dev/null || break
  sleep 0.2
done
[ -n "$JOBID" ] || { wait $SMK_PID || true; tail -40 "$WORK/cancel.log"; fail "never saw a running rl job with a checkpoint"; }
say "rl job is SLURM job $JOBID, checkpoint $(cat "$CKPT"); scancel $JOBID"
scancel "$JOBID"
wait $SMK_PID || { tail -60 "$WORK/cancel.log"; fail "the DAG did not complete after the cancel"; }
CANCEL_S=$(( $(date +%s) - t ))
squeue -h --states=all -o '%i %T %k' | grep -E "^$JOBID " || true
STATE=$(squeue -h --states=all -j "$JOBID" -o %T 2>/dev/null || true)
[ "$STATE" = CANCELLED ] || fail "job $JOBID ended $STATE, not CANCELLED"
grep -q "SLURM-job '$JOBID' failed, SLURM status is: 'CANCELLED'" "$WORK/cancel.log" \
  || fail "Snakemake did not see job $JOBID as cancelled"
N_RL=$(grep -c "submitted with SLURM jobid .*slurm_logs/rule_rl/" "$WORK/cancel.log" || true)
[ "$N_RL" -ge 2 ] || fail "the cancelled rl job was not resubmitted (profile retries)"
grep -q "resumed from .*checkpoints/rl/rloo/s0" "$R/logs/rl/rloo/s0.log" || fail "the retried rl job did not resume"
ITERS=$("$PYTHON" -c "import json,sys; print([json.loads(l)['iteration'] for l in open(sys.argv[1])])" "$R/rl/rloo/s0/metrics.jsonl")
[ -s "$R/table2.csv" ] && [ "$(stat -c %Y "$R/table2.csv")" -ge "$t" ] || fail "table2 was not rebuilt"
[ ! -e "$CKPT" ] || fail "the finished rl job left its checkpoint behind"
say "cancel case done in ${CANCEL_S}s: job $JOBID CANCELLED, rl submitted $N_RL times:"
say "  $(grep "submitted with SLURM jobid .*slurm_logs/rule_rl/" "$WORK/cancel.log" | tr '\n' ' ')"
say "  $(grep -m1 'resumed from' "$R/logs/rl/rloo/s0.log")"
say "  rl/rloo/s0/metrics.jsonl iterations: $ITERS"
say "OK: smoke DAG ${SMOKE_S}s, cancel+retry ${CANCEL_S}s, total $(( $(date +%s) - T0 ))s (scratch: $WORK)"
