# Board preamble, example: an arm64 board with the environment in eMMC (CONFIG_ENV_IS_IN_MMC,
# redundant) and both slots on the same eMMC: p1 boot, p2 slot A, p3 slot B.
# U-Boot loads the environment itself and has saveenv, so the native store is used.
# Adjust devices, addresses and the boot command to the board.
otter_env_store=native
otter_dev_A="mmc 0:2"
otter_dev_B="mmc 0:3"
otter_root_A=/dev/mmcblk0p2
otter_root_B=/dev/mmcblk0p3
otter_cmdline="console=ttymxc0,115200 rootwait ro"
setenv otter_boot 'load ${otter_dev} ${kernel_addr_r} /boot/Image && load ${otter_dev} ${fdt_addr_r} /boot/${fdtfile} && booti ${kernel_addr_r} - ${fdt_addr_r}'
