#!/usr/bin/env bash
# Installs what p11kms needs to build, run and test, and nothing that is already there:
#   - SoftHSMv2 (the PKCS#11 token of the embedded default and of the tests),
#   - a C toolchain (build-essential, pkg-config) when `cc` is missing,
#   - python3 with a working `python3 -m venv` (for the Python compatibility tests).
# Rust itself (cargo >= 1.85) must already be installed; this script says how if it is not.
#
# Idempotent and quiet when everything is present. On Debian/Ubuntu packages are checked with
# dpkg-query and installed with apt-get (as root, or through sudo), running `apt-get update`
# once, and only when something must be installed.
# Called by scripts/run.sh, scripts/demo.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail

MIN_RUST="1.85"

say() { printf 'setup: %s\n' "$*" >&2; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

# shellcheck source-path=SCRIPTDIR source=lib/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debian.sh"

# The locations p11kms itself searches (src/config/embedded.rs MODULE_CANDIDATES), for systems
# without dpkg, and to check the installed package put the module where p11kms looks.
softhsm_present() {
    local p
    for p in /usr/lib/softhsm/libsofthsm2.so \
        /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so \
        /usr/local/lib/softhsm/libsofthsm2.so; do
        [ -f "$p" ] && return 0
    done
    return 1
}

# `python3 -m venv` can bootstrap pip: needs the venv and ensurepip modules and a bundled pip
# (on Debian/Ubuntu ensurepip and its wheels come with python3-venv). Checked by trying, not
# by package: the python3 on PATH need not be Debian's (pyenv, a virtualenv).
venv_works() {
    command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import venv, ensurepip; ensurepip.version()' >/dev/null 2>&1
}

if has_dpkg; then
    mapfile -t packages < <(debs_missing softhsm2 build-essential pkg-config)
    # Tools only the tests use (scripts/test.sh sets P11KMS_SETUP_TESTS=1): promtool, from
    # the `prometheus` package, checks the /metrics output (tests/api_metrics.rs).
    if [ "${P11KMS_SETUP_TESTS:-0}" = 1 ]; then
        mapfile -t -O "${#packages[@]}" packages < <(debs_missing prometheus)
    fi
    venv_ok=1
    if venv_works; then
        venv_ok=0
    else
        command -v python3 >/dev/null 2>&1 || packages+=(python3)
        packages+=(python3-venv python3-pip)
    fi
    if [ "${#packages[@]}" -gt 0 ]; then
        apt_install setup "${packages[@]}" || exit 1
    fi
    softhsm_present ||
        die "softhsm2 is installed but libsofthsm2.so is in none of the known places; set P11KMS_MODULE to it"
    command -v cc >/dev/null 2>&1 || die "a C compiler (cc) is still missing after installing build-essential"
    if [ "$venv_ok" -ne 0 ] && ! venv_works; then
        die "$(command -v python3 || echo python3) still cannot create a virtualenv with pip
       (if it is not the system python, e.g. pyenv, install its venv/ensurepip support)"
    fi
else
    # Not Debian: nothing is installed here; say what is missing.
    missing=()
    softhsm_present || missing+=("SoftHSMv2 (libsofthsm2.so)")
    command -v cc >/dev/null 2>&1 || missing+=("a C compiler")
    command -v pkg-config >/dev/null 2>&1 || missing+=("pkg-config")
    venv_works || missing+=("python3 with venv and ensurepip")
    if [ "${#missing[@]}" -gt 0 ]; then
        die "missing: ${missing[*]}. This script installs packages with apt-get on Debian/Ubuntu
       only: install the equivalents with your package manager, then run it again."
    fi
fi

# Rust: rustup cannot be fetched by this script; say exactly what to do.
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    else
        die "cargo not found. p11kms needs Rust >= $MIN_RUST (distribution packages are often older).
       Install it with rustup (https://rustup.rs):
           curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
           . \"\$HOME/.cargo/env\"
       then run this script again."
    fi
fi
rust_version="$(rustc --version 2>/dev/null | awk '{print $2}')"
if [ -z "$rust_version" ]; then
    die "cargo is installed but rustc does not run; check your Rust installation"
fi
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "${rust_version%%-*}" | sort -V | head -n1)" != "$MIN_RUST" ]; then
    die "rustc $rust_version is too old: p11kms needs >= $MIN_RUST (\`rustup update stable\`)"
fi
