#!/usr/bin/env bash
# Installs what the build and the tests need from the system, only when it is
# missing, so that `make run` and `make test` work on a fresh Debian machine.
#   - libclang (bindgen, for RocksDB's -sys crate) and a C++ compiler
#   - iproute2 / iptables (network-namespace fault tests)
#   - prometheus (brings promtool): the monitoring test runs the shipped
#     alert rules and dashboard queries through a real Prometheus, and the
#     playground starts one when it is installed
#   - chromium (headless): the web console's browser test
#   - python3-yaml: deploy/check_deploy.py reads the compose and k8s files
#   - protoc: the etcd-client crate (the bench's etcd target) compiles
#     etcd's protos with it (ringkv's own protos use protoc-bin-vendored)
#   - etcd-server: `ringkv bench --etcd` is tested against a real etcd, and
#     `make bench` measures etcd beside ringkv in the same sitting
set -euo pipefail

need=()
have_libclang() {
    # What clang-sys loads: libclang.so or libclang-N.so, not libclang-cpp
    # (which a bare LLVM runtime brings without the C API bindgen needs).
    local d
    for d in /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
        ls "$d"/libclang.so "$d"/libclang-[0-9]*.so "$d"/libclang.so.[0-9]* >/dev/null 2>&1 && return 0
    done
    return 1
}
have_libclang || need+=(libclang-dev clang)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# PyYAML for whichever python3 is first on PATH (a pyenv one does not see
# Debian's python3-yaml): pip first, Debian's package otherwise.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    echo "setup: installing PyYAML for $(command -v python3)" >&2
    python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || need+=(python3-yaml)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)

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
