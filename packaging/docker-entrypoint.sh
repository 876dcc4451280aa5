#!/bin/sh
# Container entry point: with no configuration file, create the embedded token in the state
# volume on first start (idempotent; not for --version or --help), then run p11kms with the
# given arguments.
set -eu
# Asking for the version or the help needs no token.
case "${1:-}" in
    --version | -V | --help | -h | help) ;;
    *)
        if [ -z "${P11KMS_CONFIG:-}" ]; then
            p11kms token init >/dev/null
        fi
        ;;
esac
exec p11kms "$@"
