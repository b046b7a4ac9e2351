# syntax=docker/dockerfile:1
# The lake worker image: `edgelake ingest run` by default, and also everything else that runs
# the cloud extra without a GPU and needs the same Python and library versions on every node:
#   - the Beam SDK worker pool beside a Flink taskmanager (the pipeline's DoFns import edgelake),
#   - Spark standalone master and workers (`spark-class` from the pyspark wheel, so the cluster
#     runs exactly the driver's Spark and Python 3.11),
#   - `edgelake lake build-gold` / `optimize` / `vacuum` jobs.
# Hence a Java runtime (Spark 4 needs Java 17+).
#
# Build context: the repository root:
#     docker build -f infra/docker/ingest.Dockerfile -t edgelake/ingest:0.1.0 .
# BuildKit reads ingest.Dockerfile.dockerignore beside this file as the context's ignore list.
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
RUN python -m venv /opt/edgelake && /opt/edgelake/bin/pip install '.[cloud]'

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 edgelake \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgelake --create-home --shell /usr/sbin/nologin edgelake \
 && install -d -o 10001 -g 10001 /srv/lake  # the lake volume's mount point: a new named volume takes this owner
COPY --from=build /opt/edgelake /opt/edgelake
COPY infra/docker/healthcheck.py /usr/local/lib/edgelake/healthcheck.py
# PYSPARK_PYTHON: executors run the venv's interpreter, the same as the driver's.
# SPARK_WORKER_DIR: the default lies inside the (read-only for this user) venv.
ENV PATH=/opt/edgelake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYSPARK_PYTHON=/opt/edgelake/bin/python \
    SPARK_WORKER_DIR=/tmp/spark-work \
    EDGELAKE_DATA_DIR=/var/lib/edgelake \
    EDGELAKE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/edgelake
EXPOSE 9464
# A process check: the ingester has no HTTP port unless --metrics-port is given. Services that
# run something else from this image (Spark, the Beam worker pool, jobs) override or disable it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/edgelake/healthcheck.py", "process", "ingest", "run"]
ENTRYPOINT ["edgelake"]
CMD ["ingest", "run", "--metrics-port", "9464"]
