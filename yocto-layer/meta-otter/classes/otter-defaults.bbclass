# otter-defaults.bbclass: the integrator's settings that more than one part of meta-otter reads
# (the otter recipe's generated device config, u-boot-otter-env's boot script, the otter image
# type and the wks). Inherited by all of them, so each setting has one default, here. Set them
# globally (local.conf, distro or machine configuration), not per recipe, or the device config,
# the boot script and the artifacts disagree.

# Device types: the device's `compatible` is the first word, artifacts carry every word.
OTTER_COMPATIBLE ??= "${MACHINE}"

# Bootloader backend of otterd: "uboot" or "grub".
OTTER_BOOTLOADER ??= "uboot"
# Where U-Boot keeps the A/B variables: "native" (U-Boot's own environment, saveenv) or "fat"
# (a uboot.env file on the FAT boot partition, for a U-Boot without a writable environment;
# the image type then also puts uboot.env on the boot partition).
OTTER_UBOOT_ENV_STORE ??= "native"
# Boots a new slot gets before the bootloader falls back (1..9); the U-Boot script and otterd
# must agree on it.
OTTER_BOOT_ATTEMPTS ??= "3"

# The two root filesystem slots as Linux block devices (what otterd writes an update to) and as
# the kernel's root= (what the boot script passes). The defaults are an example for an eMMC
# board: a build that leaves them gets a warning.
OTTER_SLOT_A ??= "/dev/mmcblk0p2"
OTTER_SLOT_B ??= "/dev/mmcblk0p3"
OTTER_ROOT_A ??= "${OTTER_SLOT_A}"
OTTER_ROOT_B ??= "${OTTER_SLOT_B}"

# otterd's state directory and the data partition mounted on it (label and filesystem are also
# used by files/wic/otter-ab.wks.in).
OTTER_STATE_DIR ??= "${localstatedir}/lib/otter"
OTTER_DATA_LABEL ??= "otterdata"
OTTER_DATA_FSTYPE ??= "ext4"

# Update server (Eclipse hawkBit DDI). Empty URL: no [server] section, updates are installed
# locally (otterctl, D-Bus). The controller id and token are per device: provision them into
# /etc/otter/conf.d/ (see docs/hawkbit.md), or set OTTER_SERVER_CONTROLLER_ID for a
# single-device image.
OTTER_SERVER_URL ??= ""
OTTER_SERVER_TENANT ??= "DEFAULT"
OTTER_SERVER_AUTH ??= "target-token"
OTTER_SERVER_TOKEN_FILE ??= "${sysconfdir}/otter/hawkbit.token"
OTTER_SERVER_CONTROLLER_ID ??= ""

# Signing (image type "otter"): the secret key, and extra keys for a key rotation.
OTTER_SIGNING_KEY ??= ""
OTTER_EXTRA_SIGNING_KEYS ??= ""

# Public keys installed into /etc/otter/keys (the device's keyring). Default: the .pub next to
# OTTER_SIGNING_KEY, so a device trusts what the same build signs.
OTTER_KEYRING_FILES ??= "${@otter_default_keyring(d)}"

# Set to "0" to silence the warnings about settings left at their example defaults.
OTTER_WARN_DEFAULTS ??= "1"

def otter_default_keyring(d):
    key = d.getVar('OTTER_SIGNING_KEY') or ''
    if key.endswith('.key'):
        return key[:-len('.key')] + '.pub'
    return ''

def otter_left_at_default(d, var):
    """True when nothing but a ??= default gave VAR its value (there is no other assignment)."""
    return d.getVarFlag(var, '_defaultval', False) is not None and \
        d.getVar(var, False) == d.getVarFlag(var, '_defaultval', False)

def otter_warn_defaults(d, names, why):
    """Warns once per task for each of NAMES that still has its example default."""
    if d.getVar('OTTER_WARN_DEFAULTS') != '1':
        return
    for var in names.split():
        if otter_left_at_default(d, var):
            bb.warn("meta-otter: %s is left at its example default '%s' (%s). Set it for MACHINE "
                    "'%s' in local.conf or the machine configuration; OTTER_WARN_DEFAULTS = \"0\" "
                    "silences this." % (var, d.getVar(var), why, d.getVar('MACHINE')))
