# Shared by scripts/build-web and scripts/test-wasm: the wasm32 target and the wasm-bindgen
# command line tools, whose version must be exactly the wasm-bindgen crate's in Cargo.lock (the
# generated JavaScript and the compiled module must agree). Sourced, not run.

neoflix_wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

neoflix_require_wasm_tools() {
  rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || {
    neoflix_log "adding the wasm32-unknown-unknown target (first run only)"
    rustup target add wasm32-unknown-unknown
  }
  local want have
  want=$(neoflix_wasm_bindgen_version)
  have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}') || true
  if [ "$have" != "$want" ]; then
    neoflix_log "installing wasm-bindgen-cli $want (first run only)"
    # --locked first; when the registry lacks one of its pinned dependencies, let cargo pick
    # compatible versions (the tool's version itself is pinned all the same).
    cargo install --quiet --locked wasm-bindgen-cli --version "$want" \
      || cargo install --quiet wasm-bindgen-cli --version "$want"
  fi
}
