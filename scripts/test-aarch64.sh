#!/usr/bin/env bash
# Runs the kernel tests for aarch64 (the NEON kernels) on an x86-64 box:
# cross-compiled, run under qemu's user-mode emulator (.cargo/config.toml
# names the linker and runner). Installs the target, the cross linker and
# qemu when missing; where they cannot be installed it says so and skips
# (exit 0), while a failing test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() {
    echo "warning: NEON kernels not tested: $1" >&2
    exit 0
}
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
    $sudo_cmd apt-get install -y -q qemu-user gcc-aarch64-linux-gnu >/dev/null 2>&1 \
        || skip "could not install qemu-user and gcc-aarch64-linux-gnu with apt-get"
fi
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 \
    || skip "could not add the aarch64-unknown-linux-gnu target with rustup"
# The MoE ops' per-expert matmul bits too (kernels/tests/cpu_moe.rs).
cargo test -p strata-kernels --target aarch64-unknown-linux-gnu --lib --test cpu_moe "$@"
