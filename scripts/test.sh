#!/usr/bin/env bash
# Every check p11kms has, in the order CI runs them (.ci/run calls this script):
#
#   setup      scripts/setup.sh (installs SoftHSM, a C toolchain, python3-venv if missing)
#   fmt        cargo fmt --check
#   clippy     cargo clippy --all-targets --locked -- -D warnings
#   clippy-lib the same without default features (the library and CLI without `bench`)
#   test       cargo test --locked --all-targets (unit + integration; each test binary makes
#              its own SoftHSM token in a temporary folder)
#   packaging  systemd-analyze verify packaging/p11kms.service (where systemd-analyze exists;
#              any finding fails)
#   compat     if tests/compat/requirements.txt exists: a virtualenv in target/compat-venv
#              (rebuilt only when the requirements or python change), then
#              P11KMS_BIN=target/debug/p11kms python -m pytest -q tests/compat
#   kryoptic   scripts/kryoptic.sh: builds the Kryoptic PKCS#11 module from its crate source
#              (cached in target/kryoptic/ after the first run)
#   test-kry   the integration tests again, each binary on a fresh Kryoptic token
#              (P11KMS_TEST_TOKEN=kryoptic cargo test --locked --test '*')
#   compat-kry the compat tests on a fresh Kryoptic token
#
# P11KMS_TEST_TOKENS=softhsm skips the three Kryoptic sections (default: "softhsm kryoptic").
# Stops at the first failing section and exits non-zero; prints each section's time.
# Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR" ;; esac
    export CARGO_TARGET_DIR
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cd "$ROOT"

# The tests make their own tokens and configs: nothing from the caller's setup may leak in.
unset P11KMS_CONFIG P11KMS_STATE_DIR P11KMS_LISTEN SOFTHSM2_CONF KRYOPTIC_CONF \
    P11KMS_REQUIRE_IN_TOKEN_SEALING P11KMS_TEST_TOKEN P11KMS_KRYOPTIC_MODULE
TOKENS="${P11KMS_TEST_TOKENS:-softhsm kryoptic}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

started=$SECONDS
summary=()
print_summary() {
    local line
    printf '\n'
    for line in "${summary[@]}"; do printf '  %s\n' "$line"; done
    printf '  %-10s %s\n' "total" "$(duration $((SECONDS - started)))"
}

# section NAME COMMAND...: runs one step with a header and its time; stops everything on failure.
# (A shell function run here does not get `set -e`: such functions check their own steps.)
section() {
    local name="$1" t0=$SECONDS rc=0
    shift
    printf '\n===== %s: %s =====\n' "$name" "$*"
    "$@" || rc=$?
    local took
    took="$(duration $((SECONDS - t0)))"
    if [ "$rc" -ne 0 ]; then
        summary+=("$(printf '%-10s FAILED (exit %d) after %s' "$name" "$rc" "$took")")
        printf '\n===== %s FAILED (exit %d, %s) =====\n' "$name" "$rc" "$took" >&2
        print_summary >&2
        exit "$rc"
    fi
    summary+=("$(printf '%-10s ok  %s' "$name" "$took")")
    printf '===== %s: ok (%s) =====\n' "$name" "$took"
}

toolchain() {
    P11KMS_SETUP_TESTS=1 "$ROOT/scripts/setup.sh" || return
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "rustfmt and clippy are needed: rustup component add rustfmt clippy" >&2
        return 1
    fi
    cargo --version
}

# compat TOKEN: the Python compatibility tests against a fresh token of that kind.
compat() {
    local token="$1" req="tests/compat/requirements.txt" venv="$TARGET/compat-venv"
    local stamp="$venv/.requirements.sha256" want
    # The venv is keyed on the requirements and on the python that made it.
    want="$({
        cat "$req"
        python3 -c 'import sys; print(sys.version, sys.executable)'
    } | sha256sum | cut -d' ' -f1)" || return
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "reusing $venv (requirements unchanged)"
    else
        echo "creating $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" || return
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" ||
            return
        # Written last: an interrupted install is redone next time.
        printf '%s\n' "$want" >"$stamp"
    fi
    if ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
        echo "pytest is not installed by $req: add it (pinned) there" >&2
        return 1
    fi
    # Normally already built by `cargo test` (integration tests need the binary): a no-op then.
    cargo build --locked --quiet --bin p11kms || return
    local rc=0
    P11KMS_TEST_TOKEN="$token" P11KMS_BIN="$TARGET/debug/p11kms" \
        "$venv/bin/python" -m pytest -q tests/compat || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests in tests/compat (requirements.txt exists, so tests should)" >&2
    fi
    return "$rc"
}

# The systemd unit: `systemd-analyze verify` on a copy whose ExecStart is the binary just
# built (verify checks that it exists). It reports mistakes as warnings with status 0, so any
# output fails.
packaging() {
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "skipped: systemd-analyze is not installed"
        return 0
    fi
    cargo build --locked --quiet --bin p11kms || return
    local dir out rc=0
    dir="$(mktemp -d)"
    sed "s|/usr/local/bin/p11kms|$TARGET/debug/p11kms|g" packaging/p11kms.service >"$dir/p11kms.service"
    out="$(systemd-analyze verify "$dir/p11kms.service" 2>&1)" || rc=$?
    rm -rf "$dir"
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        printf 'systemd-analyze verify packaging/p11kms.service (status %s):\n%s\n' "$rc" "$out" >&2
        return 1
    fi
    echo "packaging/p11kms.service: systemd-analyze verify found nothing"
}

# Builds (or finds cached) the Kryoptic module and points the tests at it.
kryoptic() {
    local module
    module="$("$ROOT/scripts/kryoptic.sh")" || return
    export P11KMS_KRYOPTIC_MODULE="$module"
    echo "module: $module"
}

section setup toolchain
section fmt cargo fmt --check
section clippy cargo clippy --all-targets --locked -- -D warnings
section clippy-lib cargo clippy --no-default-features --all-targets --locked -- -D warnings
section test cargo test --locked --all-targets
section packaging packaging
has_compat=0
if [ -f tests/compat/requirements.txt ]; then
    has_compat=1
    section compat compat softhsm
else
    summary+=("$(printf '%-10s skipped (no tests/compat/requirements.txt)' compat)")
fi
case " $TOKENS " in
*" kryoptic "*)
    section kryoptic kryoptic
    # The integration tests only: the unit tests do not touch a token and ran above.
    section test-kry env P11KMS_TEST_TOKEN=kryoptic cargo test --locked --test '*'
    if [ "$has_compat" -eq 1 ]; then
        section compat-kry compat kryoptic
    fi
    ;;
*) summary+=("$(printf '%-10s skipped (P11KMS_TEST_TOKENS=%s)' kryoptic "$TOKENS")") ;;
esac

print_summary
printf '\nall checks passed\n'
