"""The peer of `bench.runpath`: Celery on Redis doing the same work (`bash -c <command>` in a worker process).

Only the bench imports it, and only when the optional extra is installed (`pip install -e '.[peer]'`) and a
Redis is reachable; the product never does. The worker is started as
`celery -A bench.celery_peer worker` with `TF_PEER_REDIS` set to the Redis URL.
"""

from __future__ import annotations

import os
import subprocess
import time

from celery import Celery

app = Celery("tf_peer", broker=os.environ.get("TF_PEER_REDIS", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("TF_PEER_REDIS", "redis://127.0.0.1:6379/0"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_serializer="json",
                result_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True,
                result_expires=600)


@app.task(name="tf_peer.run")
def run(command: str) -> dict[str, float]:
    """Run `bash -c command`; when it started and ended (epoch seconds)."""
    started = time.time()
    subprocess.run(["bash", "-c", command], check=False)
    return {"started": started, "ended": time.time()}
