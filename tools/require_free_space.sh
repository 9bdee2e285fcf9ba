#!/usr/bin/env bash
# Fails, naming what needs the space, when the file system holding DIR has less than GIB GiB free.
# Used before the large installs of CI (the CUDA torch wheel and its nvidia-* libraries: ~5.5 GB
# installed; vLLM's venv: ~6.3 GB), so that a full disk reads as what it is instead of as pip's
# "OSError: [Errno 28] No space left on device" halfway through an install.
#
# Usage: tools/require_free_space.sh DIR GIB WHAT
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 DIR GIB WHAT" >&2
  exit 2
fi
dir=$1 need_gib=$2 what=$3
probe=$dir
while [ ! -e "$probe" ]; do probe=$(dirname "$probe"); done  # DIR may not exist yet
free_kib=$(df -Pk "$probe" | awk 'NR == 2 {print $4}')
free_gib=$((free_kib / 1048576))
if [ "$free_gib" -lt "$need_gib" ]; then
  echo "require_free_space: FAILED: $what needs about $need_gib GiB free at $dir; the file system" \
       "($(df -P "$probe" | awk 'NR == 2 {print $6}')) has $free_gib GiB free" >&2
  exit 1
fi
echo "== $free_gib GiB free at $dir ($what needs about $need_gib GiB)"
