# The Trainforge image used by compose.yaml: `trainforge gateway`, `migrate` and `runner`.
#
# torch is pinned by constraints.txt (torch==2.13.0); TORCH_INDEX_URL says which build pip takes:
#   CPU (default):  https://download.pytorch.org/whl/cpu      (small image; gateway, CPU runners)
#   NVIDIA GPUs:    https://download.pytorch.org/whl/cu128    (for runner-gpuN services)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 docker compose build
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINFORGE_STATE_DIR=/data \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/data/ultralytics \
    MPLCONFIGDIR=/data/matplotlib

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY runner ./runner
COPY migrations ./migrations
COPY trainforge ./trainforge
RUN pip install --extra-index-url "$TORCH_INDEX_URL" -c constraints.txt . \
    && useradd --create-home --uid 1000 trainforge \
    && mkdir -p /data /secrets/nats /secrets/gateway /secrets/runner /secrets/reader \
    && chown -R trainforge /data /secrets

USER trainforge
VOLUME ["/data"]
EXPOSE 8000
CMD ["trainforge", "--help"]
