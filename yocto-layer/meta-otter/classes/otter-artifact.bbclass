# otter-artifact.bbclass: the "otter" image type, a signed otter artifact of the root filesystem.
#
# Use it from an image (or for every image with IMAGE_CLASSES += "otter-artifact" in
# local.conf or the distro), then ask for the type:
#
#     IMAGE_FSTYPES += "otter"
#     OTTER_SIGNING_KEY = "/secure/keys/release.key"   # from `otter-artifact keygen`
#
# do_image_otter runs after the root filesystem image (OTTER_ROOTFS_FSTYPE, ext4 by default)
# is built and runs otter-artifact (from otter-native) on it:
#
#     otter-artifact create --key ${OTTER_SIGNING_KEY} --compatible ${OTTER_COMPATIBLE}
#         --version ${OTTER_VERSION} --security-version ${OTTER_SECURITY_VERSION}
#         --image rootfs=<image>.ext4 --level ${OTTER_ZSTD_LEVEL} -o ${IMAGE_NAME}.otter
#
# Being an image type, the artifact lands in DEPLOY_DIR_IMAGE through do_image_complete (and
# its sstate) like every other image file, and gets the usual ${IMAGE_LINK_NAME}.otter symlink.
# It fails with a clear message when no signing key is configured.
#
# The class also holds the defaults of the variables that files/wic/otter-ab.wks.in uses, so
# that WKS_FILE = "otter-ab.wks.in" works in any image that inherits it.
#
# OTTER_SIGNING_KEY (secret key file, otter-ed25519-secret, mode 0600; no default: an unsigned
# or test-signed artifact must never be produced by accident), OTTER_EXTRA_SIGNING_KEYS (key
# rotation) and OTTER_COMPATIBLE (device types, one --compatible each; default ${MACHINE}) are
# shared with the otter recipe: see otter-defaults.bbclass.

inherit otter-defaults

# --- artifact ---------------------------------------------------------------------------------
# Display version written into the manifest.
OTTER_VERSION ??= "${DISTRO_VERSION}"
# Anti-rollback counter: devices refuse artifacts below the highest they installed. Raise it
# for a release that fixes a security problem.
OTTER_SECURITY_VERSION ??= "0"
# zstd level 1..22 (19 is otter-artifact's default; lower builds faster).
OTTER_ZSTD_LEVEL ??= "19"
# Chunk size in KiB (multiple of 4, 4 KiB..16 MiB); the unit of resume and of skipping
# chunks the slot already holds.
OTTER_CHUNK_SIZE_KIB ??= "4096"
# Filesystem image type the rootfs payload is made from; the slots are written with it.
OTTER_ROOTFS_FSTYPE ??= "ext4"
# Free-form description, and anything else for `otter-artifact create`.
OTTER_DESCRIPTION ??= "${IMAGE_BASENAME} ${OTTER_VERSION} for ${MACHINE}"
OTTER_ARTIFACT_EXTRA_ARGS ??= ""

# --- A/B layout (files/wic/otter-ab.wks.in) ----------------------------------------------------

# Size of each root filesystem slot, in MiB. The rootfs image must fit: checked below.
OTTER_SLOT_SIZE_MB ??= "1024"
OTTER_WKS_BOOT_SIZE ??= "64M"
OTTER_WKS_DATA_SIZE ??= "512M"
# Alignment of every partition in KiB; the first partition starts here, so a raw U-Boot
# environment and the bootloader fit below it (8 MiB leaves room for the 4 MiB + 2 x 16 KiB
# defaults of u-boot-otter-env).
OTTER_WKS_ALIGN_KB ??= "8192"
OTTER_WKS_DISK ??= "mmcblk0"
OTTER_WKS_PTABLE ??= "msdos"
# wic's plugin for the boot partition: renamed from bootimg-partition to bootimg_partition
# after walnascar.
OTTER_WKS_BOOT_SOURCE ??= "${@'bootimg-partition' if set(d.getVar('LAYERSERIES_CORENAMES').split()) & {'scarthgap', 'styhead', 'walnascar'} else 'bootimg_partition'}"
# What bootimg_partition copies to the boot partition when the machine names nothing (as
# qemux86-64 does): the boot script and initial environment of u-boot-otter-env.
IMAGE_BOOT_FILES ??= "boot.scr${@' uboot.env' if d.getVar('OTTER_UBOOT_ENV_STORE') == 'fat' else ''}"

