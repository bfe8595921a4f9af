# The gateway as a sidecar image. The config is mounted at /etc/gateway/gateway.yaml
# (a ConfigMap in Kubernetes); GATEWAY_CONFIG points there.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY lua ./lua
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /etc/gateway
COPY config/gateway.yaml /etc/gateway/gateway.yaml

USER 10001
EXPOSE 8080 9901
# /healthz answers 200 while the process serves (the admin listener must be reachable from
# inside the container: the default admin.host is 127.0.0.1, which is).
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"

# SIGTERM drains (drain_timeout); the supervisor forwards it to every worker.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "run"]
