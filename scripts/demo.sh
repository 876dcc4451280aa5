#!/usr/bin/env bash
# The envelope-encryption flow, end to end, with the `p11kms` CLI on the embedded SoftHSM token:
#
#   1. create a key (generated inside the token) and an alias for it;
#   2. GenerateDataKeyWithoutPlaintext with an encryption context: only the sealed blob comes back;
#   3. later, Decrypt the blob with the same context: the data key comes back;
#   4. Decrypt with a different context: InvalidCiphertextException;
#   5. `envelope encrypt` / `envelope decrypt` a ~20 MiB file and compare checksums.
#
# By default everything happens in a fresh temporary state folder that is removed at the end.
# With P11KMS_STATE_DIR set, that token is used (e.g. the one scripts/run.sh serves) and the
# demo key is scheduled for deletion at the end. P11KMS_BIN overrides the binary (default: a
# release build of this checkout). P11KMS_CONFIG is ignored: the demo never touches a real HSM.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\ndemo: FAILED: %s\n' "$*" >&2
    exit 1
}
# Shows a command line (quoting arguments with spaces), then runs p11kms with it.
show() {
    local a line="$"
    for a in "$@"; do
        case "$a" in *' '*) line+=" '$a'" ;; *) line+=" $a" ;; esac
    done
    printf '%s\n' "$line"
}
p11kms() {
    show p11kms "$@"
    "$bin" "$@"
}
# Runs a p11kms command that must fail with InvalidCiphertextException.
must_fail_invalid_ciphertext() {
    local out
    show p11kms "$@"
    if out="$("$bin" "$@" 2>&1)"; then
        fail "\`p11kms $*\` succeeded"
    fi
    printf '%s\n' "$out"
    case "$out" in
    *InvalidCiphertextException*) ;;
    *) fail "expected InvalidCiphertextException from \`p11kms $*\`" ;;
    esac
}
now_ms() { date +%s%3N; }

unset P11KMS_CONFIG
work="$(mktemp -d "${TMPDIR:-/tmp}/p11kms-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
if [ -n "${P11KMS_STATE_DIR:-}" ]; then
    P11KMS_STATE_DIR="$(absolute "$P11KMS_STATE_DIR")"
    export P11KMS_STATE_DIR
    own_state=0
    alias_name="alias/demo-$(date +%Y%m%d-%H%M%S)"
else
    export P11KMS_STATE_DIR="$work/state"
    own_state=1
    alias_name="alias/demo"
fi

if [ -n "${P11KMS_BIN:-}" ]; then
    bin="$(absolute "$P11KMS_BIN")"
else
    [ -n "${CARGO_TARGET_DIR:-}" ] && CARGO_TARGET_DIR="$(absolute "$CARGO_TARGET_DIR")"
    "$ROOT/scripts/setup.sh"
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    (cd "$ROOT" && cargo build --release --locked)
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/p11kms"
fi
[ -x "$bin" ] || fail "no p11kms binary at $bin"
cd "$work"

echo "p11kms demo: state folder $P11KMS_STATE_DIR$([ "$own_state" = 1 ] && echo ' (temporary)')"

step "Create the embedded SoftHSM token (idempotent)"
p11kms token init

step "Create a key inside the token, and an alias for it"
p11kms key create --description "p11kms demo key" --tag purpose=demo | tee key.txt
key_id="$(sed -n 's/^KeyId: *//p' key.txt)"
[ -n "$key_id" ] || fail "no KeyId line in the output of key create"
p11kms alias create "$alias_name" "$key_id"
p11kms alias list --key "$key_id"

step "GenerateDataKeyWithoutPlaintext, bound to the encryption context purpose=demo"
p11kms datakey generate --key "$alias_name" --without-plaintext --context purpose=demo |
    tee datakey.txt
sed -n 's/^CiphertextBlob: *//p' datakey.txt >blob.b64
[ -s blob.b64 ] || fail "no CiphertextBlob line in the output of datakey generate"
grep -q '^Plaintext:' datakey.txt && fail "--without-plaintext printed a Plaintext"
# The header is readable without the token (docs/ciphertext-format.md): check it names our key.
hex="$(base64 -d <blob.b64 | od -An -tx1 -v | tr -d ' \n')"
[ "${#hex}" -eq 228 ] || fail "the blob is $((${#hex} / 2)) bytes, expected 114"
[ "${hex:2:32}" = "${key_id//-/}" ] || fail "the blob header does not name key $key_id"
echo "The blob is 114 bytes: a 66-byte header (format ${hex:0:2}, key id ${hex:2:32},"
echo "backing version ${hex:34:8}, KDF ${hex:42:2}, nonce, IV), the sealed 32-byte key and a 16-byte tag."
echo "No plaintext data key was returned, and none is stored anywhere."

step "Later: Decrypt the blob with the same context"
p11kms decrypt --blob-file blob.b64 --context purpose=demo --out datakey.bin
size="$(wc -c <datakey.bin)"
[ "$size" -eq 32 ] || fail "decrypted data key is $size bytes, expected 32"
echo "-> recovered the 32-byte data key (written to datakey.bin, mode 0600; not shown)"

step "Decrypt with a different context, or with none, must fail"
must_fail_invalid_ciphertext decrypt --blob-file blob.b64 --context purpose=other
must_fail_invalid_ciphertext decrypt --blob-file blob.b64
echo "-> refused with InvalidCiphertextException, as expected"

step "Envelope-encrypt a ~20 MiB file (a fresh data key per file, chunked AES-256-GCM)"
head -c $((20 * 1024 * 1024 + 12345)) /dev/urandom >data.bin
t0="$(now_ms)"
p11kms envelope encrypt --key "$alias_name" --in data.bin --out data.p11e --context purpose=demo
t1="$(now_ms)"
p11kms envelope decrypt --in data.p11e --out data.out --context purpose=demo
t2="$(now_ms)"
sum_in="$(sha256sum <data.bin | cut -d' ' -f1)"
sum_out="$(sha256sum <data.out | cut -d' ' -f1)"
printf '%-10s %10d bytes  sha256 %s\n' data.bin "$(wc -c <data.bin)" "$sum_in"
printf '%-10s %10d bytes\n' data.p11e "$(wc -c <data.p11e)"
printf '%-10s %10d bytes  sha256 %s\n' data.out "$(wc -c <data.out)" "$sum_out"
[ "$sum_in" = "$sum_out" ] || fail "the decrypted file differs from the original"
echo "encrypt $((t1 - t0)) ms, decrypt $((t2 - t1)) ms"

step "Envelope decrypt that requires a context the file was not sealed with must fail"
must_fail_invalid_ciphertext envelope decrypt --in data.p11e --out other.out --context purpose=other
[ ! -e other.out ] || fail "a failed envelope decrypt left other.out behind"
echo "-> refused with InvalidCiphertextException, and nothing was written"

if [ "$own_state" = 0 ]; then
    step "Clean up the demo key in $P11KMS_STATE_DIR"
    p11kms alias delete "$alias_name"
    p11kms key schedule-deletion "$key_id" --days 7
fi

printf '\ndemo: OK\n'
