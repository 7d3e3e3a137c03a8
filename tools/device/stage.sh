#!/usr/bin/env bash
# Packs .device/ (ignored by git) for tools/device/gpu-check.sh on a lent GPU machine, which has
# no network and no Node: a stripped Node 20, the Vulkan/EGL/GLES loader packages the device
# README lists, and exactly the node_modules files the check opens, recorded by running the check
# here on the software adapter under strace. Then it unpacks the whole thing into a fresh clone
# and runs the check there with nothing else, so a missing file shows up here, not on the lease.
#
#   npm run build && bash tools/device/stage.sh     (as root: apt-get downloads the loaders;
#   under sudo, pass the Node to pack: sudo NODE="$(command -v node)" bash tools/device/stage.sh)
#
# docs/device.md has the device call to make afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
[ -f dist/src/cli/main.js ] || { echo "stage.sh: build first (npm run build)" >&2; exit 1; }
[ -d node_modules/webgpu ] || { echo "stage.sh: node_modules/webgpu is missing (npm ci installs the dev dependencies)" >&2; exit 1; }
command -v strace >/dev/null || { echo "stage.sh: needs strace (apt-get install strace)" >&2; exit 1; }
rm -rf .device
mkdir -p .device/gl

NODE=${NODE:-$(command -v node)}
echo "1/4 Node $("$NODE" -v) ($NODE), stripped and compressed"
strip -o .device/node "$NODE"
xz -9 -T0 .device/node

echo "2/4 loader packages (device README)"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/kiln-amd64-lists)
mkdir -p /tmp/kiln-amd64-lists/partial
apt-get "${o[@]}" update -qq
(cd .device/gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

echo "3/4 the node_modules files the check opens (the smoke check under strace, a few minutes)"
trace=$(mktemp)
out=$(mktemp -d)
OUT=$out strace -f -qq --seccomp-bpf -e trace=open,openat -o "$trace" bash tools/device/gpu-check.sh --smoke >/dev/null ||
  { echo "stage.sh: the smoke check failed here already (log: $out/gpu-check.log)" >&2; exit 1; }
rm -rf "$out"
grep -v '= -1' "$trace" | grep -o "\"$ROOT/node_modules/[^\"]*\"" | tr -d '"' | sort -u |
  while read -r f; do [ -f "$f" ] && echo "${f#"$ROOT"/}"; done >.device/node_modules.list
rm -f "$trace"
tar -cJf .device/node_modules.tar.xz -T .device/node_modules.list
echo "   $(wc -l <.device/node_modules.list) files"

echo "4/4 the packed check in a fresh clone, with its own Node and node_modules only"
sim=$(mktemp -d)
mkdir "$sim/kiln"
# what the device tool sends: tracked files, untracked ones git does not ignore, and the carried
travelling() { git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done; } # (not files deleted from the tree)
travelling | tar -c --null -T - dist .device | tar -x -C "$sim/kiln"
(cd "$sim/kiln" && OUT=$sim/out bash tools/device/gpu-check.sh --smoke >/dev/null) ||
  { echo "stage.sh: the packed check failed in $sim/kiln (log: $sim/out/gpu-check.log)" >&2; exit 1; }
rm -rf "$sim"

tracked=$(travelling | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb dist .device | awk '{s += $1} END {print s}')
echo "packed: .device $(du -sh .device | cut -f1); travels: tracked $((tracked >> 20)) MiB + dist and .device $((carried >> 20)) MiB = $(((tracked + carried) >> 20)) MiB of the device's 64"
[ $(((tracked + carried) >> 20)) -lt 64 ] || { echo "stage.sh: over the device's 64 MiB" >&2; exit 1; }
