# otter A/B boot script for U-Boot: the default scheme (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT).
#
# Compile with `mkbootscr` next to this file (it prepends a board preamble and runs
# `mkimage -A <arch> -O linux -T script -C none`). The logic is explained in docs/bootloader.md.
#
# Variables shared with otterd (the contract; all values are plain decimal strings):
#   BOOT_ORDER    slots in order of preference, e.g. "A B"; a slot marked bad is dropped from it
#   BOOT_A_LEFT   boot attempts left for slot A (0..9); this script takes one per boot
#   BOOT_B_LEFT   the same for slot B
#   OTTER_TRIAL   written by otterd while a trial is running; kept but never read here
#
# Board settings: a board preamble (see board-*.cmd) or the board's default environment may
# set them; anything unset falls back to the default below. Settings are hush-local variables
# where possible so that `saveenv` does not store them.
#   otter_env_store  where the variables above are persisted:
#                      native  U-Boot's own environment (ENV_IS_IN_MMC, _SPI_FLASH, _FAT, ...),
#                              loaded by U-Boot before this script and written with `saveenv`
#                      fat     a `uboot.env` file on a FAT partition, for a U-Boot built without
#                              a writable environment: `fatload` + `env import -c`, then
#                              `env export -c` + `fatwrite`
#   otter_env_dev    (fat) device:partition holding the file, e.g. "mmc 0:1"
#   otter_env_file   (fat) file name, default uboot.env
#   otter_env_size   (fat) environment size, must match fw_env.config; default 0x4000
#   otter_env_addr   (fat) scratch RAM address, default ${loadaddr}
#   otter_env_keep   (fat) extra variable names to keep in the file besides the contract
#   otter_attempts   attempts a slot gets back when all are used up; default 3, at most 9
#   otter_dev_A/B    device:partition of each slot for the load commands, e.g. "mmc 0:2"
#   otter_root_A/B   root= for each slot, e.g. /dev/mmcblk0p2
#   otter_cmdline    the rest of the kernel command line (console=..., rootwait, ...)
#   otter_boot       (environment variable, run with `run`) loads and starts the kernel from
#                    ${otter_dev}; bootargs are set before it runs

test -n "${otter_env_store}" || otter_env_store=native
test -n "${otter_env_file}" || otter_env_file=uboot.env
test -n "${otter_env_size}" || otter_env_size=0x4000
test -n "${otter_env_addr}" || otter_env_addr=${loadaddr}
test -n "${otter_attempts}" || otter_attempts=3

# 1. Load the A/B state. In the native form U-Boot has already loaded it.
if test "${otter_env_store}" = fat; then
  if fatload ${otter_env_dev} ${otter_env_addr} ${otter_env_file} && env import -c ${otter_env_addr} ${filesize}; then
    echo "otter: A/B state loaded from ${otter_env_file}"
  else
    echo "otter: no valid ${otter_env_file} on ${otter_env_dev}, starting from the defaults"
  fi
fi
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT ${otter_attempts}
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT ${otter_attempts}

# 2. Take the first slot in BOOT_ORDER with attempts left, and one of its attempts.
# The decrement is a chain over literal values instead of `setexpr`: it runs on a U-Boot
# without setexpr, and setexpr computes in hex, which would turn the decimal "10" into "f".
# Values are decimal 1..9; RAUC's hex spelling 0x1..0x9 is accepted too. Anything else (0,
# empty, 10 and more, garbage) counts as no attempts left.
otter_slot=none
for otter_s in ${BOOT_ORDER}; do
  if test "${otter_slot}" = none; then
    otter_left=0
    if test "${otter_s}" = A; then
      otter_left=${BOOT_A_LEFT}
    elif test "${otter_s}" = B; then
      otter_left=${BOOT_B_LEFT}
    fi
    otter_new=none
    if test "${otter_left}" = 1 -o "${otter_left}" = 0x1; then otter_new=0
    elif test "${otter_left}" = 2 -o "${otter_left}" = 0x2; then otter_new=1
    elif test "${otter_left}" = 3 -o "${otter_left}" = 0x3; then otter_new=2
    elif test "${otter_left}" = 4 -o "${otter_left}" = 0x4; then otter_new=3
    elif test "${otter_left}" = 5 -o "${otter_left}" = 0x5; then otter_new=4
    elif test "${otter_left}" = 6 -o "${otter_left}" = 0x6; then otter_new=5
    elif test "${otter_left}" = 7 -o "${otter_left}" = 0x7; then otter_new=6
    elif test "${otter_left}" = 8 -o "${otter_left}" = 0x8; then otter_new=7
    elif test "${otter_left}" = 9 -o "${otter_left}" = 0x9; then otter_new=8
    fi
    if test "${otter_new}" != none; then
      setenv BOOT_${otter_s}_LEFT ${otter_new}
      otter_slot=${otter_s}
      echo "otter: slot ${otter_s} chosen, ${otter_new} attempts left after this one"
    fi
  fi
done

# 3. No slot left: give every slot its attempts back; after the reset below the first slot in
# BOOT_ORDER boots again.
if test "${otter_slot}" = none; then
  echo "otter: no slot in '${BOOT_ORDER}' has attempts left; resetting both to ${otter_attempts}"
  setenv BOOT_A_LEFT ${otter_attempts}
  setenv BOOT_B_LEFT ${otter_attempts}
fi

# 4. Persist before booting, so a slot that hangs or panics has used up its attempt.
# A failed save is reported but the boot goes on: refusing to boot would not help the device.
if test "${otter_env_store}" = fat; then
  if env export -c -s ${otter_env_size} ${otter_env_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT OTTER_TRIAL ${otter_env_keep} && fatwrite ${otter_env_dev} ${otter_env_addr} ${otter_env_file} ${otter_env_size}; then
    echo "otter: A/B state saved"
  else
    echo "otter: WARNING: could not save the A/B state to ${otter_env_file}"
  fi
else
  saveenv || echo "otter: WARNING: saveenv failed"
fi

if test "${otter_slot}" = none; then
  reset
fi

# 5. Boot the chosen slot.
if test "${otter_slot}" = A; then
  otter_dev="${otter_dev_A}"
  otter_root=${otter_root_A}
else
  otter_dev="${otter_dev_B}"
  otter_root=${otter_root_B}
fi
setenv bootargs "root=${otter_root} otter.slot=${otter_slot} ${otter_cmdline}"
echo "otter: booting slot ${otter_slot} from ${otter_dev}: ${bootargs}"
run otter_boot
# Only reached when loading or starting the kernel failed. The attempt is already spent, so
# a reset retries and, once the attempts are gone, falls back to the other slot.
echo "otter: booting slot ${otter_slot} failed; resetting"
reset
