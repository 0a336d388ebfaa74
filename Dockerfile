# smtp-oauth-relay container image.
#
#   docker build -t smtp-oauth-relay .
#
# Configuration comes from the environment (README "Configuration reference" and "Deployment");
# a config file also works: mount it and set SMTP_OAUTH_RELAY_CONFIG (rather than `--config`), so
# that `healthcheck`, `check` and `queue` run through `docker exec` read the same settings.

# Build stage: exactly the README's release build (tests/packaging.rs and tests/docs.rs check it).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked
# The spool mount point, created here because the runtime image has no shell; private
# (0700) like everything the relay writes into it, so the relay has nothing to warn about.
RUN mkdir -p -m 700 /spool

# Runtime: distroless (glibc, CA certificates for login.microsoftonline.com and
# smtp.office365.com, no shell, no package manager), running as the image's non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="smtp-oauth-relay" \
      org.opencontainers.image.description="SMTP relay sidecar: plain SMTP in, Exchange Online SMTP AUTH with OAuth2 (XOAUTH2) out" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /src/target/release/smtp-oauth-relay /usr/local/bin/smtp-oauth-relay
COPY --from=build --chown=65532:65532 /spool /var/spool/smtp-oauth-relay

# Where queued mail lives. A VOLUME, so it survives replacing the container; a new named volume
# takes the directory's owner (65532) from the image. A bind mount must be writable by 65532.
ENV SMTP_OAUTH_RELAY_SPOOL_DIR=/var/spool/smtp-oauth-relay
VOLUME ["/var/spool/smtp-oauth-relay"]

# The admin HTTP server (/healthz, /readyz, /metrics) listens on all interfaces of the
# container's own network namespace. Docker's HEALTHCHECK runs inside the container and would
# reach the loopback default, but Kubernetes httpGet probes and Prometheus scrapes connect to
# the pod IP, and `docker run -p 9325:9325` forwards to the container's interface: with the
# loopback default all of these would fail. The admin server serves no secrets and accepts no
# changes; it is still published only where you publish it (-p, a Service, a scrape config).
# With `--network host` this binds the host's interfaces: set 127.0.0.1:9325 (or `off`) there.
# The inbound SMTP listener stays on the loopback default (127.0.0.1:2525): the app reaches it
# from the same pod or network namespace; anything else needs SMTP_OAUTH_RELAY_LISTEN plus
# listen.allow, see the README.
ENV SMTP_OAUTH_RELAY_ADMIN_LISTEN=0.0.0.0:9325

USER 65532:65532
# 2525: inbound SMTP (loopback unless configured otherwise). 9325: admin HTTP.
EXPOSE 2525 9325

# No shell or curl needed: the binary does the HTTP GET of /healthz itself and exits 0 on 200.
# (Liveness only: /readyz also fails while Microsoft refuses the credentials, which a restart
# does not fix.) If you set SMTP_OAUTH_RELAY_ADMIN_LISTEN=off, run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/smtp-oauth-relay", "healthcheck"]

# SIGTERM: stop accepting, finish messages in DATA and deliveries in flight for up to
# shutdown.grace_secs (30 s), keep the rest queued, exit 0. Docker's default stop timeout is
# 10 s, so use `docker run --stop-timeout 40` / `docker stop -t 40` (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtp-oauth-relay"]
CMD ["serve"]
