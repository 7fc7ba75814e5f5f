# tasks-exporter image: docker build -t tasks-exporter .   (see docs/deployment.md)
# Offline (air-gapped) build from a wheelhouse made where PyPI is reachable, with the same Python minor version:
#   pip wheel . -w wheels && docker build --network none --build-arg INSTALL_FROM=wheels -t tasks-exporter .
# No `# syntax=` line: BuildKit would fetch that frontend from a registry, which an offline build cannot reach.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: install the package and its dependencies into a virtualenv that the runtime stage copies whole.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/tasks-exporter
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# wheels/ holds only a README unless `pip wheel . -w wheels` filled it.
COPY wheels ./wheels
# INSTALL_FROM=pypi (the default) installs from the index; INSTALL_FROM=wheels from wheels/ alone, offline,
# taking the package's own wheel (built from this checkout by `pip wheel .`) and its dependencies.
ARG INSTALL_FROM=pypi
ARG VERSION=0.1.0
# pip and setuptools leave the virtualenv afterwards: nothing in the image installs anything.
RUN case "${INSTALL_FROM}" in \
      pypi) /opt/tasks-exporter/bin/pip install --no-cache-dir . ;; \
      wheels) /opt/tasks-exporter/bin/pip install --no-cache-dir --no-index --find-links ./wheels \
                "tasks-exporter==${VERSION}" ;; \
      *) echo "INSTALL_FROM must be pypi or wheels, not ${INSTALL_FROM}" >&2; exit 2 ;; \
    esac \
    && /opt/tasks-exporter/bin/pip uninstall --yes --quiet pip setuptools
# The version label must not lie: fail the build when it differs from the package's version.
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
# /healthz says the process serves HTTP, nothing about the APIs (that is /ready and the metrics). The check
# reads --web.listen-address from the exporter's command line (exporter/healthcheck.py). With a
# --web.config.file that turns on TLS, replace it (docs/deployment.md); basic auth leaves /healthz open.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "exporter.healthcheck"]
ENTRYPOINT ["tasks-exporter"]
CMD ["--config", "/etc/tasks-exporter/config.yaml"]
