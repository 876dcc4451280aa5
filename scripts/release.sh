#!/usr/bin/env bash
# Builds the binary to ship: `cargo build --profile dist` (release, no debug info, symbols
# stripped) and prints its path. Works from any directory; honours CARGO_TARGET_DIR.
#
#   scripts/release.sh                 # -> target/dist/p11kms
#   install -m 0755 "$(scripts/release.sh)" /usr/local/bin/p11kms
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
cargo build --locked --profile dist --bin p11kms >&2
bin="$TARGET/dist/p11kms"
if command -v file >/dev/null 2>&1; then
    case "$(file -b "$bin")" in
    *"not stripped"*)
        echo "release: $bin is not stripped" >&2
        exit 1
        ;;
    esac
fi
printf '%s\n' "$bin"
