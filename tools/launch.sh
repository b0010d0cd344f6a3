# Shared launcher of the experiment scripts (exp.*/*/script.sh source it): builds the `torchrun`
# command for one machine, several machines by hand, or a SLURM allocation.
#
#   source "$(dirname "$0")/../../tools/launch.sh"    (after `cd` into the experiment folder)
#   launch train.py --resume auto "$@"               # every node of the job
#   launch_local eval.py -e all "$@"                 # this node alone (the scripts run it on node 0)
#
# Environment (all optional):
#   NGPUS        processes (GPUs) per node; default 1, or SLURM_GPUS_ON_NODE inside SLURM
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
#                by hand for several machines; inside SLURM (SLURM_JOB_ID set) they default to
#                SLURM_NNODES, SLURM_NODEID, the first host of SLURM_JOB_NODELIST
#                (`scontrol show hostnames`) and a port derived from the job id
#   DIST_BACKEND nccl | gloo: overrides the process-group backend (default nccl on CUDA, gloo on CPU)
#   MAX_RESTARTS times torchrun restarts the training processes after one fails (a crashed rank, a peer
#                that stopped answering); each restart resumes from latest.pth. Default 3; 0: never
#   CHECK=0      skip `python train.py ... --check` before torchrun (the config, data lists and files of the
#                run, checked once: torchrun would restart workers that failed on them MAX_RESTARTS times)
#   DRY_RUN=1    print each command instead of running it
#   TORCHRUN     the torchrun command (default: torchrun)
#
# Signals: TERM, INT and HUP to this shell reach torchrun once (it forwards them to its workers, which save
# latest.pth and exit; torchrun stopped by a signal never restarts them); USR1 (SLURM's warning before the
# time limit) is sent on as TERM. A launch that was signalled returns 128 + the signal's number.

_launch_fail() { echo "launch.sh: $*" >&2; exit 2; }

_launch_defaults() {
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    NNODES="${NNODES:-${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}}"
    NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
    NGPUS="${NGPUS:-${SLURM_GPUS_ON_NODE:-1}}"
    if [ -z "${MASTER_ADDR:-}" ]; then
      if [ "$NNODES" -gt 1 ]; then
        [ -n "${SLURM_JOB_NODELIST:-}" ] || _launch_fail "SLURM_JOB_NODELIST is not set; set MASTER_ADDR"
        command -v scontrol >/dev/null || _launch_fail "scontrol not found on PATH; set MASTER_ADDR to the first node's host name"
        # the whole list, then its first line (`| head -1` under pipefail could fail on SIGPIPE)
        hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")" || _launch_fail "scontrol show hostnames '$SLURM_JOB_NODELIST' failed; set MASTER_ADDR"
        MASTER_ADDR="${hosts%%$'\n'*}"
        [ -n "$MASTER_ADDR" ] || _launch_fail "scontrol show hostnames '$SLURM_JOB_NODELIST' printed no host; set MASTER_ADDR"
      else
        MASTER_ADDR=127.0.0.1
      fi
    fi
    # jobs sharing a node must not share a rendezvous port
    MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
  fi
  NGPUS="${NGPUS:-1}"
  NNODES="${NNODES:-1}"
  NODE_RANK="${NODE_RANK:-0}"
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  MASTER_PORT="${MASTER_PORT:-29500}"
  MAX_RESTARTS="${MAX_RESTARTS:-3}"
  case "$NNODES$NODE_RANK$NGPUS$MASTER_PORT$MAX_RESTARTS" in *[!0-9]*) _launch_fail "NNODES=$NNODES NODE_RANK=$NODE_RANK NGPUS=$NGPUS MASTER_PORT=$MASTER_PORT MAX_RESTARTS=$MAX_RESTARTS must be integers";; esac
  [ "$NODE_RANK" -lt "$NNODES" ] || _launch_fail "NODE_RANK=$NODE_RANK is not below NNODES=$NNODES"
  case "${DIST_BACKEND:-}" in ""|nccl|gloo) ;; *) _launch_fail "DIST_BACKEND=$DIST_BACKEND is not nccl or gloo";; esac
  export DIST_BACKEND="${DIST_BACKEND:-}"
}

_launch_run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    _launch_supervised "$@"
  fi
}

# Run the command (torchrun) and wait for it, passing a signal this shell gets on to it exactly once.
# It runs in the background (bash runs a trap only once its foreground command has ended), in its own
# process group (a Ctrl-C or a kill of this shell's group reaches this shell alone, not torchrun twice)
# and with USR1 ignored (torchrun does not handle it: its default action would kill torchrun, leaving
# the workers unsupervised; under SLURM the workers get USR1 themselves). Returns the command's status,
# or 128 + the number of the signal that came.
_launch_supervised() {
  local pid="" status got=0 monitor=+m
  case $- in *m*) monitor=-m ;; esac  # an interactive shell that sourced this file keeps its job control
  trap 'got=$(kill -l TERM); _launch_signal TERM "$pid"' TERM
  trap 'got=$(kill -l INT); _launch_signal INT "$pid"' INT
  trap 'got=$(kill -l HUP); _launch_signal HUP "$pid"' HUP
  trap 'got=$(kill -l USR1); _launch_signal TERM "$pid"' USR1
  set -m
  ( trap '' USR1; exec "$@" ) &
  pid=$!
  set "$monitor"
  [ "$got" = 0 ] || _launch_signal TERM "$pid"  # one came while it started
  while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break  # still running: a trap ended the wait
  done
  trap - TERM INT HUP USR1
  [ "$got" = 0 ] || status=$((128 + got))
  return "$status"
}

_launch_signal() { [ -z "$2" ] || kill -"$1" "$2" 2>/dev/null || true; }

# the script's --check for the job's process count, then torchrun over every node of the job (this node's
# share), restarting its workers after a failure
launch() {
  _launch_defaults
  if [ "${CHECK:-1}" != 0 ]; then
    _launch_run env WORLD_SIZE=$((NNODES * NGPUS)) python "$@" --check || return
  fi
  _launch_run ${TORCHRUN:-torchrun} --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPUS" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --max-restarts "$MAX_RESTARTS" "$@"
}

# torchrun on this node only (evaluation after training, on the same port: training has ended)
launch_local() {
  _launch_defaults
  _launch_run ${TORCHRUN:-torchrun} --nnodes 1 --node_rank 0 --nproc_per_node "$NGPUS" \
    --master_addr 127.0.0.1 --master_port "$MASTER_PORT" "$@"
}

# true on the first node of the job (the one that evaluates and reports)
is_first_node() {
  _launch_defaults
  [ "$NODE_RANK" = 0 ]
}
