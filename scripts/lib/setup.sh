# Shared by scripts/test, scripts/demo and scripts/bench: installs what a fresh Debian 12 machine
# lacks. Sourced, not run.

# System packages: GStreamer 1.22 (headers for gstreamer-rs, the plugins the pipeline uses:
# videotestsrc/videoconvert and audiotestsrc/opusenc from base, alsasrc from -alsa, v4l2src/jpegdec
# from good, h264parse from bad, x264enc from ugly), gst-launch for the benchmark baseline, ffmpeg/ffprobe to check exports, curl as an
# independent HTTPS client in the upload tests, mosquitto as the department broker in the MQTT
# tests and the demo (started by them on loopback, never as a system service), Chromium and its
# WebDriver for the review page's browser test and the opening code's wasm32 tests, certutil to
# make that browser trust the test CA, strace to kill a process at an exact system call in the
# crash tests, libclang for the v4l crate's bindings to the kernel's V4L2 header (bindgen),
# iproute2 (ip, tc) for the chaos suite's network namespaces and netem in the VM lab,
# PostgreSQL for the department server's shared database (each test starts a cluster of its own
# on loopback as the package's postgres user; the package's own cluster is not used), HAProxy
# in front of two server replicas as docs/ingest.md deploys them.
NEOFLIX_APT_PACKAGES=(
  pkg-config build-essential
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-alsa gstreamer1.0-tools
  ffmpeg curl mosquitto
  chromium chromium-driver libnss3-tools
  strace libclang-dev iproute2 postgresql haproxy
)

neoflix_log() { printf '==> %s\n' "$*" >&2; }

neoflix_install_packages() {
  local missing=()
  for p in "${NEOFLIX_APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  neoflix_log "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

neoflix_require_cargo() {
  command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
  }
  export PATH="$HOME/.cargo/bin:$PATH"
}

# Garage, the distributed S3-compatible store: the object-store tests and benchmarks run a
# three-node cluster of it on loopback (tests/src/garage.rs). Pinned: its behaviour is what the
# tests check.
neoflix_require_garage() {
  local garage="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
  if ! "$garage" --version 2>/dev/null | grep -q "cargo:2\.5\.0 "; then
    neoflix_log "installing Garage 2.5.0 (first run only: a release build of some minutes)"
    cargo install --locked --quiet --force garage --version 2.5.0
  fi
}

neoflix_require_cargo_deb() {
  if ! command -v cargo-deb >/dev/null 2>&1; then
    neoflix_log "installing cargo-deb (first run only)"
    cargo install --locked --quiet cargo-deb
  fi
}
