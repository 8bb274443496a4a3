# The broker as a container: `broker serve` as an unprivileged user on a slim Python image.
# Build: docker build -t consent-broker .   Run several: deploy/compose.yaml, docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8000 \
    BROKER_KEY_DIR=/var/lib/broker/keys

# An account without a shell or a password; the keys' volume is the only place it writes.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --no-create-home --shell /usr/sbin/nologin broker \
    && install -d -o broker -g broker -m 0700 /var/lib/broker /var/lib/broker/keys

WORKDIR /app
# Dependencies first, so that a change in the code does not reinstall them.
COPY pyproject.toml README.md ./
COPY broker/__init__.py broker/__init__.py
RUN pip install --editable . && rm -rf /root/.cache
# The code, and the migrations `broker migrate` runs (found next to the package).
COPY alembic.ini ./
COPY migrations migrations
COPY broker broker
RUN pip install --editable . --no-deps && python -m compileall -q broker

USER broker:broker
EXPOSE 8000
STOPSIGNAL SIGTERM
# The process answers; readiness (/readyz) is for the load balancer, not for restarts.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["broker"]
CMD ["serve", "--workers", "2"]
