# syntax=docker/dockerfile:1
# Training on GPUs: `edgelake train fraud|vision --device gpu` (MirroredStrategy over every
# visible GPU, mixed precision). The fraud job's feature step runs Spark, hence the Java runtime.
#
# The CUDA user-space libraries come from `tensorflow[and-cuda]`'s pip wheels, matched to the
# TensorFlow release; the nvidia/cuda base brings the NVIDIA container runtime's environment
# (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) and an Ubuntu whose python3.11 the
# project needs (it requires Python 3.11). The host provides the driver (NVIDIA container toolkit).
#
# Build context: the repository root:
#     docker build -f infra/docker/trainer.Dockerfile -t edgelake/trainer:0.1.0 .
# BuildKit reads trainer.Dockerfile.dockerignore beside this file as the context's ignore list.
ARG CUDA_IMAGE=nvidia/cuda:12.5.1-base-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgelake ./edgelake
COPY ingest ./ingest
COPY lake ./lake
COPY training ./training
COPY edge ./edge
COPY api ./api
COPY bench ./bench
# tensorflow[and-cuda] at the version the cloud extra pins: the same TensorFlow, plus its CUDA wheels.
# Ubuntu's python3.11 bundles an old pip: upgrade it first (newer wheel metadata).
RUN python3.11 -m venv /opt/edgelake \
 && /opt/edgelake/bin/pip install --upgrade pip \
 && TF_VERSION="$(sed -n 's/.*"tensorflow==\([0-9.]*\)".*/\1/p' pyproject.toml)" \
 && test -n "$TF_VERSION" \
 && /opt/edgelake/bin/pip install '.[cloud]' "tensorflow[and-cuda]==${TF_VERSION}"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 edgelake \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgelake --create-home --shell /usr/sbin/nologin edgelake \
 && install -d -o 10001 -g 10001 /srv/lake  # the lake volume's mount point: a new named volume takes this owner
COPY --from=build /opt/edgelake /opt/edgelake
COPY infra/docker/healthcheck.py /usr/local/lib/edgelake/healthcheck.py
ENV PATH=/opt/edgelake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYSPARK_PYTHON=/opt/edgelake/bin/python \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    EDGELAKE_DATA_DIR=/var/lib/edgelake \
    EDGELAKE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/edgelake
# A batch job: its exit status is its health (Kubernetes Job / `docker compose run`).
HEALTHCHECK NONE
ENTRYPOINT ["edgelake"]
CMD ["train", "fraud", "--device", "gpu"]
