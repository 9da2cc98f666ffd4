################################################################################
#
# otter
#
################################################################################

# The revision otter.hash covers; BR2_PACKAGE_OTTER_VERSION (shared by otter and host-otter)
# defaults to it.
OTTER_PINNED_VERSION = 9ecc2a670a0ca7828b3a5a8386c64bb1965ec760
OTTER_VERSION = $(or $(call qstrip,$(BR2_PACKAGE_OTTER_VERSION)),$(OTTER_PINNED_VERSION))
OTTER_SITE = https://github.com/otter-ota/otter.git
OTTER_SITE_METHOD = git
OTTER_LICENSE = Apache-2.0 or MIT
# The repository has no LICENSE-* files yet; the workspace Cargo.toml states the license.
OTTER_LICENSE_FILES = Cargo.toml

# Any other revision has no hash in otter.hash: download it unchecked, as Buildroot does for
# a custom kernel version.
ifneq ($(OTTER_VERSION),$(OTTER_PINNED_VERSION))
BR_NO_CHECK_HASH_FOR += $(OTTER_SOURCE)
endif

# Rust >= 1.88 (the workspace's rust-version). Config.in hides otter on Buildroot releases
# older than the first with such a Rust; this checks the Rust this tree really builds, so a
# downgraded or old rust.mk stops here with a message instead of deep inside cargo.
OTTER_MIN_RUST_VERSION = 1.88
OTTER_RUST_VERSION = $(if $(BR2_PACKAGE_HOST_RUST_BIN),$(RUST_BIN_VERSION),$(RUST_VERSION))
ifneq ($(BR2_PACKAGE_OTTER)$(BR2_PACKAGE_HOST_OTTER),)
ifneq ($(firstword $(shell printf '%s\n' $(OTTER_MIN_RUST_VERSION) $(OTTER_RUST_VERSION) | sort -V)),$(OTTER_MIN_RUST_VERSION))
$(error otter needs Rust >= $(OTTER_MIN_RUST_VERSION), but this Buildroot builds Rust '$(OTTER_RUST_VERSION)' (package/rust, package/rust-bin): use Buildroot >= 2026.02)
endif
endif

# The workspace root is a virtual manifest, so the infrastructure's `cargo install --path ./`
# cannot be used: build the packages we need and install their binaries ourselves.
OTTER_CARGO_BUILD_OPTS = -p otterd -p otter-artifact-tool
HOST_OTTER_CARGO_BUILD_OPTS = -p otter-artifact-tool

OTTER_BIN_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)
HOST_OTTER_BIN_DIR = $(@D)/target/release

OTTER_CONFIG_FILE = $(call qstrip,$(BR2_PACKAGE_OTTER_CONFIG_FILE))
OTTER_KEYRING_FILES = $(call qstrip,$(BR2_PACKAGE_OTTER_KEYRING_FILES))
OTTER_FW_ENV_CONFIG = $(call qstrip,$(BR2_PACKAGE_OTTER_FW_ENV_CONFIG))
OTTER_UBOOT_BOARD_CMD = $(call qstrip,$(BR2_PACKAGE_OTTER_UBOOT_BOARD_CMD))

# otterctl (cli/) is built and installed when the source tree has it.
define OTTER_BUILD_OTTERCTL
	if [ -f $(@D)/cli/Cargo.toml ]; then \
		cd $(@D) && \
		$(TARGET_MAKE_ENV) $(TARGET_CONFIGURE_OPTS) $(PKG_CARGO_ENV) $(OTTER_CARGO_ENV) \
			cargo build --offline $(if $(BR2_ENABLE_DEBUG),,--release) \
			--manifest-path Cargo.toml --locked \
			-p $$(sed -n 's/^name *= *"\(.*\)"/\1/p' cli/Cargo.toml | head -n 1); \
	fi
endef
OTTER_POST_BUILD_HOOKS += OTTER_BUILD_OTTERCTL

