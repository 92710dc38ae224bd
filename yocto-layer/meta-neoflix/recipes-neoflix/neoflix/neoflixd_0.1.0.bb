# nooelint: oelint.var.bbclassextend - a system service of the target, never built for the host
SUMMARY = "Neoflix room daemon: sealed pre-roll, pedal-triggered recordings"
DESCRIPTION = "Records the room camera into an encrypted pre-roll ring, starts sealed recordings on a pedal or MQTT command, uploads them over mutual TLS and reports readiness over MQTT."

require neoflix.inc

NEOFLIX_CRATE = "neoflix-daemon"

# clang-native (meta-clang): the v4l crate generates its V4L2 bindings with bindgen, which needs
# libclang; the target's kernel headers come from the sysroot.
DEPENDS += "clang-native gstreamer1.0 gstreamer1.0-plugins-base"
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export BINDGEN_EXTRA_CLANG_ARGS = "--sysroot=${STAGING_DIR_TARGET}"

SRC_URI += "\
    file://department.pub \
    file://neoflixd.toml \
"

inherit systemd useradd

SYSTEMD_SERVICE:${PN} = "neoflixd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system neoflix; --system gpio"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/neoflix --no-create-home --shell /sbin/nologin --gid neoflix --groups video,input,gpio,audio neoflix"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/tmpfiles.d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${S}/systemd/neoflixd.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/tmpfiles.d/neoflixd.conf ${D}${nonarch_libdir}/tmpfiles.d/
    install -m 0644 ${S}/systemd/udev/60-neoflix-gpio.rules ${D}${nonarch_base_libdir}/udev/rules.d/
    install -d -m 0755 ${D}${sysconfdir}/neoflix
    install -m 0644 ${WORKDIR}/neoflixd.toml ${D}${sysconfdir}/neoflix/neoflixd.toml
    install -m 0644 ${WORKDIR}/department.pub ${D}${sysconfdir}/neoflix/department.pub
}

FILES:${PN} += "\
    ${nonarch_base_libdir}/udev/rules.d/60-neoflix-gpio.rules \
    ${nonarch_libdir}/tmpfiles.d/neoflixd.conf \
    ${systemd_system_unitdir}/neoflixd.service \
"
CONFFILES:${PN} = "${sysconfdir}/neoflix/department.pub ${sysconfdir}/neoflix/neoflixd.toml"

RDEPENDS:${PN} = "\
    gstreamer1.0 \
    gstreamer1.0-plugins-bad-videoparsersbad \
    gstreamer1.0-plugins-base-alsa \
    gstreamer1.0-plugins-base-app \
    gstreamer1.0-plugins-base-audioconvert \
    gstreamer1.0-plugins-base-audioresample \
    gstreamer1.0-plugins-base-audiotestsrc \
    gstreamer1.0-plugins-base-opus \
    gstreamer1.0-plugins-base-videoconvertscale \
    gstreamer1.0-plugins-base-videotestsrc \
    gstreamer1.0-plugins-good-jpeg \
    gstreamer1.0-plugins-good-video4linux2 \
    neoflix \
"
# x264 (the software encoder of boards without one: Pi 5, Jetson Orin Nano) is in -ugly and needs
# LICENSE_FLAGS_ACCEPTED = "commercial" in local.conf; see docs/firmware.md.
RRECOMMENDS:${PN} = "gstreamer1.0-plugins-ugly-x264"
