# p11kms in a container: the embedded SoftHSMv2 token under a volume, served as a non-root
# user. README ("Running it in a container") has the commands.
#
#   docker build -t p11kms .
#   docker run -d --name p11kms -p 127.0.0.1:4599:4599 -v p11kms-state:/var/lib/p11kms p11kms
#
# The base images, as build arguments so that a mirror (or the local stand-ins that
# scripts/container-check.sh makes where no registry is reachable) can take their place.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# Build stage: the release binary, stripped (profile `dist` in Cargo.toml).
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The dependencies first, against empty sources, in a layer of their own: a change under src/
# then rebuilds only p11kms itself (on 2 cores: about 1.5 min instead of 3.5 to 5).
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --locked --profile dist --bin p11kms \
    && rm -rf src
COPY src ./src
# COPY keeps the files' own times, older than the placeholder build: touch them, or Cargo
# would take the empty placeholder binary as up to date (`--version` fails the build if so).
RUN touch src/lib.rs src/main.rs \
    && cargo build --locked --profile dist --bin p11kms \
    && cp target/dist/p11kms /usr/local/bin/p11kms \
    && p11kms --version | grep -q '^p11kms '

# Runtime stage: Debian's SoftHSMv2 (the module p11kms looks for), no compiler, no shell tools
# beyond the base image's.
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 p11kms \
    && useradd --uid 10001 --gid p11kms --no-create-home --no-log-init \
        --home-dir /var/lib/p11kms --shell /usr/sbin/nologin p11kms \
    && install -d -o p11kms -g p11kms -m 0700 /var/lib/p11kms
COPY --from=build /usr/local/bin/p11kms /usr/local/bin/p11kms
COPY packaging/docker-entrypoint.sh /usr/local/bin/p11kms-entrypoint

# The token, its PINs and the dev credential live here: keep it on a volume (and back it up).
ENV P11KMS_STATE_DIR=/var/lib/p11kms \
    P11KMS_LISTEN=0.0.0.0:4599 \
    P11KMS_LOG=warn,p11kms::request=info
VOLUME ["/var/lib/p11kms"]
USER p11kms:p11kms
EXPOSE 4599
# No curl in the slim image: p11kms asks its own /healthz. (No --start-interval: engines
# before Docker 25 reject the whole Dockerfile over it.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["p11kms", "healthcheck"]
ENTRYPOINT ["p11kms-entrypoint"]
CMD ["serve", "--log-format", "json"]
