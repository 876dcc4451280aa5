#!/usr/bin/env bash
# Builds p11kms and runs the KMS server in the foreground on the embedded SoftHSM token.
#
#   scripts/run.sh                       # state in <repo>/var, listens on 127.0.0.1:4599
#   P11KMS_STATE_DIR=/srv/p11kms scripts/run.sh
#   P11KMS_LISTEN=127.0.0.1:8080 scripts/run.sh
#
# Steps: scripts/setup.sh (installs SoftHSM etc. if missing), `cargo build --release`,
# `p11kms token init` (idempotent: creates the token, PINs and a dev credential on first run),
# then `exec p11kms serve`, which prints `export AWS_...` lines to paste into another shell.
# With P11KMS_CONFIG set, the embedded token is left alone and the server uses that file.
# Works from any directory; stop the server with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Paths the caller gave relative to where they stand stay relative to that place.
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
[ -n "${P11KMS_STATE_DIR:-}" ] && P11KMS_STATE_DIR="$(absolute "$P11KMS_STATE_DIR")"
[ -n "${P11KMS_CONFIG:-}" ] && P11KMS_CONFIG="$(absolute "$P11KMS_CONFIG")"
[ -n "${CARGO_TARGET_DIR:-}" ] && CARGO_TARGET_DIR="$(absolute "$CARGO_TARGET_DIR")"
export P11KMS_STATE_DIR="${P11KMS_STATE_DIR:-$ROOT/var}"

"$ROOT/scripts/setup.sh"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

cd "$ROOT"
locked=()
if [ -f Cargo.lock ]; then
    if ! command -v git >/dev/null 2>&1 || ! git rev-parse --git-dir >/dev/null 2>&1 ||
        git ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
        locked=(--locked)
    fi
fi
cargo build --release "${locked[@]}"
bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/p11kms"

if [ -n "${P11KMS_CONFIG:-}" ]; then
    echo "run.sh: P11KMS_CONFIG=$P11KMS_CONFIG is set: serving that configuration (no token init)" >&2
else
    "$bin" token init
fi
exec "$bin" serve "$@"
