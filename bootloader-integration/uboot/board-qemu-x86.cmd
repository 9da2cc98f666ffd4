# Board preamble: Debian's qemu-x86 U-Boot (u-boot-qemu, /usr/lib/u-boot/qemu-x86/u-boot.rom) on
# QEMU's `pc` machine with one virtio disk: p1 FAT boot, p2 slot A, p3 slot B (ext4).
# This U-Boot keeps its environment nowhere (no saveenv, no setexpr), so the A/B state lives in
# uboot.env on the FAT partition. Each slot carries its kernel and initramfs in /boot.
otter_env_store=fat
otter_env_dev="virtio 0:1"
otter_dev_A="virtio 0:2"
otter_dev_B="virtio 0:3"
otter_root_A=/dev/vda2
otter_root_B=/dev/vda3
otter_cmdline="console=ttyS0,115200 quiet panic=5 ro"
setenv otter_boot 'ext4load ${otter_dev} ${kernel_addr_r} /boot/vmlinuz && ext4load ${otter_dev} ${ramdisk_addr_r} /boot/initrd.img && zboot ${kernel_addr_r} 0 ${ramdisk_addr_r} ${filesize}'
