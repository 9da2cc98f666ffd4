#!/bin/sh
# Buildroot post-image script: sign the root filesystem image into an otter artifact.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="$(BR2_EXTERNAL_OTTER_PATH)/board/otter/post-image-artifact.sh"
#   BR2_ROOTFS_POST_SCRIPT_ARGS="--compatible acme-gw-2 --version 2026.11.2"
#   make OTTER_SIGNING_KEY=/secure/keys/release.key      (or --key FILE in the arguments)
#
# Needs BR2_PACKAGE_HOST_OTTER=y (otter-artifact in $HOST_DIR/bin). Arguments are passed to
# `otter-artifact create` as they are (add --security-version N, --level N, ...); the image
# defaults to $BINARIES_DIR/rootfs.ext4 (override with OTTER_ROOTFS=...), the output is
# $BINARIES_DIR/rootfs.otter. Buildroot calls the script with $BINARIES_DIR as $1. The key is
# not in the defconfig on purpose: it stays outside the tree, and a build without one fails
# here instead of producing an unsigned artifact.
set -eu
binaries=$1
shift
tool="$HOST_DIR/bin/otter-artifact"
[ -x "$tool" ] || { echo "post-image-artifact: $tool missing: enable BR2_PACKAGE_HOST_OTTER" >&2; exit 1; }
case " $* " in
  *" --key "*) ;;
  *)
    if [ -z "${OTTER_SIGNING_KEY:-}" ]; then
      echo "post-image-artifact: no signing key: run make OTTER_SIGNING_KEY=/path/to/release.key (or add --key to BR2_ROOTFS_POST_SCRIPT_ARGS); refusing to build an unsigned artifact" >&2
      exit 1
    fi
    [ -r "$OTTER_SIGNING_KEY" ] || { echo "post-image-artifact: $OTTER_SIGNING_KEY is not readable" >&2; exit 1; }
    set -- --key "$OTTER_SIGNING_KEY" "$@"
    ;;
esac
rootfs=${OTTER_ROOTFS:-$binaries/rootfs.ext4}
[ -f "$rootfs" ] || { echo "post-image-artifact: $rootfs not found (BR2_TARGET_ROOTFS_EXT2_4?)" >&2; exit 1; }
"$tool" create "$@" --image "rootfs=$rootfs" -o "$binaries/rootfs.otter"
"$tool" inspect "$binaries/rootfs.otter"
