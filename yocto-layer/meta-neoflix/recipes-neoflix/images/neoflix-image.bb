SUMMARY = "Neoflix room box appliance image"
DESCRIPTION = "Read-only root file system with the Neoflix room daemon, the camera stack and time synchronisation; no shell login by default. Writable state lives in /var/lib/neoflix."
BUGTRACKER = "https://example.invalid/neoflix/issues"
SECTION = "images"
LICENSE = "MIT"
# An image is no product of its own for CVE checks.
CVE_PRODUCT = ""

inherit core-image

IMAGE_INSTALL:append = " packagegroup-neoflix"

# Read-only root: recordings and state on /var/lib (a writable data partition), the pre-roll in
# RAM under /run. No debug-tweaks: no empty root password, no root login.
IMAGE_FEATURES:append = " read-only-rootfs"
IMAGE_FEATURES:remove = "allow-empty-password allow-root-login debug-tweaks empty-root-password"

# No getty on the serial console: no shell login by default.
SERIAL_CONSOLES = ""
