#!/usr/bin/env bash
# Builds the Kryoptic PKCS#11 module (the second token of the test suite) and prints its path.
#
#   scripts/kryoptic.sh            # prints e.g. <target>/kryoptic/1.5.4-<hash>/libkryoptic_pkcs11.so
#
# Kryoptic comes from its source in the Rust crate registry (crate `kryoptic`, pinned below):
# a scratch crate depending on it is `cargo fetch`ed, the crate's source is copied out of
# $CARGO_HOME/registry/src and built with its own Cargo.lock (--locked). Default features need
# OpenSSL >= 3.2 (EdDSA), which Debian 12 lacks, so an explicit feature set is used (see
# ../shared/notes/pkcs11-tokens.md). The module is cached under <target>/kryoptic/ keyed by
# version and features: a second run prints the cached path and builds nothing.
#
# Installs the Debian build dependencies (build-essential pkg-config libssl-dev libsqlite3-dev
# libclang-dev) with apt-get when they are missing. Everything but the path goes to stderr.
set -euo pipefail

VERSION="1.5.4"
FEATURES="kryoptic-lib/dynamic kryoptic-lib/sqlitedb kryoptic-lib/aes kryoptic-lib/ecc_min \
kryoptic-lib/ec_montgomery kryoptic-lib/ffdh kryoptic-lib/hash_all kryoptic-lib/kdf_all \
kryoptic-lib/rsa kryoptic-lib/hotp kryoptic-lib/chacha20 kryoptic-lib/ike"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR" ;; esac
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

say() { printf 'kryoptic: %s\n' "$*" >&2; }
die() {
    printf 'kryoptic: error: %s\n' "$*" >&2
    exit 1
}

key="$(printf '%s %s' "$VERSION" "$FEATURES" | sha256sum | cut -c1-12)"
CACHE="$TARGET/kryoptic/$VERSION-$key"
MODULE="$CACHE/libkryoptic_pkcs11.so"
if [ -f "$MODULE" ]; then
    printf '%s\n' "$MODULE"
    exit 0
fi

# Build dependencies (Debian names), checked with dpkg-query (a file glob once took
# libclang-cpp14's library for libclang-dev's and skipped the install). pkcs11-tool (opensc)
# is not needed: tokens are initialised through p11kms's own C_InitToken/C_InitPIN.
# shellcheck source-path=SCRIPTDIR source=lib/debian.sh
. "$ROOT/scripts/lib/debian.sh"
DEPS=(build-essential pkg-config libssl-dev libsqlite3-dev libclang-dev)
if has_dpkg; then
    mapfile -t missing < <(debs_missing "${DEPS[@]}")
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install kryoptic "${missing[@]}" || die "could not install ${missing[*]}"
    fi
else
    say "not a Debian system: make sure the equivalents of ${DEPS[*]} are installed"
fi

WORK="$TARGET/kryoptic/work"
mkdir -p "$WORK/fetch/src"
# The scratch crate exists only to make cargo download the pinned source.
cat >"$WORK/fetch/Cargo.toml" <<EOF
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = "=$VERSION"

[workspace]
EOF
: >"$WORK/fetch/src/lib.rs"
say "fetching kryoptic $VERSION from the crate registry"
(cd "$WORK/fetch" && cargo fetch --quiet) >&2 || die "cargo fetch of kryoptic $VERSION failed"

CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
SRC=""
for d in "$CARGO_HOME"/registry/src/*/kryoptic-"$VERSION"; do
    [ -f "$d/Cargo.toml" ] && SRC="$d" && break
done
[ -n "$SRC" ] || die "kryoptic-$VERSION not found under $CARGO_HOME/registry/src after cargo fetch"

BUILD="$WORK/kryoptic-$VERSION"
rm -rf "$BUILD"
cp -a "$SRC" "$BUILD"
[ -f "$BUILD/Cargo.lock" ] || die "the kryoptic $VERSION crate ships no Cargo.lock"
say "building kryoptic $VERSION (about 1-2 minutes on 2 cores)"
# Its own target dir: Kryoptic's dependency versions must not mix with p11kms's build.
(cd "$BUILD" && cargo build --release --locked --no-default-features \
    --features "$FEATURES" --target-dir "$WORK/target") >&2 ||
    die "building kryoptic failed (see above)"
built="$(find "$WORK/target/release" -maxdepth 1 -name 'libkryoptic_pkcs11.so' | head -n1)"
[ -n "$built" ] || die "the build produced no libkryoptic_pkcs11.so"
mkdir -p "$CACHE"
# Copy then rename: a concurrent reader never sees a half-written module.
cp "$built" "$MODULE.tmp.$$"
mv "$MODULE.tmp.$$" "$MODULE"
printf '%s\n' "$MODULE"
