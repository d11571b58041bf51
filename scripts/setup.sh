#!/usr/bin/env bash
# Installs what the build and the tests need from the system, only when it is
# missing, so that `make run` and `make test` work on a fresh Debian machine.
#   - libclang (bindgen, for RocksDB's -sys crate) and a C++ compiler
#   - iproute2 / iptables (network-namespace fault tests)
# protoc comes from the protoc-bin-vendored crate; nothing else is needed.
set -euo pipefail

need=()
have_libclang() {
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 ||
        ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 ||
        ls /usr/lib/aarch64-linux-gnu/libclang*.so* >/dev/null 2>&1
}
have_libclang || need+=(libclang-dev clang)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

echo "setup: installing ${need[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "setup: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
