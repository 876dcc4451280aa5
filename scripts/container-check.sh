#!/usr/bin/env bash
# The container check, opt-in (not part of scripts/test.sh: it takes minutes). With a real
# Docker engine it
#
#   1. builds the image from the Dockerfile (p11kms:check);
#   2. runs it on a fresh volume and waits for its HEALTHCHECK to say `healthy`;
#   3. checks it runs as uid 10001 and `p11kms healthcheck` inside passes;
#   4. makes a KMS round trip with the AWS CLI, signed with the dev credential from the log:
#      CreateKey, CreateAlias, GenerateDataKey (with an encryption context), Decrypt;
#   5. stops it (SIGTERM must end it cleanly), replaces the container with a new one on the
#      same volume, and proves that the credential, the key, the alias and the old
#      ciphertext all survived;
#   6. removes the containers, the volume and (unless --keep) the image.
#
#   scripts/container-check.sh                  # an engine must answer `docker info`
#   scripts/container-check.sh --start-dockerd  # as root, no engine running: start a private
#                                               # dockerd for the check, stop it at the end
#
# Options:
#   --start-dockerd   start dockerd (Debian's docker.io, installed if missing) on a private
#                     socket with its data under $P11KMS_CHECK_DOCKER_ROOT (default
#                     /var/tmp/p11kms-check-docker, kept as a cache between runs: remove it to
#                     reclaim the space), no iptables and no bridge network; stopped at exit.
#   --bases MODE      where the base images come from: `pull` (rust:1-bookworm and
#                     debian:bookworm-slim from the registry), `local` (stand-ins made here:
#                     debian:bookworm-slim by debootstrap, the Rust image from it plus this
#                     machine's own toolchain; needs root), or `auto` (default: the real ones
#                     if present or pullable, else the stand-ins, loudly).
#   --keep            keep the image p11kms:check afterwards.
# Environment: P11KMS_CHECK_PORT (default 45990), P11KMS_CHECK_MIRROR (Debian mirror for the
# stand-ins, default http://deb.debian.org/debian), P11KMS_CHECK_STORAGE_DRIVER (for
# --start-dockerd; default: dockerd's choice).
#
# Networking: where the engine has a bridge network the container is published on
# 127.0.0.1:PORT (`-p`), as in the README; where it has none (the private dockerd) the
# container shares the host's network and listens on 127.0.0.1:PORT itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/debian.sh
. "$ROOT/scripts/lib/debian.sh"

WHO=container-check
PORT="${P11KMS_CHECK_PORT:-45990}"
IMAGE=p11kms:check
NAME="p11kms-check-$$"
VOLUME="p11kms-check-$$"
LOCAL_RUST=p11kms-base/rust:bookworm
LOCAL_SLIM=p11kms-base/debian:bookworm-slim

start_dockerd=0
bases=auto
keep=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    --start-dockerd) start_dockerd=1 ;;
    --bases)
        bases="${2:-}"
        shift
        ;;
    --bases=*) bases="${1#--bases=}" ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        printf '%s: unknown option %s (see --help)\n' "$WHO" "$1" >&2
        exit 2
        ;;
    esac
    shift
done
case "$bases" in pull | local | auto) ;; *)
    printf '%s: --bases must be pull, local or auto\n' "$WHO" >&2
    exit 2
    ;;
esac

step() { printf '\n==> %s\n' "$*"; }
note() { printf '%s: %s\n' "$WHO" "$*"; }
fail() {
    printf '\n%s: FAILED: %s\n' "$WHO" "$*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

scratch="$(mktemp -d)"
dockerd_pid=
cleanup() {
    local rc=$?
    set +e
    if [ -n "${DOCKER_HOST:-}" ] || docker info >/dev/null 2>&1; then
        docker rm -f "$NAME" >/dev/null 2>&1
        docker volume rm "$VOLUME" >/dev/null 2>&1
        [ "$keep" = 1 ] || docker image rm "$IMAGE" >/dev/null 2>&1
    fi
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 1 30); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            note "dockerd (pid $dockerd_pid) did not stop on SIGTERM; killing it"
            kill -9 "$dockerd_pid" 2>/dev/null
        fi
        note "stopped the private dockerd (pid $dockerd_pid)"
    fi
    rm -rf "$scratch"
    exit "$rc"
}
trap cleanup EXIT

