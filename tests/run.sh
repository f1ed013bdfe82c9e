#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (CI runs exactly this).
#   bash tests/run.sh            # everything
#   bash tests/run.sh -m "not slow"   # the quick subset
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of torch first, so that resolving the project never pulls a CUDA build.
python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
# The AWS client stack is held to tests/constraints.txt: moto takes any boto3, the newest boto3 needs a newer
# botocore than s3fs's aiobotocore allows, and pip 24 and later then walk back through every aiobotocore, moto
# and aws-xray-sdk release (half an hour, then a failed build of a Python 2 backport). Resolved on their own
# they take seconds; to move to newer releases, regenerate the file (then run the suite):
#   { echo "# Made by the command in tests/run.sh; tests/run.sh installs the test extras with these versions."
#     pip install --dry-run --ignore-installed --quiet --report - 's3fs>=2026.9.0' boto3 \
#       | jq -r '.install[].metadata | "\(.name)==\(.version)"' \
#       | grep -iE '^(s3fs|fsspec|aiobotocore|botocore|boto3|s3transfer)==' | sort -f; } > tests/constraints.txt
pip install --quiet -c tests/constraints.txt -e ".[test,apps,viewer,dali,deepspeed,faces]"  # DALI, DeepSpeed: CPU
# checkov, the security scan of k8s/ in tests/test_k8s.py, pins old releases of packaging, urllib3 and networkx,
# so it gets a virtualenv of its own (about 30 s, once) rather than the test extra.
if ! command -v checkov >/dev/null; then
  if [ -x build/checkov/bin/checkov ] || { python -m venv build/checkov && build/checkov/bin/pip install --quiet checkov; }; then
    export PATH="$PATH:$PWD/build/checkov/bin"
  else
    echo "warning: could not install checkov; its tests will be skipped" >&2
  fi
fi
# Debian's Prometheus server and promtool: the monitoring tests check rules and scrape a real run with them.
if ! command -v promtool >/dev/null; then
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
    || echo "warning: could not install Debian's prometheus; its tests will be skipped" >&2
fi
# Debian's Chromium and its driver: tests/test_viewer.py opens the viewer's page in them, headless.
if ! command -v chromedriver >/dev/null; then
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null) \
    || echo "warning: could not install Debian's chromium; the viewer's browser test will be skipped" >&2
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
