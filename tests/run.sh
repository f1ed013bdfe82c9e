#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (CI runs exactly this).
#   bash tests/run.sh            # everything
#   bash tests/run.sh -m "not slow"   # the quick subset
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of torch first, so that resolving the project never pulls a CUDA build.
python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
pip install --quiet -e ".[test,dali,deepspeed]"  # DALI runs CPU pipelines here, DeepSpeed its CPU accelerator
# Debian's Prometheus server and promtool: the monitoring tests check rules and scrape a real run with them.
if ! command -v promtool >/dev/null; then
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
    || echo "warning: could not install Debian's prometheus; its tests will be skipped" >&2
fi
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
