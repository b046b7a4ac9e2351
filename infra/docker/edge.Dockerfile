# syntax=docker/dockerfile:1
# The edge agent: the `edge` extra alone (pydantic, cryptography, kafka-python, NumPy, httpx2,
# LiteRT) on a slim Python; no TensorFlow, Spark, Beam or deltalake.
#
# Multi-arch: no step depends on the architecture (pip picks each wheel for the target), so
#     docker buildx build --platform linux/amd64,linux/arm64 -f infra/docker/edge.Dockerfile -t edgelake/edge:0.1.0 .
# builds for x86 gateways and 64-bit ARM boards alike (LiteRT publishes wheels for both).
# Devices with NumPy 1 and tflite-runtime: --build-arg EDGE_EXTRA=tflite.
#
# Build context: the repository root. BuildKit reads edge.Dockerfile.dockerignore beside this file.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EDGE_EXTRA=litert
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# infra/edge-dist's package entries are links into edgelake/ and edge/.
COPY infra/edge-dist ./infra/edge-dist
COPY edgelake ./edgelake
COPY edge ./edge
# The check fails the build if a cloud stage or library came along.
RUN python -m venv /opt/edgelake \
 && /opt/edgelake/bin/pip install "./infra/edge-dist[${EDGE_EXTRA}]" \
 && /opt/edgelake/bin/python -c "import importlib.util as u, sys; heavy = [m for m in ('tensorflow', 'pyspark', 'apache_beam', 'deltalake', 'edgelake.api', 'edgelake.lake') if u.find_spec(m)]; sys.exit(f'cloud packages in the edge image: {heavy}' if heavy else 0)"

FROM ${PYTHON_IMAGE}
# Fashion-MNIST's test images are the default camera (Debian's package, architecture-independent);
# --build-arg FASHION_MNIST=0 leaves them out for devices that read a folder (--frames DIR).
ARG FASHION_MNIST=1
RUN if [ "$FASHION_MNIST" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 edgelake \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgelake --create-home --shell /usr/sbin/nologin edgelake
COPY --from=build /opt/edgelake /opt/edgelake
COPY infra/docker/healthcheck.py /usr/local/lib/edgelake/healthcheck.py
# The agent's credentials (0600), models and SQLite result queue live under the data dir:
# mount a volume there so that a restarted container keeps its identity and unsent results.
ENV PATH=/opt/edgelake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGELAKE_DATA_DIR=/var/lib/edgelake \
    EDGELAKE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/edgelake
VOLUME ["/var/lib/edgelake"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/edgelake/healthcheck.py", "process", "edgelake-edge", "run"]
ENTRYPOINT ["edgelake-edge", "run"]
# The device name and API URL are the deployment's: `docker run edgelake/edge:0.1.0 --device-name cam-7
# --api-url https://cloud.example --enrollment-token enr_…` (or EDGELAKE_API_URL and
# EDGELAKE_EDGE_ENROLLMENT_TOKEN in the environment).
CMD ["--help"]
