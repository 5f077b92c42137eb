#!/usr/bin/env bash
# The one GPU check (docs/benchmarks.md, "GPU rows"), from the repository root, with the
# machine's own python3 and torch; results in ${OUT:-benchmarks/out}/gpu. Dependency wheels
# carried in .whl/ (a machine without network) are unpacked offline first; nothing is fetched.
set -euo pipefail; cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/out}/gpu" "$@"
