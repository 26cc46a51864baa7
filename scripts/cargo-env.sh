# Sourced by the scripts: put cargo on PATH (rustup installs it to ~/.cargo/bin)
# or fail with a clear message.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        if [[ -x $d/cargo ]]; then
            export PATH="$d:$PATH"
            break
        fi
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install a recent Rust toolchain first (rustup; Debian 12's" \
         "own cargo is too old for this crate's dependencies) and make sure ~/.cargo/bin is on PATH." >&2
    exit 1
fi
