#!/usr/bin/env bash
# vllm-server: starts vLLM's OpenAI-compatible API server, configured from the environment.
# closure.nix installs this file as bin/vllm-server with Nix's bash and VLLM_PYTHON set to the
# image's Python; run by hand it uses `python` from PATH.
#
#   MODEL_PATH                                         model directory (default /models/vllm/orchestrator/bf16)
#   VLLM_HOST, VLLM_PORT                               listen address (default 0.0.0.0:8000)
#   VLLM_GPU_MEMORY_UTILIZATION or GPU_MEM_UTIL        share of GPU memory (default 0.48)
#   VLLM_MAX_MODEL_LEN or MAX_MODEL_LEN                context length (default 32768)
#   SWAP_SPACE                                         CPU swap space in GiB; passed only when set
#   EXTRA_VLLM_ARGS                                    more arguments, split into words; none when empty
# When both names of a setting are set, vLLM's own VLLM_* name wins: the image sets the short names
# as defaults, so a VLLM_* value given at run time must not be shadowed by them.
# Arguments given to vllm-server itself are passed on last.
set -euo pipefail

model=${MODEL_PATH:-/models/vllm/orchestrator/bf16}
host=${VLLM_HOST:-0.0.0.0}
port=${VLLM_PORT:-8000}
gpu_memory=${VLLM_GPU_MEMORY_UTILIZATION:-${GPU_MEM_UTIL:-0.48}}
max_model_len=${VLLM_MAX_MODEL_LEN:-${MAX_MODEL_LEN:-32768}}

args=(
  -m vllm.entrypoints.openai.api_server
  --model "$model"
  --host "$host"
  --port "$port"
  --gpu-memory-utilization "$gpu_memory"
  --dtype bfloat16
  --tensor-parallel-size 1
  --pipeline-parallel-size 1
  --max-model-len "$max_model_len"
)
if [ -n "${SWAP_SPACE:-}" ]; then
  args+=(--swap-space "$SWAP_SPACE")
fi
if [ -n "${EXTRA_VLLM_ARGS:-}" ]; then
  # Split on whitespace (newlines too) only: no globbing, no quotes interpreted.
  # read -d '' reads to the end and then reports end of input, hence `|| true`.
  IFS=$' \t\n' read -r -d '' -a extra_args <<<"$EXTRA_VLLM_ARGS" || true
  args+=("${extra_args[@]}")
fi

exec "${VLLM_PYTHON:-python}" "${args[@]}" "$@"
