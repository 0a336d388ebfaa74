# smtp-oauth-relay container image.
# Build stage: the same release build as the README (`cargo build --release --locked`).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked
RUN mkdir -p /spool

# Runtime: distroless (glibc, CA certificates, no shell), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/smtp-oauth-relay /usr/local/bin/smtp-oauth-relay
COPY --from=build --chown=65532:65532 /spool /var/spool/smtp-oauth-relay
ENV SMTP_OAUTH_RELAY_SPOOL_DIR=/var/spool/smtp-oauth-relay
VOLUME ["/var/spool/smtp-oauth-relay"]
USER 65532:65532
EXPOSE 2525
ENTRYPOINT ["/usr/local/bin/smtp-oauth-relay"]
CMD ["serve"]
