# otter board preamble for Buildroot's qemu_x86_64 with U-Boot (qemu-x86_64_defconfig) as
# QEMU's firmware and one virtio disk laid out by genimage.cfg: p1 FAT boot (boot.scr,
# uboot.env), p2 slot A, p3 slot B, p4 data. That U-Boot has no writable environment, so the
# A/B state lives in uboot.env on the boot partition ("fat" store). Each slot boots the
# bzImage in its own /boot (BR2_LINUX_KERNEL_INSTALL_TARGET).
otter_env_store=fat
otter_env_dev="virtio 0:1"
otter_dev_A="virtio 0:2"
otter_dev_B="virtio 0:3"
otter_root_A=/dev/vda2
otter_root_B=/dev/vda3
otter_cmdline="console=ttyS0,115200 rootwait ro"
setenv otter_boot 'ext4load ${otter_dev} ${kernel_addr_r} /boot/bzImage && zboot ${kernel_addr_r}'
