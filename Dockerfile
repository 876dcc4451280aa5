# p11kms in a container: the embedded SoftHSMv2 token under a volume, served as a non-root
# user. README ("Running it in a container") has the commands.
#
#   docker build -t p11kms .
#   docker run -d --name p11kms -p 4599:4599 -v p11kms-state:/var/lib/p11kms p11kms
#
# Build stage: the release binary, stripped (profile `dist` in Cargo.toml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --locked --profile dist --bin p11kms \
    && cp target/dist/p11kms /usr/local/bin/p11kms

# Runtime stage: Debian's SoftHSMv2 (the module p11kms looks for), no compiler, no shell tools
# beyond the base image's.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/p11kms \
        --shell /usr/sbin/nologin p11kms \
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
# No curl in the slim image: p11kms asks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["p11kms", "healthcheck"]
ENTRYPOINT ["p11kms-entrypoint"]
CMD ["serve", "--log-format", "json"]
