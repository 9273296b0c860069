# syntax=docker/dockerfile:1
# The ledger's image: one image for every service (`ledger serve account|risk|trade|saga`)
# and for `ledger migrate`. Build: docker build -t ledger .   Run: see docker-compose.yml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the package and its dependencies into a virtual environment --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ledger
WORKDIR /src
# Metadata first, so a change to the code alone does not invalidate the layers above it.
COPY pyproject.toml README.md ./
COPY eventstore ./eventstore
COPY ledger ./ledger
COPY account_service ./account_service
COPY risk_service ./risk_service
COPY trade_service ./trade_service
COPY saga ./saga
# No [embedded] extra: in a deployment PostgreSQL and NATS are servers of their own.
RUN /opt/ledger/bin/pip install .

# ---- runtime: the virtual environment alone, run by an unprivileged user ----------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 ledger \
 && useradd --system --uid 10001 --gid ledger --home-dir /home/ledger --create-home \
        --shell /usr/sbin/nologin ledger
COPY --from=build /opt/ledger /opt/ledger
COPY deploy/healthcheck.py /opt/ledger/healthcheck.py
ENV PATH=/opt/ledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LEDGER_HTTP_HOST=0.0.0.0 \
    LEDGER_HTTP_PORT=8000
USER ledger
WORKDIR /home/ledger
EXPOSE 8000
# Liveness only: readiness (PostgreSQL and NATS answer) is the compose file's check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/ledger/healthcheck.py", "/health/live"]
ENTRYPOINT ["ledger"]
CMD ["--help"]
