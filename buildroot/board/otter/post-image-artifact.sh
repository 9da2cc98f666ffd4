#!/bin/sh
# Buildroot post-image script: sign the root filesystem image into an otter artifact.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="$(BR2_EXTERNAL_OTTER_PATH)/board/otter/post-image-artifact.sh"
#   BR2_ROOTFS_POST_SCRIPT_ARGS="--key /secure/keys/release.key --compatible acme-gw-2 --version 2026.11.2"
#
# Needs BR2_PACKAGE_HOST_OTTER=y (otter-artifact in $HOST_DIR/bin). Arguments are passed to
# `otter-artifact create` as they are (add --security-version N, --level N, ...); the image
# defaults to $BINARIES_DIR/rootfs.ext4 (override with OTTER_ROOTFS=...), the output is
# $BINARIES_DIR/rootfs.otter. Buildroot calls the script with $BINARIES_DIR as $1.
set -eu
binaries=$1
shift
tool="$HOST_DIR/bin/otter-artifact"
[ -x "$tool" ] || { echo "post-image-artifact: $tool missing: enable BR2_PACKAGE_HOST_OTTER" >&2; exit 1; }
case " $* " in
  *" --key "*) ;;
  *) echo "post-image-artifact: no --key given in BR2_ROOTFS_POST_SCRIPT_ARGS; refusing to build an unsigned artifact" >&2; exit 1 ;;
esac
rootfs=${OTTER_ROOTFS:-$binaries/rootfs.ext4}
[ -f "$rootfs" ] || { echo "post-image-artifact: $rootfs not found (BR2_TARGET_ROOTFS_EXT2_4?)" >&2; exit 1; }
"$tool" create "$@" --image "rootfs=$rootfs" -o "$binaries/rootfs.otter"
"$tool" inspect "$binaries/rootfs.otter"