# wrynose and whinlatter look for wks files in <layer>/files/wic (and refuse a top-level wic/);
# scarthgap only searches <layer>/wic, so add the layer's folder there.
WKS_SEARCH_PATH:append = ":${OTTER_LAYERDIR}/files/wic"

python () {
    # The otter layout's boot partition carries u-boot-otter-env's files.
    wks = d.getVar('WKS_FILE') or ''
    if 'wic' in (d.getVar('IMAGE_FSTYPES') or '').split() and wks.startswith('otter-ab.wks') \
            and d.getVar('OTTER_BOOTLOADER') == 'uboot':
        d.appendVarFlag('do_image_wic', 'depends', ' u-boot-otter-env:do_deploy')
}

# ------------------------------------------------------------------------------------------------

IMAGE_TYPES:append = " otter"
IMAGE_TYPEDEP:otter = "${OTTER_ROOTFS_FSTYPE}"
do_image_otter[depends] += "otter-native:do_populate_sysroot"
# The key files are outside any recipe: rebuild when their paths change. (Their content is not
# hashed on purpose, so no secret-derived value ends up in task signatures or hash servers.)
do_image_otter[vardeps] += "OTTER_SIGNING_KEY OTTER_EXTRA_SIGNING_KEYS"

IMAGE_CMD:otter () {
    if [ -z "${OTTER_SIGNING_KEY}" ]; then
        bbfatal "otter: IMAGE_FSTYPES has 'otter' but OTTER_SIGNING_KEY is not set. Create a key pair once with 'otter-artifact keygen --out /secure/keys/release' (bitbake otter-native builds the tool) and set OTTER_SIGNING_KEY = \"/secure/keys/release.key\" in local.conf; put the .pub on devices with OTTER_KEYRING_FILES."
    fi
    keys=""
    for k in ${OTTER_SIGNING_KEY} ${OTTER_EXTRA_SIGNING_KEYS}; do
        [ -r "$k" ] || bbfatal "otter: signing key $k does not exist or is not readable"
        keys="$keys --key $k"
    done
    compatible=""
    for c in ${OTTER_COMPATIBLE}; do
        compatible="$compatible --compatible $c"
    done
    [ -n "$compatible" ] || bbfatal "otter: OTTER_COMPATIBLE is empty"

    rootfs="${IMGDEPLOYDIR}/${IMAGE_NAME}.${OTTER_ROOTFS_FSTYPE}"
    [ -f "$rootfs" ] || bbfatal "otter: root filesystem image $rootfs not found"
    size=$(stat -L -c %s "$rootfs")
    slot=$(expr ${OTTER_SLOT_SIZE_MB} \* 1048576)
    if [ "$size" -gt "$slot" ]; then
        bbfatal "otter: $rootfs is $size bytes, larger than a slot (OTTER_SLOT_SIZE_MB = ${OTTER_SLOT_SIZE_MB}); devices would refuse it"
    fi

    otter-artifact create $keys $compatible \
        --version "${OTTER_VERSION}" \
        --security-version ${OTTER_SECURITY_VERSION} \
        --description "${OTTER_DESCRIPTION}" \
        --image rootfs="$rootfs" \
        --level ${OTTER_ZSTD_LEVEL} \
        --chunk-size-kib ${OTTER_CHUNK_SIZE_KIB} \
        ${OTTER_ARTIFACT_EXTRA_ARGS} \
        -o "${IMGDEPLOYDIR}/${IMAGE_NAME}.otter"
    otter-artifact inspect "${IMGDEPLOYDIR}/${IMAGE_NAME}.otter"
}
