SUMMARY = "otter's U-Boot A/B boot script, initial environment and fw_env.config"
DESCRIPTION = "Compiles otter's boot script (bootloader-integration/uboot/boot.cmd behind \
               a board preamble, mkimage -T script) and deploys boot.scr for the boot \
               partition, plus the initial A/B variables as text and as a binary environment \
               (mkenvimage). The package installs /etc/fw_env.config, which otterd and \
               fw_printenv/fw_setenv use to find the environment."
SECTION = "bootloaders"

require recipes-otter/otter/otter-source.inc
# Only the boot script sources (and the manifest with the license line) are needed.
OTTER_SOURCE_PATHS = "Cargo.toml bootloader-integration/uboot"

DEPENDS += "u-boot-tools-native"

inherit deploy otter-defaults

PACKAGE_ARCH = "${MACHINE_ARCH}"

# ---------------------------------------------------------------------------------------------
# Settings (see README.md and docs/bootloader.md of the otter repository)
# ---------------------------------------------------------------------------------------------

# mkimage -A value. Derived from TARGET_ARCH; set it if your board needs something else.
OTTER_UBOOT_ARCH ??= "${@otter_uboot_arch(d)}"

# A ready board preamble (absolute path on the build host, like the repository's
# bootloader-integration/uboot/board-*.cmd). When empty, one is generated from the variables
# below.
OTTER_UBOOT_BOARD_CMD ??= ""

# Where U-Boot keeps the A/B variables, OTTER_UBOOT_ENV_STORE: see otter-defaults.bbclass.
# (fat) device:partition holding uboot.env
OTTER_UBOOT_ENV_DEV ??= "mmc 0:1"
# Attempts a slot gets when none are left (1..9); also the initial BOOT_x_LEFT. otterd's
# bootloader.attempts (generated config) uses the same OTTER_BOOT_ATTEMPTS.
OTTER_UBOOT_ATTEMPTS ??= "${OTTER_BOOT_ATTEMPTS}"
# Slot A/B as U-Boot `interface dev:part`; the kernel's root= is OTTER_ROOT_A/B
# (otter-defaults.bbclass). Example defaults for an eMMC board: a build that leaves them warns.
OTTER_UBOOT_DEV_A ??= "mmc 0:2"
OTTER_UBOOT_DEV_B ??= "mmc 0:3"
# Rest of the kernel command line; the console comes from the first SERIAL_CONSOLES entry.
OTTER_KERNEL_CMDLINE ??= "${@otter_console(d)} rootwait ro"
# Loads and starts the kernel of slot ${otter_dev} (U-Boot variables are left as they are:
# bitbake does not expand names it does not know). The kernel and device tree come from the
# slot's /boot, so every slot boots its own kernel.
OTTER_UBOOT_BOOT_CMD ??= "load ${otter_dev} ${kernel_addr_r} /boot/${KERNEL_IMAGETYPE} && load ${otter_dev} ${fdt_addr_r} /boot/${fdtfile} && ${@otter_boot_command(d)} ${kernel_addr_r} - ${fdt_addr_r}"

# Environment size (hex), as CONFIG_ENV_SIZE of the U-Boot build.
OTTER_UBOOT_ENV_SIZE ??= "0x4000"

# /etc/fw_env.config. Defaults: redundant raw environment on eMMC (CONFIG_ENV_IS_IN_MMC,
# CONFIG_ENV_OFFSET=0x400000, CONFIG_ENV_OFFSET_REDUND=0x404000). For the "fat" store use
# OTTER_FW_ENV_DEVICE = "/boot/uboot.env", OTTER_FW_ENV_OFFSET = "0x0",
# OTTER_FW_ENV_REDUNDANT = "0" and mount the boot partition on /boot.
OTTER_FW_ENV_DEVICE ??= "/dev/mmcblk0"
OTTER_FW_ENV_OFFSET ??= "0x400000"
OTTER_FW_ENV_SIZE ??= "${OTTER_UBOOT_ENV_SIZE}"
OTTER_FW_ENV_REDUNDANT ??= "1"
OTTER_FW_ENV_DEVICE_REDUND ??= "${OTTER_FW_ENV_DEVICE}"
OTTER_FW_ENV_OFFSET_REDUND ??= "${@otter_redund_offset(d)}"
# Erase-sector size for NOR flash (4th column); empty for block devices and files.
OTTER_FW_ENV_SECTOR_SIZE ??= ""

# ---------------------------------------------------------------------------------------------

def otter_uboot_arch(d):
    arch = d.getVar('TARGET_ARCH')
    if arch == 'aarch64':
        return 'arm64'
    if arch.startswith('arm'):
        return 'arm'
    if arch in ('x86_64', 'i386', 'i486', 'i586', 'i686'):
        return 'x86'
    if arch.startswith('riscv'):
        return 'riscv'
    return arch

def otter_console(d):
    first = (d.getVar('SERIAL_CONSOLES') or '').split()
    if not first or ';' not in first[0]:
        return ''
    baud, tty = first[0].split(';', 1)
    return 'console=%s,%s' % (tty, baud)

def otter_boot_command(d):
    return {'zImage': 'bootz', 'Image': 'booti'}.get(d.getVar('KERNEL_IMAGETYPE') or '', 'booti')