command -v docker >/dev/null 2>&1 || fail "no docker client (apt-get install docker.io)"
command -v aws >/dev/null 2>&1 || fail "needs the AWS CLI (python3 -m pip install awscli)"

# --- the engine -------------------------------------------------------------------------
if [ "$start_dockerd" = 1 ]; then
    [ "$(id -u)" -eq 0 ] || fail "--start-dockerd needs root"
    command -v dockerd >/dev/null 2>&1 || apt_install "$WHO" docker.io
    droot="${P11KMS_CHECK_DOCKER_ROOT:-/var/tmp/p11kms-check-docker}"
    mkdir -p "$droot"
    sock="/run/p11kms-check-docker.sock"
    step "starting a private dockerd (data under $droot, socket $sock)"
    args=(--data-root "$droot/data" --exec-root /run/p11kms-check-docker
        --pidfile /run/p11kms-check-docker.pid -H "unix://$sock"
        --iptables=false --ip6tables=false --bridge=none
        --exec-opt native.cgroupdriver=cgroupfs)
    [ -z "${P11KMS_CHECK_STORAGE_DRIVER:-}" ] || args+=(--storage-driver "$P11KMS_CHECK_STORAGE_DRIVER")
    dockerd "${args[@]}" >"$droot/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST="unix://$sock"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || fail "dockerd exited: see $droot/dockerd.log"
        sleep 1
    done
fi
docker info >/dev/null 2>&1 || fail "no Docker engine answers (start one, or run as root with --start-dockerd)"
note "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"

net_args=()
run_net=(-p "127.0.0.1:$PORT:4599")
if ! docker network inspect bridge >/dev/null 2>&1; then
    note "the engine has no bridge network: building and running with --network host"
    net_args=(--network host)
    run_net=(--network host -e "P11KMS_LISTEN=127.0.0.1:$PORT")
fi
# Without the buildx plugin, a current client refuses BuildKit: use the classic builder.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

