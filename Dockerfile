# syntax=docker/dockerfile:1
# Two targets from shared stages:
#   service: slim CPU image without torch (the daemon when training runs elsewhere)
#   worker:  CUDA runtime with the training stack; also the all-in-one image
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY connectors ./connectors
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /wheels .

FROM ${PYTHON_IMAGE} AS service
ARG CODE_VERSION=dev
LABEL org.opencontainers.image.title="ticketune" \
      org.opencontainers.image.description="ticketune service (no training stack)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CODE_VERSION}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
    TICKETUNE_CODE_VERSION=${CODE_VERSION} TICKETUNE_CONFIG=/etc/ticketune/config.yaml
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --uid 10001 --create-home --home-dir /home/ticketune ticketune \
 && mkdir -p /data && chown ticketune /data
USER 10001
WORKDIR /data
EXPOSE 9400
ENTRYPOINT ["ticketune"]
CMD ["run"]

FROM ${CUDA_IMAGE} AS worker
ARG CODE_VERSION=dev
LABEL org.opencontainers.image.title="ticketune-worker" \
      org.opencontainers.image.description="ticketune with the CUDA training stack (all-in-one)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CODE_VERSION}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true \
    TICKETUNE_CODE_VERSION=${CODE_VERSION} TICKETUNE_CONFIG=/etc/ticketune/config.yaml \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.10.* python3-pip=22.* \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python3 -m pip install --no-cache-dir "$(ls /wheels/*.whl)[train]" && rm -rf /wheels \
 && useradd --uid 10001 --create-home --home-dir /home/ticketune ticketune \
 && mkdir -p /data && chown ticketune /data
USER 10001
WORKDIR /data
EXPOSE 9400
ENTRYPOINT ["ticketune"]
CMD ["run"]
