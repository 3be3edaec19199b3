# The Trainforge images used by compose.yaml, two targets of one file:
#   gateway (trainforge-gateway:latest): `trainforge gateway`, `migrate`, `secrets` — requirements/gateway.txt
#            only: no torch, no Ultralytics (the gateway asks a runner for what needs them);
#   runner  (trainforge:latest): `trainforge runner` — everything, torch and Ultralytics included.
#
# torch is pinned by constraints.txt (torch==2.13.0); TORCH_INDEX_URL says which build the runner image takes:
#   CPU (default):  https://download.pytorch.org/whl/cpu      (CPU runners)
#   NVIDIA GPUs:    https://download.pytorch.org/whl/cu128    (for runner-gpuN services)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 docker compose build
#
# Offline builds (no package index reachable, as on the test machines: docs/fleet.md, "Docker Compose"): put
# wheels in the build context, wheelhouse/gateway/ (requirements/gateway.txt, setuptools and wheel: the gateway
# image's part) and wheelhouse/runner/ (the rest: torch, Ultralytics, ...), then build with
#   docker build --build-arg OFFLINE_WHEELS=1 --target gateway -t trainforge-gateway:latest .
# and pip installs from those folders alone (PIP_NO_INDEX, PIP_FIND_LINKS). Left unset (the default), pip uses
# the index as usual and wheelhouse/ holds only its README. The gateway target copies wheelhouse/gateway/ alone, so no torch
# wheel reaches its image.
FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINFORGE_STATE_DIR=/data

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY requirements ./requirements
COPY shared ./shared
COPY gateway ./gateway
COPY runner ./runner
COPY migrations ./migrations
COPY trainforge ./trainforge
RUN useradd --create-home --uid 1000 trainforge \
    && mkdir -p /data /secrets/nats /secrets/gateway /secrets/runner /secrets/reader \
    && chown -R trainforge /data /secrets
VOLUME ["/data"]

FROM base AS gateway
ARG OFFLINE_WHEELS=
# The package itself without its dependencies, then the gateway's part of them alone.
COPY wheelhouse/gateway /wheelhouse/gateway
RUN if [ -n "$OFFLINE_WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse/gateway; fi \
    && pip install -c constraints.txt -r requirements/gateway.txt \
    && pip install --no-deps .
USER trainforge
EXPOSE 8000
CMD ["trainforge", "gateway"]

FROM base AS runner
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG OFFLINE_WHEELS=
ENV YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/data/ultralytics \
    MPLCONFIGDIR=/data/matplotlib
# Ultralytics' cv2 (opencv-python) loads libGL and GLib, which the slim base lacks: without them every YOLO job
# fails with "ImportError: libGL.so.1". Installed from Debian unless the base already has them.
RUN if ! ldconfig -p | grep -q 'libGL\.so\.1 ' || ! ldconfig -p | grep -q 'libgthread-2\.0\.so\.0 '; then \
        apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY wheelhouse /wheelhouse
RUN if [ -n "$OFFLINE_WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/wheelhouse/gateway /wheelhouse/runner"; fi \
    && pip install --extra-index-url "$TORCH_INDEX_URL" -c constraints.txt .
USER trainforge
CMD ["trainforge", "runner"]
