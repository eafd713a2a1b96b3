#!/usr/bin/env bash
# Runs the kernel tests for aarch64 (the NEON kernels) on an x86-64 box:
# cross-compiled, run under qemu's user-mode emulator (.cargo/config.toml
# names the linker and runner). Installs both with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q qemu-user gcc-aarch64-linux-gnu
fi
rustup target add aarch64-unknown-linux-gnu
cargo test -p strata-kernels --target aarch64-unknown-linux-gnu --lib "$@"
