#!/bin/sh
# Container entry point: with no configuration file, create the embedded token in the state
# volume on first start (idempotent), then run p11kms with the given arguments.
set -eu
if [ -z "${P11KMS_CONFIG:-}" ]; then
    p11kms token init >/dev/null
fi
exec p11kms "$@"
