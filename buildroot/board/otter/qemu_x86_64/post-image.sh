#!/bin/sh
# Post-image step of otter_qemu_x86_64_defconfig: the initial A/B environment for the boot
# partition, then the A/B disk (genimage.cfg). Buildroot passes $BINARIES_DIR as $1 and
# BR2_ROOTFS_POST_SCRIPT_ARGS after it (meant for post-image-artifact.sh; ignored here).
set -eu
board=$(dirname "$0")
binaries=$1

# Slot A first, three attempts each: what the boot script assumes when the file is empty.
printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' >"$binaries/otter-env.txt"
"$HOST_DIR/bin/mkenvimage" -s 0x4000 -o "$binaries/uboot.env" "$binaries/otter-env.txt"

support/scripts/genimage.sh -c "$board/genimage.cfg"
