#!/usr/bin/env bash
# The one prepared GPU check for a session lent a device machine (issue 7): kiln's webgpu backend
# on the machine's GPU through Dawn's Vulkan, checked by the golden and bake tests and timed
# beside PyTorch on the same GPU. That machine has no network and no Node, so everything comes
# from .device/, packed here by tools/device/stage.sh. docs/device.md says how to run it.
#
#   bash tools/device/gpu-check.sh           on the device machine (whole check, ~5 minutes)
#   bash tools/device/gpu-check.sh --smoke   anywhere (tiny shape only): checks the packing
#   bash tools/device/gpu-check.sh --batching   on the device: decode and bake step cost by how often
#                                            tfjs-webgpu submits, decode step cost by batch size, and
#                                            what one step runs (a second call, where time is left)
#   bash tools/device/gpu-check.sh --profile    on the device: where a decode step's and npm run bench's
#                                            bake step's GPU time goes, by kernel, and the bench at a
#                                            bake's default batch of 8 (about three minutes)
#
# Each step has its own time limit and a failed step does not stop the next: one lease must
# bring back as much as it can. Everything goes to $OUT/gpu-check.log.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
SMOKE=0
BATCHING=0
PROFILE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
[ "${1:-}" = "--batching" ] && BATCHING=1
[ "${1:-}" = "--profile" ] && PROFILE=1
OUT=${OUT:-/tmp/kiln-gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
: >"$LOG"
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
# step NAME LIMIT_S COMMAND...: runs a command under a time limit, logging its output and duration
summarize() { grep -E '^\| |^backend |^load after|: one (batch-1|bake) step |^# kiln bench|^<!--|^PyTorch:|^transformers |^# (pass|fail)|^\[..:..:..\] (== |adapter|with )' "$LOG" >"$OUT/summary.txt"; }
step() {
  local name=$1 limit=$(($2 * (3 * SMOKE + 1))) # a software adapter (under strace, when staging) is slower

  shift 2
  say "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "== $name: exit $rc after $((SECONDS - t0))s"
  summarize # after every step: a lease cut short still brings back what ran
  return $rc
}

[ -f dist/src/cli/main.js ] || { say "no dist/: carry it (npm run build here first)"; exit 2; }
[ -d .device ] || { say "no .device/: run tools/device/stage.sh here and carry .device"; exit 2; }

# Vulkan, EGL and GLES loaders (the device README's list), where the image lacks them
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  if [ "$(id -u)" = 0 ] && ls .device/gl/*.deb >/dev/null 2>&1; then
    for f in .device/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    say "unpacked $(ls .device/gl/*.deb | wc -l) loader packages"
  else
    say "no libvulkan and no way to add it here: Dawn will find only OpenGL ES, if that"
  fi
fi

# xz may be missing from the device image; its Python reads xz too
unxz() { if command -v xz >/dev/null; then xz -dc "$1"; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi; }

# Node 20, packed from the machine that staged this (the device image has none)
if [ -f .device/node.xz ]; then
  NODE_DIR=$(mktemp -d)
  unxz .device/node.xz >"$NODE_DIR/node" && chmod +x "$NODE_DIR/node"
  export PATH=$NODE_DIR:$PATH
fi
command -v node >/dev/null || { say "no node: .device/node.xz is missing"; exit 2; }

# exactly the node_modules files the check opens (the staging machine recorded them)
if [ ! -d node_modules ] && [ -f .device/node_modules.tar.xz ]; then
  if command -v xz >/dev/null; then tar -xJf .device/node_modules.tar.xz; else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall()' .device/node_modules.tar.xz; fi
fi

export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} # Mesa warns on every start without one
export KILN_BACKEND=webgpu
say "node $(node -v) on $(uname -m); $(nproc) CPUs"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

# Which adapter Dawn takes. Where the loader finds no NVIDIA driver by itself, name the driver's
# files (the device README's fallback) and ask again.
adapter() { node dist/src/cli/main.js info --json 2>>"$LOG" | tee "$OUT/info.json" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const i=JSON.parse(s);console.log(`${i.gpu?"gpu":"software"}\t${i.backend}: ${i.device}`)}catch{console.log("failed\tkiln info failed")}})'; }
found=$(adapter)
say "adapter: ${found#*	}"
if [ "${found%%	*}" != gpu ] && [ $SMOKE = 0 ]; then
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] || continue
    export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
    egl=$(dirname "$(dirname "$icd")")/glvnd/egl_vendor.d/10_nvidia.json
    [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    found=$(adapter)
    say "with VK_DRIVER_FILES=$icd: ${found#*	}"
    [ "${found%%	*}" = gpu ] && break
  done
fi

failed=0
if [ $PROFILE = 1 ]; then
  # tf.profile with WebGPU timestamp queries: each kernel's GPU time, summed by kernel name
  step "what each WebGPU call of a dispatch costs the host" 60 node dist/tools/device/dispatch_cost.js || failed=1
  step "decode and bake step by kernel on webgpu" 240 node dist/tools/bench_batch.js --only 135m --context 256 --steps 4 --batches 1 --profile --bake-shape 2,128,64 || failed=1
  # a bake's own default batch (batchSize 8) beside PyTorch's: a step that waits on dispatching costs little more for more rows
  step "bench at bake batch 8, PyTorch on cuda" 200 node dist/tools/bench.js --only 135m --torch-device cuda --python python3 --bake-batch 8 --long-context 0 || failed=1
  say "done; failed steps: $failed (summary in $OUT/summary.txt)"
  exit $failed
fi
if [ $BATCHING = 1 ]; then
  # how often tfjs-webgpu submits (its default: every 15 dispatches), a decode and a bake step each
  step "submit batch size on webgpu" 150 node dist/tools/bench_batch.js --only 135m --context 256 --steps 5 --batches 1 --submit-batches 15,64,256,1024 || failed=1
  step "decode step by batch size on webgpu" 240 node dist/tools/bench_batch.js --context 256 --steps 8 --batches 1,4,16,32 --profile --serving || failed=1
  say "done; failed steps: $failed (summary in $OUT/summary.txt)"
  exit $failed
fi
# limits sum to 570 s at most (the export check's Python part only where transformers is), leaving room for unpacking, kiln info and kill grace within the device's 600
step "kiln's fused WGSL kernels against the composed ops" 30 node --test dist/tests/support/webgpu-fused.js || failed=1
step "golden tests on webgpu" 60 node --test dist/tests/golden.test.js || failed=1
# kiln's PEFT and merged exports read by transformers and PEFT (the device has both; kiln's side
# on the cpu backend, so this checks the files whatever Dawn does)
exports=$(mktemp -d)
step "exports written" 60 env KILN_BACKEND=cpu node dist/tools/device/export_check.js "$exports" || failed=1
if python3 -c 'import transformers, peft' 2>/dev/null; then
  step "exports read by transformers and PEFT" 60 python3 tools/device/export_check.py "$exports" || failed=1
else
  say "no transformers/peft in python3 here: the exports are written, not read"
fi
if [ $SMOKE = 1 ]; then
  step "bench, tiny shape" 150 node dist/tools/bench.js --only tiny --quick --kiln-only || failed=1
else
  # PyTorch on the same GPU, float32 without TF32 (as WebGPU computes); python3 there has torch
  step "bench, SmolLM2-135M shape, PyTorch on cuda" 240 node dist/tools/bench.js --only 135m --torch-device cuda --python python3 || failed=1
fi
step "bake tests on webgpu" 120 node --test dist/tests/bake.test.js || failed=1
summarize
say "done; failed steps: $failed (summary in $OUT/summary.txt)"
exit $failed
