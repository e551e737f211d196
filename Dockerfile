# One image for every role (preprocessing pool, reducer, device workers, Flower, submit); see docker-compose.yml.
# Ascend hosts build FROM a CANN image that carries the runtime and ais_bench:
#   docker build --build-arg BASE_IMAGE=<CANN 8.x image with python3 and ais_bench> --build-arg EXTRAS=ascend .
# GPU hosts: --build-arg EXTRAS=torch --build-arg ORT_PACKAGE=onnxruntime-gpu (ONNX Runtime's CUDA provider).
# CPU anywhere: the defaults. GIT_COMMIT (e.g. $(git rev-parse HEAD)) goes into every report's manifest.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG EXTRAS=torch
ARG ORT_PACKAGE=
ARG GIT_COMMIT=
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg EVALUATOR_GIT_COMMIT=${GIT_COMMIT}
# OpenCV's shared libraries (Debian/Ubuntu images; CANN images on openEuler use yum)
RUN if command -v apt-get >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
        && rm -rf /var/lib/apt/lists/*; \
    elif command -v yum >/dev/null 2>&1; then yum install -y mesa-libGL glib2 && yum clean all; fi
WORKDIR /app
COPY pyproject.toml README.md ./
COPY commandline commandline
COPY model model
COPY evaluation evaluation
COPY conversion conversion
COPY workers workers
COPY tasks tasks
COPY orchestrator orchestrator
RUN if [ "$EXTRAS" = "ascend" ]; then pip install ".[report]"; else pip install ".[${EXTRAS},report]"; fi \
    && if [ -n "$ORT_PACKAGE" ]; then pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE"; fi
CMD ["python", "-m", "orchestrator", "--help"]
