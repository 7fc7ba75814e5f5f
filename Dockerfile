# syntax=docker/dockerfile:1
# tasks-exporter image: docker build -t tasks-exporter .   (see docs/deployment.md)
# Build stage: install the package and its dependencies into a virtualenv that the runtime stage copies whole.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/tasks-exporter
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/tasks-exporter/bin/pip install --no-cache-dir .
# The version label must not lie: fail the build when it differs from the package's version.
ARG VERSION=0.1.0
RUN test "$(/opt/tasks-exporter/bin/tasks-exporter --version)" = "tasks-exporter ${VERSION}"

# Runtime stage: the base image, the virtualenv and a non-root user; no source tree, no build tools.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tasks-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Bitrix24 task counters and Pachca reminders" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/tasks-exporter/tasks-exporter" \
      org.opencontainers.image.documentation="https://github.com/tasks-exporter/tasks-exporter/blob/main/docs/deployment.md"
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter
COPY --from=build /opt/tasks-exporter /opt/tasks-exporter
ENV PATH=/opt/tasks-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 10057
# /healthz says the process serves HTTP, nothing about the APIs (that is /ready and the metrics). With a
# --web.config.file that turns on TLS, replace this check (docs/deployment.md); basic auth leaves it open.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10057/healthz', timeout=4)"]
ENTRYPOINT ["tasks-exporter"]
CMD ["--config", "/etc/tasks-exporter/config.yaml"]
