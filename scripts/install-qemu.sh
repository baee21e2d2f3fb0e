#!/usr/bin/env bash
# aarch64 under emulation (docs/operating.md, "aarch64 under emulation"): Debian's qemu-user-static and
# binfmt-support, binfmt_misc mounted, and the aarch64 emulator registered with the kernel, so that
# `farm image build --arch arm64` and the linux-aarch64 containers run arm64 programs on an x86_64 host.
# Debian registers the emulator with the F (fix-binary) flag: the kernel keeps it open, so it works in
# chroots and containers that do not carry it. Idempotent; as root; prints nothing to stdout; a host
# that cannot register it (no binfmt_misc) gets a warning, not a failure.
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0
case "$(uname -m)" in aarch64|arm64) exit 0;; esac  # native: nothing to emulate
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-qemu: qemu-user-static and binfmt-support are needed for linux-aarch64 builds: install them as root" >&2
    exit 0
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
        echo "install-qemu: cannot mount binfmt_misc (a container without privileges?): no aarch64 emulation" >&2
        exit 0; }
fi
if [ ! -x /usr/bin/qemu-aarch64-static ] || ! command -v update-binfmts >/dev/null 2>&1; then
    echo "install-qemu: installing qemu-user-static and binfmt-support" >&2
    bash "$(dirname "$0")/apt-install-no-services.sh" qemu-user-static binfmt-support
fi
update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
update-binfmts --enable qemu-aarch64 >&2 || true
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "install-qemu: the aarch64 emulator is not registered (/proc/sys/fs/binfmt_misc/qemu-aarch64):" \
         "linux-aarch64 builds and their tests are skipped" >&2
    exit 0
}