# --- the base images --------------------------------------------------------------------
# debian:bookworm-slim's stand-in: a debootstrap minbase with the official image's dpkg
# excludes and apt settings, imported as one layer.
make_local_slim() {
    [ "$(id -u)" -eq 0 ] || fail "making the stand-in base images needs root (debootstrap)"
    [ -z "$(debs_missing debootstrap)" ] || apt_install "$WHO" debootstrap
    local fs="$scratch/slim"
    step "stand-in $LOCAL_SLIM: debootstrap --variant=minbase bookworm"
    debootstrap --variant=minbase bookworm "$fs" "${P11KMS_CHECK_MIRROR:-http://deb.debian.org/debian}" \
        >"$scratch/debootstrap.log" 2>&1 || {
        tail -20 "$scratch/debootstrap.log" >&2
        fail "debootstrap failed"
    }
    rm -f "$fs/etc/apt/sources.list"
    cat >"$fs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$fs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$fs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find "$fs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    find "$fs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$fs"/usr/share/{man,groff,info,lintian,locale}/* "$fs"/var/cache/apt/* \
        "$fs"/var/lib/apt/lists/* "$fs"/var/log/apt/* "$fs"/var/log/*.log "$fs"/tmp/*
    tar --numeric-owner --xattrs -C "$fs" -c . |
        docker import --change 'CMD ["bash"]' - "$LOCAL_SLIM" >/dev/null
    rm -rf "$fs"
}

# rust:1-bookworm's stand-in: the slim stand-in plus gcc and libc6-dev (what the official
# image's buildpack-deps base gives a crate like ring), this machine's own Rust toolchain,
# and this machine's local CAs (/usr/local/share/ca-certificates: a TLS-inspecting proxy
# in front of crates.io).
make_local_rust() {
    command -v rustc >/dev/null 2>&1 || fail "no rustc on this machine for the stand-in Rust image"
    local sysroot ctx="$scratch/rust-ctx" d
    sysroot="$(rustc --print sysroot)"
    step "stand-in $LOCAL_RUST: $LOCAL_SLIM + gcc + $(rustc --version) from $sysroot"
    mkdir -p "$ctx/rust" "$ctx/local-ca"
    for d in bin lib libexec etc; do
        [ -e "$sysroot/$d" ] || continue
        cp -al "$sysroot/$d" "$ctx/rust/" 2>/dev/null || cp -a "$sysroot/$d" "$ctx/rust/"
    done
    cp /usr/local/share/ca-certificates/*.crt "$ctx/local-ca/" 2>/dev/null || true
    cat >"$ctx/Dockerfile" <<EOF
FROM $LOCAL_SLIM
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates curl git gcc libc6-dev make pkg-config \\
    && rm -rf /var/lib/apt/lists/*
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
EOF
    docker build -q "${net_args[@]}" -t "$LOCAL_RUST" "$ctx" >/dev/null ||
        fail "building the stand-in $LOCAL_RUST failed"
    rm -rf "$ctx"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
build_args=()
use_local() {
    have_image "$LOCAL_SLIM" || make_local_slim
    have_image "$LOCAL_RUST" || make_local_rust
    build_args=(--build-arg "RUST_IMAGE=$LOCAL_RUST" --build-arg "RUNTIME_IMAGE=$LOCAL_SLIM")
    bases_used="local stand-ins ($LOCAL_RUST, $LOCAL_SLIM), NOT the registry's images"
}
pulled() { have_image "$1" || docker pull -q "$1" >/dev/null 2>&1; }
case "$bases" in
pull)
    if ! pulled rust:1-bookworm || ! pulled debian:bookworm-slim; then
        fail "cannot pull the base images (try --bases local)"
    fi
    bases_used="rust:1-bookworm and debian:bookworm-slim from the registry"
    ;;
local) use_local ;;
auto)
    if pulled rust:1-bookworm && pulled debian:bookworm-slim; then
        bases_used="rust:1-bookworm and debian:bookworm-slim from the registry"
    else
        note "the registry's base images cannot be had: using local stand-ins"
        use_local
    fi
    ;;
esac
note "bases: $bases_used"

# --- build --------------------------------------------------------------------------------
step "docker build -t $IMAGE $ROOT"
t0="$(now)"
docker build "${net_args[@]}" "${build_args[@]}" -t "$IMAGE" "$ROOT" >"$scratch/build.log" 2>&1 || {
    tail -40 "$scratch/build.log" >&2
    fail "docker build failed"
}
build_s="$(since "$t0")"
# shellcheck disable=SC2016 # the backquotes are Cargo's
sed 's/\x1b\[[0-9;]*m//g' "$scratch/build.log" | grep -E '^ *Finished `dist`' | sed 's/^ */  cargo: /' || true
size_mb="$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f", $1 / 1e6 }')"
note "built in ${build_s}s; image $size_mb MB"

# --- run ----------------------------------------------------------------------------------
docker volume create "$VOLUME" >/dev/null
run() {
    docker run -d --name "$NAME" "${run_net[@]}" -v "$VOLUME:/var/lib/p11kms" "$IMAGE" >/dev/null
}
# Waits for `healthy`; prints the seconds it took.
wait_healthy() {
    local t0 s
    t0="$(now)"
    for _ in $(seq 1 240); do
        s="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.Status}}' "$NAME")"
        case "$s" in
        "healthy "*)
            since "$t0"
            return 0
            ;;
        "unhealthy "* | *" exited" | *" dead")
            docker logs "$NAME" >&2 || true
            fail "container is $s"
            ;;
        esac
        sleep 0.5
    done
    docker logs "$NAME" >&2 || true
    fail "not healthy after 120 s"
}
# The dev credential from the banner: the lines `export AWS_ACCESS_KEY_ID=...`.
credential() {
    local line id secret
    for _ in $(seq 1 40); do
        line="$(docker logs "$NAME" 2>/dev/null | grep -E '^export AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)=' || true)"
        [ -n "$line" ] && break
        sleep 0.5
    done
    id="$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' <<<"$line")"
    secret="$(sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p' <<<"$line")"
    if [ -z "$id" ] || [ -z "$secret" ]; then fail "no dev credential in the container's log"; fi
    printf '%s %s\n' "$id" "$secret"
}
kms() {
    env -u AWS_SESSION_TOKEN -u AWS_PROFILE AWS_ACCESS_KEY_ID="$key_id" AWS_SECRET_ACCESS_KEY="$secret" \
        AWS_DEFAULT_REGION=us-east-2 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        aws --endpoint-url "http://127.0.0.1:$PORT" kms "$@"
}

