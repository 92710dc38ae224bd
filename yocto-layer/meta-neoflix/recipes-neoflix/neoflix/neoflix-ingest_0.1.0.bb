# nooelint: oelint.var.bbclassextend - a system service of the target, never built for the host
SUMMARY = "Neoflix ingest server: receives sealed recordings over mutual TLS"
DESCRIPTION = "The department server: checks every piece of a sealed recording and its hash chain, stores it per device and answers a receipt. It never holds the department key."

require neoflix.inc

NEOFLIX_CRATE = "neoflix-ingest"

inherit systemd useradd

SYSTEMD_SERVICE:${PN} = "neoflix-ingest.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system neoflix-ingest"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/neoflix-ingest --no-create-home --shell /sbin/nologin --gid neoflix-ingest neoflix-ingest"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/neoflix-ingest.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/tmpfiles.d/neoflix-ingest.conf ${D}${nonarch_libdir}/tmpfiles.d/
}

FILES:${PN} += "\
    ${nonarch_libdir}/tmpfiles.d/neoflix-ingest.conf \
    ${systemd_system_unitdir}/neoflix-ingest.service \
"
