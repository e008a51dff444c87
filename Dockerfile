# The ambrosia image: the package with its cloud and metrics extras, and the examples
# (the counter that docs/kubernetes.md runs). No credential is ever part of it: the pods
# get theirs from the platform's workload identity. Checked by tests/infra/test_dockerfile.py
# (the test machines run no Docker engine); build with
#   docker build -t ambrosia:0.1.0 .
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ambrosia ./ambrosia
RUN python -m venv /opt/ambrosia \
    && /opt/ambrosia/bin/pip install --no-cache-dir ".[azure,s3,prometheus]"

FROM python:3.11.14-slim-bookworm
# The uid and gid the Kubernetes manifests run as (runAsUser / runAsGroup 10001).
RUN groupadd --gid 10001 ambrosia \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ambrosia
COPY --from=build /opt/ambrosia /opt/ambrosia
COPY examples /app/examples
ENV PATH=/opt/ambrosia/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
# 7001: the peer protocol (mutual TLS); 9102: /healthz, /readyz, /status, /metrics.
EXPOSE 7001 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=2)"]
ENTRYPOINT ["ambrosia"]
CMD ["--help"]
