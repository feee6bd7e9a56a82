#!/usr/bin/env bash
# Run an automem-jax experiment on one GPU host (one or several GPUs, JAX CUDA).
#
#   launch/gpu.sh [--config=configs/crafter.py] [--workdir=runs/crafter] [--engine=jax|sglang] [--model=DIR]
#       [--port=30000] [--tp=1] [--max_lora_rank=256] [--max_loras_per_batch=4]
#       [--lora_target_modules="q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"]
#       [--mem_fraction_static=0.6] [--server_gpus=0,1] [--run_gpus=2,3] [--sglang_python=PY] [--install]
#       [--dry_run]
#       [-- --config.x=y ...]
#
# --engine=jax     the experiment's in-process JAX engine serves the model (default).
# --engine=sglang  start a real SGLang server (from its own Python environment, --sglang_python) with LoRA enabled, wait for
#                  /health, and point the run at it (--config.engine.backend=sglang --config.engine.url=...); each
#                  round's adapter is hot-loaded by the run with POST /load_lora_adapter under a fresh name.
#                  --model is required (the same HF dir trains the LoRA); the server is stopped when the run ends.
# --sglang_python  the Python of SGLang's own environment (default $SGLANG_PYTHON, else the active one): SGLang pins
#                  its own torch, so it does not share the run's environment (launch/requirements-sglang.txt).
# --install        pip install -e ".[cuda]" into the active Python first (and, with --engine=sglang,
#                  launch/requirements-sglang.txt into --sglang_python, which must then be another Python).
# --server_gpus / --run_gpus  CUDA_VISIBLE_DEVICES for the server and the run (default: all GPUs for both; the run
#                  then does not preallocate GPU memory so the server keeps its --mem_fraction_static share).
# --dry_run        print every command, run none.
# -- ARGS          passed to `python -m automem_jax` unchanged.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/common.sh"

CONFIG="configs/crafter.py" WORKDIR="runs/gpu" ENGINE="jax" MODEL="" PORT=30000 TP=1 MAX_LORA_RANK=256
MAX_LORAS=4 TARGETS="q_proj k_proj v_proj o_proj gate_proj up_proj down_proj" MEM_FRACTION=0.6
SERVER_GPUS="" RUN_GPUS="" INSTALL=0 DRY_RUN=0 HEALTH_TIMEOUT=1800
PYTHON="${PYTHON:-python}"
SGLANG_PYTHON="${SGLANG_PYTHON:-}"
PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --engine=*) ENGINE="${1#*=}" ;;
    --model=*) MODEL="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --tp=*) TP="${1#*=}" ;;
    --max_lora_rank=*) MAX_LORA_RANK="${1#*=}" ;;
    --max_loras_per_batch=*) MAX_LORAS="${1#*=}" ;;
    --lora_target_modules=*) TARGETS="${1#*=}" ;;
    --mem_fraction_static=*) MEM_FRACTION="${1#*=}" ;;
    --server_gpus=*) SERVER_GPUS="${1#*=}" ;;
    --run_gpus=*) RUN_GPUS="${1#*=}" ;;
    --health_timeout=*) HEALTH_TIMEOUT="${1#*=}" ;;
    --sglang_python=*) SGLANG_PYTHON="${1#*=}" ;;
    --install) INSTALL=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; PASS=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see launch/gpu.sh --help)" ;;
  esac
  shift
done
[[ "$ENGINE" == jax || "$ENGINE" == sglang ]] || die "--engine must be jax or sglang, got $ENGINE"
[[ "$ENGINE" == jax || -n "$MODEL" ]] || die "--engine=sglang needs --model=<HF model dir> (served and trained)"
if [[ "$ENGINE" == sglang && $INSTALL == 1 && ( -z "$SGLANG_PYTHON" || "$SGLANG_PYTHON" == "$PYTHON" ) ]]; then
  die "--install --engine=sglang needs --sglang_python=<python of its own venv> (SGLang pins its own torch):" \
      "python -m venv .venv-sglang, then --sglang_python=.venv-sglang/bin/python"
fi
SGLANG_PYTHON="${SGLANG_PYTHON:-$PYTHON}"
export DRY_RUN
cd "$HERE/.."

if [[ $INSTALL == 1 ]]; then
  run "$PYTHON" -m pip install -q -e ".[cuda]"
  if [[ "$ENGINE" == sglang ]]; then run "$SGLANG_PYTHON" -m pip install -q -r launch/requirements-sglang.txt; fi
fi

EXP=("$PYTHON" -m automem_jax --config="$CONFIG" --workdir="$WORKDIR")
[[ -n "$MODEL" ]] && EXP+=(--config.model="$MODEL")
RUN_ENV=()
[[ -n "$RUN_GPUS" ]] && RUN_ENV+=(CUDA_VISIBLE_DEVICES="$RUN_GPUS")

if [[ "$ENGINE" == sglang ]]; then
  URL="http://127.0.0.1:$PORT"
  read -r -a TARGET_LIST <<< "$TARGETS"
  SERVER=("$SGLANG_PYTHON" -m sglang.launch_server --model-path "$MODEL" --port "$PORT" --tp "$TP"
          --mem-fraction-static "$MEM_FRACTION" --enable-lora --max-lora-rank "$MAX_LORA_RANK"
          --lora-target-modules "${TARGET_LIST[@]}" --max-loras-per-batch "$MAX_LORAS")
  SERVER_ENV=()
  [[ -n "$SERVER_GPUS" ]] && SERVER_ENV+=(CUDA_VISIBLE_DEVICES="$SERVER_GPUS")
  run mkdir -p "$WORKDIR"
  LOG="$WORKDIR/sglang_server.log"
  show_cmd ${SERVER_ENV[@]+env "${SERVER_ENV[@]}"} "${SERVER[@]}"
  echo "  (in the background, log: $LOG)"
  if [[ $DRY_RUN != 1 ]]; then
    env "${SERVER_ENV[@]}" "${SERVER[@]}" > "$LOG" 2>&1 &
    SERVER_PID=$!
    trap 'echo "stopping SGLang server (pid $SERVER_PID)"; kill "$SERVER_PID" 2>/dev/null || true' EXIT
  fi
  show_cmd curl -sf "$URL/health"
  echo "  (polled every 5 s until it answers, at most ${HEALTH_TIMEOUT} s)"
  if [[ $DRY_RUN != 1 ]]; then
    waited=0
    until curl -sf "$URL/health" > /dev/null; do
      kill -0 "$SERVER_PID" 2>/dev/null || die "SGLang server exited; see $LOG"
      (( waited >= HEALTH_TIMEOUT )) && die "SGLang server not healthy after ${HEALTH_TIMEOUT}s; see $LOG"
      sleep 5; waited=$((waited + 5))
    done
    echo "SGLang server healthy at $URL"
  fi
  EXP+=(--config.engine.backend=sglang --config.engine.url="$URL" --config.engine.max_lora_rank="$MAX_LORA_RANK")
  # The server holds its memory share; the JAX trainer allocates on demand beside it.
  RUN_ENV+=(XLA_PYTHON_CLIENT_PREALLOCATE=false)
else
  EXP+=(--config.engine.backend=jax)
fi

run ${RUN_ENV[@]+env "${RUN_ENV[@]}"} "${EXP[@]}" "${PASS[@]}"
