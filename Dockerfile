# syntax=docker/dockerfile:1
# trio-tlsd: TLS over TCP and DTLS over UDP on port 4433, metrics and health on 9100.
#
#   docker build -t trio-tlsd:0.1.0 .
#   docker run --rm -p 4433:4433/tcp -p 4433:4433/udp trio-tlsd:0.1.0
#
# Without --cert/--key it serves a development certificate made in its home
# folder on first start; give real files (and --cookie-secret-file) in
# production. docs/howto/deploy.rst walks from here to Kubernetes.

# The Python the test suite runs on (noxfile.py). A base made elsewhere (a
# local mirror, a debootstrapped Debian with python3-venv) can stand in:
# --build-arg PYTHON_IMAGE=...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out).
COPY pyproject.toml README.md ./
COPY trio_tls_dtls ./trio_tls_dtls
# The dependencies come as wheels (cryptography, cffi): no compiler needed.
RUN python -m venv /opt/trio-tlsd \
    && /opt/trio-tlsd/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/trio-tlsd/bin/trio-tlsd --version

FROM ${PYTHON_IMAGE}
# A fixed UID/GID, so that Kubernetes' runAsUser and fsGroup can name it.
RUN groupadd --system --gid 10001 trio-tlsd \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /var/lib/trio-tlsd --create-home --shell /usr/sbin/nologin trio-tlsd
COPY --from=build /opt/trio-tlsd /opt/trio-tlsd
# The bytecode was compiled at install time: nothing is written at run time,
# so the root filesystem can be read-only.
ENV PATH=/opt/trio-tlsd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRIO_TLSD_HEALTH_URL=http://127.0.0.1:9100/healthz
WORKDIR /var/lib/trio-tlsd
USER 10001:10001
EXPOSE 4433/tcp 4433/udp 9100/tcp
# SIGTERM drains: close_notify to every connection and peer, up to --drain-timeout.
STOPSIGNAL SIGTERM
# /healthz is served on the metrics listener (--metrics-port, or --health-port
# when metrics are off): a command without either is reported unhealthy. No
# curl in a slim image; Python's urllib fails on any answer but 2xx/3xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TRIO_TLSD_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["trio-tlsd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4433", \
     "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