define OTTER_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(OTTER_BIN_DIR)/otterd $(TARGET_DIR)/usr/bin/otterd
	if [ -x $(OTTER_BIN_DIR)/otterctl ]; then \
		$(INSTALL) -D -m 0755 $(OTTER_BIN_DIR)/otterctl $(TARGET_DIR)/usr/bin/otterctl; \
	fi
	$(if $(BR2_PACKAGE_OTTER_ARTIFACT_TOOL), \
		$(INSTALL) -D -m 0755 $(OTTER_BIN_DIR)/otter-artifact $(TARGET_DIR)/usr/bin/otter-artifact)
	$(INSTALL) -D -m 0644 \
		$(if $(OTTER_CONFIG_FILE),$(OTTER_CONFIG_FILE),$(@D)/systemd/otter.toml.example) \
		$(TARGET_DIR)/etc/otter/otter.toml
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/etc/otter/keys
	for k in $(OTTER_KEYRING_FILES); do \
		grep -q '^otter-ed25519-public ' $$k || { echo "otter: $$k is not an otter public key" >&2; exit 1; }; \
		$(INSTALL) -m 0644 $$k $(TARGET_DIR)/etc/otter/keys/ || exit 1; \
	done
	$(if $(OTTER_FW_ENV_CONFIG), \
		$(INSTALL) -D -m 0644 $(OTTER_FW_ENV_CONFIG) $(TARGET_DIR)/etc/fw_env.config)
	$(INSTALL) -d -m 0700 $(TARGET_DIR)/var/lib/otter
	if [ -f $(@D)/systemd/otter.tmpfiles.conf ]; then \
		$(INSTALL) -D -m 0644 $(@D)/systemd/otter.tmpfiles.conf \
			$(TARGET_DIR)/usr/lib/tmpfiles.d/otter.conf; \
	fi
	for f in $(@D)/systemd/*.conf; do \
		if [ -f $$f ] && grep -q '<busconfig' $$f; then \
			$(INSTALL) -D -m 0644 $$f $(TARGET_DIR)/usr/share/dbus-1/system.d/$$(basename $$f); \
		fi; \
	done
endef

# Every unit the repository ships is installed; otterd.service and the health check are
# enabled through their [Install] sections by systemd's preset-all at the end of the build.
define OTTER_INSTALL_INIT_SYSTEMD
	for f in $(@D)/systemd/*.service $(@D)/systemd/*.target $(@D)/systemd/*.timer; do \
		if [ -f $$f ]; then \
			$(INSTALL) -D -m 0644 $$f $(TARGET_DIR)/usr/lib/systemd/system/$$(basename $$f); \
		fi; \
	done
endef

# Without systemd: a SysV script that starts otterd. There is no boot-complete.target, so
# the configuration must list no health.units (otterd then runs the health commands and
# health.d scripts of a trial boot itself); see the help of BR2_PACKAGE_OTTER.
define OTTER_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(OTTER_PKGDIR)/S90otterd $(TARGET_DIR)/etc/init.d/S90otterd
endef

ifeq ($(BR2_PACKAGE_OTTER_UBOOT_SCRIPT),y)
OTTER_DEPENDENCIES += host-uboot-tools

ifeq ($(BR2_aarch64)$(BR2_aarch64_be),y)
OTTER_MKIMAGE_ARCH = arm64
else ifeq ($(BR2_arm)$(BR2_armeb),y)
OTTER_MKIMAGE_ARCH = arm
else ifeq ($(BR2_i386)$(BR2_x86_64),y)
OTTER_MKIMAGE_ARCH = x86
else ifeq ($(BR2_riscv),y)
OTTER_MKIMAGE_ARCH = riscv
else
OTTER_MKIMAGE_ARCH = $(BR2_ARCH)
endif

define OTTER_INSTALL_BOOT_SCRIPT
	test -f "$(OTTER_UBOOT_BOARD_CMD)" || \
		{ echo "otter: BR2_PACKAGE_OTTER_UBOOT_BOARD_CMD must name a board preamble" >&2; exit 1; }
	$(INSTALL) -d $(BINARIES_DIR)
	PATH=$(HOST_DIR)/bin:$$PATH sh $(@D)/bootloader-integration/uboot/mkbootscr \
		-A $(OTTER_MKIMAGE_ARCH) -b $(OTTER_UBOOT_BOARD_CMD) \
		-c $(BINARIES_DIR)/otter-boot.cmd $(BINARIES_DIR)/boot.scr
endef
OTTER_POST_INSTALL_TARGET_HOOKS += OTTER_INSTALL_BOOT_SCRIPT
endif

define HOST_OTTER_INSTALL_CMDS
	$(INSTALL) -D -m 0755 $(HOST_OTTER_BIN_DIR)/otter-artifact $(HOST_DIR)/bin/otter-artifact
endef

$(eval $(cargo-package))
$(eval $(host-cargo-package))