def otter_redund_offset(d):
    # fw_env.config offsets are C-style numbers; sizes are hex even without 0x.
    off = int(d.getVar('OTTER_FW_ENV_OFFSET'), 0)
    size = int(d.getVar('OTTER_FW_ENV_SIZE'), 16)
    return hex(off + size)

python () {
    store = d.getVar('OTTER_UBOOT_ENV_STORE')
    if store not in ('native', 'fat'):
        bb.fatal("OTTER_UBOOT_ENV_STORE must be 'native' or 'fat', not '%s'" % store)
    attempts = d.getVar('OTTER_UBOOT_ATTEMPTS')
    if attempts not in [str(i) for i in range(1, 10)]:
        bb.fatal("OTTER_UBOOT_ATTEMPTS must be 1..9 (the boot script counts down over literal "
                 "values), not '%s'" % attempts)
}

do_configure[noexec] = "1"

python otter_uboot_warn_defaults() {
    if not d.getVar('OTTER_UBOOT_BOARD_CMD'):
        otter_warn_defaults(d, 'OTTER_UBOOT_DEV_A OTTER_UBOOT_DEV_B',
                            'where the boot script loads and roots each slot')
    otter_warn_defaults(d, 'OTTER_FW_ENV_DEVICE', 'where otterd finds the U-Boot environment')
}
do_compile[prefuncs] += "otter_uboot_warn_defaults"

do_compile() {
    cd ${B}
    if [ -n "${OTTER_UBOOT_BOARD_CMD}" ]; then
        [ -f "${OTTER_UBOOT_BOARD_CMD}" ] || bbfatal "OTTER_UBOOT_BOARD_CMD ${OTTER_UBOOT_BOARD_CMD} does not exist"
        cp "${OTTER_UBOOT_BOARD_CMD}" board.cmd
    else
        cat > board.cmd <<'PREAMBLE'
# Board preamble generated by meta-otter (u-boot-otter-env) from OTTER_* variables.
otter_env_store=${OTTER_UBOOT_ENV_STORE}
otter_env_dev="${OTTER_UBOOT_ENV_DEV}"
otter_env_size=${OTTER_UBOOT_ENV_SIZE}
otter_attempts=${OTTER_UBOOT_ATTEMPTS}
otter_dev_A="${OTTER_UBOOT_DEV_A}"
otter_dev_B="${OTTER_UBOOT_DEV_B}"
otter_root_A=${OTTER_ROOT_A}
otter_root_B=${OTTER_ROOT_B}
otter_cmdline="${OTTER_KERNEL_CMDLINE}"
setenv otter_boot '${OTTER_UBOOT_BOOT_CMD}'
PREAMBLE
    fi
    sh ${S}/bootloader-integration/uboot/mkbootscr -A ${OTTER_UBOOT_ARCH} -b board.cmd -c boot.cmd boot.scr

    # Initial A/B variables: the boot script defaults missing ones to the same values, so
    # these only make the state explicit (and give the "fat" store a valid first uboot.env).
    printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\n' \
        ${OTTER_UBOOT_ATTEMPTS} ${OTTER_UBOOT_ATTEMPTS} > otter-env.txt
    redund=""
    if [ "${OTTER_UBOOT_ENV_STORE}" = native ] && [ "${OTTER_FW_ENV_REDUNDANT}" = 1 ]; then
        redund="-r"
    fi
    mkenvimage $redund -s ${OTTER_UBOOT_ENV_SIZE} -o uboot.env otter-env.txt

    {
        echo "# ${sysconfdir}/fw_env.config generated by meta-otter (u-boot-otter-env) from OTTER_FW_ENV_*."
        echo "# device offset size [sector size]"
        echo "${OTTER_FW_ENV_DEVICE} ${OTTER_FW_ENV_OFFSET} ${OTTER_FW_ENV_SIZE} ${OTTER_FW_ENV_SECTOR_SIZE}"
        if [ "${OTTER_FW_ENV_REDUNDANT}" = 1 ]; then
            echo "${OTTER_FW_ENV_DEVICE_REDUND} ${OTTER_FW_ENV_OFFSET_REDUND} ${OTTER_FW_ENV_SIZE} ${OTTER_FW_ENV_SECTOR_SIZE}"
        fi
    } > fw_env.config
}
do_compile[file-checksums] += "${@'%s:True' % d.getVar('OTTER_UBOOT_BOARD_CMD') if d.getVar('OTTER_UBOOT_BOARD_CMD') else ''}"

do_install() {
    install -D -m 0644 ${B}/fw_env.config ${D}${sysconfdir}/fw_env.config
}

do_deploy() {
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/boot.scr
    install -m 0644 ${B}/boot.cmd ${DEPLOYDIR}/otter-boot.cmd
    install -m 0644 ${B}/otter-env.txt ${DEPLOYDIR}/otter-env.txt
    install -m 0644 ${B}/uboot.env ${DEPLOYDIR}/uboot.env
}
addtask deploy after do_compile before do_build

FILES:${PN} = "${sysconfdir}/fw_env.config"
CONFFILES:${PN} = "${sysconfdir}/fw_env.config"
