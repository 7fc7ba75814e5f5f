# syntax=docker/dockerfile:1
# Build stage: a wheel of the exporter and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the installed package, as a non-root user.
FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tasks-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Bitrix24 task counters and Pachca reminders" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/tasks-exporter/tasks-exporter"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels tasks-exporter \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
USER 10001:10001
EXPOSE 10057
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:10057/healthz', timeout=4); sys.exit(0)"]
ENTRYPOINT ["tasks-exporter"]
CMD ["--config", "/etc/tasks-exporter/config.yaml"]
