"""Fleet contracts stay compatible, and advice turns a measurement into a batch, cache and warnings."""

from __future__ import annotations

from pathlib import Path

import msgspec
import psutil
import pytest

from runner.advice import AdviceError, Measurement, Probe, suggest, target_device
from shared.contracts import RunnerHeartbeat, event_decoder
from shared.contracts.events import HostStats
from shared.contracts.fleet import AdviceRequest
from shared.settings import Settings
from shared.subjects import Subjects


def measurement(per_image_mb: float, fixed_mb: float = 50.0) -> Measurement:
    return Measurement(model="yolov8n", task="detect", device="cpu", imgsz=320, parameters=3_157_200,
                       method="cpu-rss-peak", probes=[Probe(1, fixed_mb + per_image_mb, 0.1)],
                       fixed_mb=fixed_mb, per_image_mb=per_image_mb, step_fixed_s=0.01, step_per_image_s=0.05)


def test_a_heartbeat_from_an_older_runner_has_no_host_stats_and_new_ones_round_trip() -> None:
    old = (b'{"type":"runner.heartbeat","runner_id":"r1","seq":3,"ts":"2026-01-01T00:00:00Z","host":"h",'
           b'"pool":"cpu","state":"idle"}')
    beat = event_decoder.decode(old)
    assert isinstance(beat, RunnerHeartbeat) and beat.host_stats is None and beat.device == ""
    new = RunnerHeartbeat(runner_id="r1", seq=4, host_stats=HostStats(cpu_count=2, disk_free_mb=10))
    assert event_decoder.decode(msgspec.json.encode(new)) == new


def test_fleet_subjects_are_versioned_and_validate_their_tokens() -> None:
    names = Subjects("tf")
    assert names.runner_control("r-1") == "tf.control.v1.runner.r-1"
    assert names.advice("gpu") == "tf.control.v1.advice.gpu"
    with pytest.raises(ValueError):
        names.runner_control("a.b")


def test_the_batch_is_the_largest_power_of_two_within_the_memory_limit() -> None:
    request = AdviceRequest(model="yolov8n", imgsz=320, memory_limit_mb=1000)
    assert suggest(request, measurement(per_image_mb=100.0), Settings()).batch == 8  # 50 + 8*100 <= 1000
    assert suggest(request, measurement(per_image_mb=1.0), Settings()).batch == 64  # capped


def test_a_batch_that_does_not_fit_is_one_with_a_memory_pressure_warning() -> None:
    reply = suggest(AdviceRequest(model="yolov8n", memory_limit_mb=100), measurement(per_image_mb=500.0),
                    Settings())
    assert reply.batch == 1 and any("memory pressure" in w for w in reply.warnings)


def test_a_requested_batch_beyond_the_available_memory_would_not_fit() -> None:
    available_mb = psutil.virtual_memory().available / 2**20
    reply = suggest(AdviceRequest(model="yolov8n", batch=64), measurement(per_image_mb=available_mb / 8),
                    Settings())
    assert any("batch 64 would not fit" in w for w in reply.warnings)


def test_cache_is_ram_for_a_small_dataset_disk_for_a_huge_one_and_off_without_one(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    data = settings.datasets_dir / "d1"
    data.mkdir(parents=True)
    small = suggest(AdviceRequest(model="yolov8n", imgsz=320, dataset_path=str(data), dataset_images=100),
                    measurement(per_image_mb=10.0), settings)
    assert small.cache == "ram"
    huge_count = int(psutil.virtual_memory().available / (320 * 320 * 3))  # decoded: more than all memory
    huge = suggest(AdviceRequest(model="yolov8n", imgsz=320, dataset_path=str(data), dataset_images=huge_count),
                   measurement(per_image_mb=10.0), settings)
    free_mb = psutil.disk_usage(str(data)).free / 2**20
    assert huge.cache == ("disk" if huge_count * 320 * 320 * 3 / 2**20 * 2 < free_mb else False)
    assert suggest(AdviceRequest(model="yolov8n"), measurement(per_image_mb=10.0), settings).cache is False


def test_a_dataset_outside_the_data_roots_is_not_inspected(tmp_path: Path) -> None:
    reply = suggest(AdviceRequest(model="yolov8n", dataset_path="/etc"), measurement(per_image_mb=10.0),
                    Settings(state_dir=tmp_path))
    assert reply.cache is False and any("outside" in w for w in reply.warnings)


def test_counting_images_of_an_allowed_dataset_decides_the_cache(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    images = settings.datasets_dir / "d2" / "images"
    images.mkdir(parents=True)
    for i in range(5):
        (images / f"{i}.jpg").write_bytes(b"x")
    (images / "labels.txt").write_text("")
    reply = suggest(AdviceRequest(model="yolov8n", dataset_path=str(images.parent)),
                    measurement(per_image_mb=10.0), settings)
    assert reply.cache == "ram" and any("5 images" in n for n in reply.notes)


def test_the_target_device_is_the_runners_own_unless_the_request_names_one_it_lacks() -> None:
    assert target_device("auto", "cuda:1") == "cuda:1"
    assert target_device("cpu", "cuda:0") == "cpu"
    with pytest.raises(AdviceError, match="cuda:0"):
        target_device("cuda:0", "cpu")
