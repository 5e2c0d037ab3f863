#!/usr/bin/env bash
# Set up intformer with its test dependencies, lint it (ruff) and run the default (fast) test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m slow` for the slow tier.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# Debian packages the ARM tests need (cross toolchains, objdump, qemu-user and debootstrap for the emulated
# board; g++ and make for the runner bundle); installed only when missing. Where apt-get cannot run, the tests
# that need them skip and say why.
apt_missing=()
need() { [ -e "$1" ] || command -v "$1" >/dev/null 2>&1 || apt_missing+=("${@:2}"); }
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need /usr/aarch64-linux-gnu/lib/crti.o libc6-dev-arm64-cross
need aarch64-linux-gnu-objdump binutils-aarch64-linux-gnu
need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu   # the runner bundle for rpi5 (intformer package)
need g++ g++
need make make
need arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf
need /usr/arm-linux-gnueabihf/lib/crti.o libc6-dev-armhf-cross
need qemu-aarch64 qemu-user
need /usr/sbin/debootstrap debootstrap
if [ ${#apt_missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
        echo "tests/run.sh: installing ${apt_missing[*]}"
        $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
            --no-install-recommends "${apt_missing[@]}" >/dev/null \
            || echo "tests/run.sh: warning: could not install ${apt_missing[*]}; the ARM tests will skip"
    else
        echo "tests/run.sh: cannot run apt-get here; the ARM tests will skip (missing: ${apt_missing[*]})"
    fi
fi

"$PY" -m pip install --disable-pip-version-check -q -e '.[test]'
# the lint first: seconds, and a finding fails the run before the long tests start (rules: pyproject.toml)
"$PY" -m ruff check .
exec "$PY" -m pytest "$@"
