# The gateway as a sidecar image. The config is mounted at /etc/gateway/gateway.yaml
# (a ConfigMap in Kubernetes); GATEWAY_CONFIG points there.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

WORKDIR /app
# The tested releases of every runtime dependency (.ci/constraints.txt), not whatever is
# newest inside pyproject.toml's pins on the day the image is built.
COPY .ci/constraints.txt ./constraints.txt
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY lua ./lua
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /etc/gateway
# config/docker.yaml: the demo config listening on 0.0.0.0, reachable from outside.
COPY config/docker.yaml /etc/gateway/gateway.yaml

USER 10001
EXPOSE 8080 9901
# /healthz answers 200 while the process serves. The check reads admin.host and admin.port
# from the config the gateway runs with (its --config, else GATEWAY_CONFIG).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "gateway.healthcheck"]

# SIGTERM drains (drain_timeout); the supervisor forwards it to every worker.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "run"]
