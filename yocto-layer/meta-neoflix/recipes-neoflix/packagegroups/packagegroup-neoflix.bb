SUMMARY = "Neoflix room box: daemon, command, camera tools and time synchronisation"
DESCRIPTION = "Everything a Neoflix room box runs: neoflixd and neoflix, V4L2 tools for installing the camera, and chrony, because recording times are evidence."
BUGTRACKER = "https://example.invalid/neoflix/issues"
SECTION = "multimedia"

inherit packagegroup

PACKAGES = "${PN}"

RDEPENDS:${PN} = "\
    chrony \
    neoflix \
    neoflixd \
    v4l-utils \
"
