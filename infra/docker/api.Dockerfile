# syntax=docker/dockerfile:1
# The API: `edgelake serve` (scoring, SQL, catalog, registry, devices, dashboard).
#
# Build context: the repository root, so that pyproject.toml and every package are in it:
#     docker build -f infra/docker/api.Dockerfile -t edgelake/api:0.1.0 .
# BuildKit reads api.Dockerfile.dockerignore beside this file as the context's ignore list.
#
# Base images are pinned by tag; pin them by digest too (FROM python:3.11.13-slim-bookworm@sha256:…)
# from the registry you pull through, so that a rebuild gets the same bytes.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgelake ./edgelake
COPY ingest ./ingest
COPY lake ./lake
COPY training ./training
COPY edge ./edge
COPY api ./api
COPY bench ./bench
# A real install (a wheel), not editable: the runtime stage copies the venv alone.
RUN python -m venv /opt/edgelake && /opt/edgelake/bin/pip install '.[cloud]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 edgelake \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgelake --create-home --shell /usr/sbin/nologin edgelake \
 && install -d -o 10001 -g 10001 /srv/lake  # the lake volume's mount point: a new named volume takes this owner
COPY --from=build /opt/edgelake /opt/edgelake
COPY infra/docker/healthcheck.py /usr/local/lib/edgelake/healthcheck.py
# EDGELAKE_DATA_DIR holds keys.json and devices.sqlite: every replica must mount the same volume there.
ENV PATH=/opt/edgelake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGELAKE_DATA_DIR=/var/lib/edgelake \
    EDGELAKE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/edgelake
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/edgelake/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["edgelake"]
# One worker per container: /metrics and rate limits are per worker process, so scale with
# replicas (each scraped on its own) rather than --workers.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