step "docker run (volume $VOLUME, 127.0.0.1:$PORT)"
t0="$(now)"
run
health_s="$(wait_healthy)"
note "healthy ${health_s}s after docker run"
read -r key_id secret < <(credential)
note "dev credential from the log: $key_id"

step "inside the container"
uid="$(docker exec "$NAME" id -u)"
[ "$uid" = 10001 ] || fail "runs as uid $uid, not 10001"
docker exec "$NAME" p11kms healthcheck || fail "p11kms healthcheck failed inside"
modes="$(docker exec "$NAME" stat -c '%a %U %n' /var/lib/p11kms /var/lib/p11kms/user.pin /var/lib/p11kms/dev-secret-key)"
printf '%s\n' "$modes"
grep -q '^700 p11kms /var/lib/p11kms$' <<<"$modes" || fail "state folder is not 0700 p11kms"
grep -q '^600 p11kms /var/lib/p11kms/user.pin$' <<<"$modes" || fail "user.pin is not 0600 p11kms"
note "uid 10001, p11kms healthcheck ok, state folder 0700"

step "KMS round trip with the AWS CLI ($(aws --version 2>&1 | cut -d' ' -f1))"
key="$(kms create-key --description container-check --query KeyMetadata.KeyId --output text)"
note "CreateKey: $key"
kms create-alias --alias-name alias/container-check --target-key-id "$key"
kms generate-data-key --key-id alias/container-check --key-spec AES_256 \
    --encryption-context purpose=container-check \
    --query '[CiphertextBlob, Plaintext]' --output text >"$scratch/dk"
read -r blob plain <"$scratch/dk"
[ "$(printf '%s' "$plain" | base64 -d | wc -c)" = 32 ] || fail "GenerateDataKey: not 32 bytes"
printf '%s' "$blob" | base64 -d >"$scratch/blob"
back="$(kms decrypt --ciphertext-blob "fileb://$scratch/blob" --encryption-context purpose=container-check \
    --query Plaintext --output text)"
[ "$back" = "$plain" ] || fail "Decrypt did not give back the data key"
note "GenerateDataKey + Decrypt: the data key came back"
if kms decrypt --ciphertext-blob "fileb://$scratch/blob" --encryption-context purpose=other \
    >/dev/null 2>"$scratch/err"; then
    fail "Decrypt with the wrong encryption context succeeded"
fi
grep -q InvalidCiphertextException "$scratch/err" || fail "wrong context: $(cat "$scratch/err")"
note "Decrypt with another encryption context: InvalidCiphertextException"

step "docker stop: SIGTERM ends it cleanly"
t0="$(now)"
docker stop -t 10 "$NAME" >/dev/null
stop_s="$(since "$t0")"
code="$(docker inspect --format '{{.State.ExitCode}}' "$NAME")"
[ "$code" = 0 ] || fail "exit code $code after docker stop (killed, not stopped?)"
note "stopped in ${stop_s}s, exit code 0"

step "a new container on the same volume"
docker rm "$NAME" >/dev/null
run
health2_s="$(wait_healthy)"
read -r key_id2 secret2 < <(credential)
if [ "$key_id2" != "$key_id" ] || [ "$secret2" != "$secret" ]; then fail "the dev credential changed"; fi
state="$(kms describe-key --key-id alias/container-check --query 'KeyMetadata.[KeyId, KeyState]' --output text)"
[ "$state" = "$key"$'\t'"Enabled" ] || fail "DescribeKey alias/container-check: $state"
back="$(kms decrypt --ciphertext-blob "fileb://$scratch/blob" --encryption-context purpose=container-check \
    --query Plaintext --output text)"
[ "$back" = "$plain" ] || fail "the old ciphertext does not decrypt after the restart"
note "healthy again in ${health2_s}s; same credential, key $key Enabled behind its alias, old ciphertext decrypts"

printf '\n%s: ok: bases %s; build %ss, image %s MB, healthy %ss after run (%ss on the kept volume), stop %ss\n' \
    "$WHO" "$bases_used" "$build_s" "$size_mb" "$health_s" "$health2_s" "$stop_s"
