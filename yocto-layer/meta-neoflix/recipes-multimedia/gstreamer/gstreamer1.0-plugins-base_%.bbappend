# neoflixd records the room's sound ([audio] in neoflixd.toml): alsasrc captures it, opusenc
# encodes it. Neither is in gstreamer1.0-plugins-base's default PACKAGECONFIG in every release.
PACKAGECONFIG:append = " alsa opus"
