SUMMARY = "The neoflix command: keys, PKI, local control, export, fleet view"
DESCRIPTION = "Department keys, a small PKI, local control of neoflixd, verification and export of sealed recordings to MP4, configuration checks and the fleet view over MQTT."

require neoflix.inc

NEOFLIX_CRATE = "neoflix-cli"

# On the build host too: `neoflix keygen` and `neoflix pki` for provisioning images.
BBCLASSEXTEND = "native nativesdk"
