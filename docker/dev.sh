#!/usr/bin/env bash
# Run a command inside the fetchrl image with the repository mounted at /workspace.
#   bash docker/dev.sh python scripts/ch02_ppo_dense_reach.py all --seed 0
# -it only when stdin is a terminal (CI has none); --gpus all only when an NVIDIA runtime exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${FETCHRL_IMAGE:-fetchrl:dev}"

if ! docker image inspect "$image" >/dev/null 2>&1; then
  docker build -t "$image" -f "$here/docker/Dockerfile" "$here"
fi

args=(run --rm -v "$here:/workspace" -w /workspace -e MUJOCO_GL=egl -e PYOPENGL_PLATFORM=egl)
if [ -t 0 ]; then
  args+=(-it)
fi
if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
  args+=(--gpus all)
fi
if [ "$#" -eq 0 ]; then
  set -- bash
fi
exec docker "${args[@]}" "$image" "$@"
