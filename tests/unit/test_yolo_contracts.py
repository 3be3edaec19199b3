"""YOLO run specs on the wire, and the allow-list of extra Ultralytics train arguments."""

from __future__ import annotations

import msgspec
import pytest

from shared.contracts import Job, job_decoder
from shared.contracts.yolo import (
    CONTROLLED_ARGS,
    SPEC_FIELDS,
    TRAIN_EXTRA_ARGS,
    ExportFormat,
    YoloExportSpec,
    YoloPredictSpec,
    YoloTrainSpec,
    YoloValSpec,
    validate_train_extra,
)


@pytest.mark.parametrize(
    "spec",
    [
        YoloTrainSpec(data="/d/data.yaml", epochs=3, extra={"mosaic": 0.0, "freeze": 10}),
        YoloTrainSpec(model=None, model_yaml="backbone: []\nhead: []\n", data="/d/data.yaml"),
        YoloValSpec(model="/w/best.pt", data="/d/data.yaml", split="test", conf=0.25),
        YoloExportSpec(model="/w/best.pt", format="onnx", dynamic=True, opset=17),
        YoloPredictSpec(model="/w/best.onnx", sources=["/i/a.jpg", "file:///x/b.jpg"], save=False),
    ],
)
def test_yolo_specs_travel_in_a_job_under_their_kind(spec) -> None:
    job = Job(run_id="r1", project_id="p1", pool="cpu", spec=spec)
    wire = msgspec.json.encode(job)
    assert job_decoder.decode(wire).spec == spec
    assert msgspec.json.decode(wire)["spec"]["kind"] == type(spec).__struct_config__.tag


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"kind": "yolo.train", "data": "/d", "model": None}, "one of `model` or `model_yaml`"),
        ({"kind": "yolo.train", "data": "/d", "batch": 0}, "`batch` must be"),
        ({"kind": "yolo.train", "data": "/d", "device": "gpu0"}, "$.device"),
        ({"kind": "yolo.export", "model": "m", "format": "tflite2"}, "$.format"),
        ({"kind": "yolo.predict", "model": "m", "sources": []}, "$.sources"),
    ],
)
def test_invalid_yolo_specs_are_rejected_naming_the_problem(payload, fragment) -> None:
    with pytest.raises(msgspec.ValidationError, match=fragment.replace("$", r"\$").replace("`", "`")):
        msgspec.convert(payload, YoloTrainSpec | YoloValSpec | YoloExportSpec | YoloPredictSpec)


def test_train_extra_accepts_valid_ultralytics_arguments() -> None:
    extra = {
        "mosaic": 0.5,
        "degrees": 10,
        "cos_lr": True,
        "close_mosaic": 0,
        "freeze": [0, "model.1"],
        "cache": "ram",
        "amp": "bf16",
        "fraction": 0.5,
        "scale": [0.5, 1.5],
        "classes": [0, 2],
        "auto_augment": "augmix",
    }
    assert validate_train_extra(extra) == []


def test_train_extra_names_each_unknown_controlled_or_ill_typed_argument() -> None:
    problems = dict(
        validate_train_extra(
            {
                "mosaic": 2,
                "cos_lr": "yes",
                "close_mosaic": 1.5,
                "bogus": 1,
                "epochs": 3,
                "project": "/etc",
                "cfg": "/x.yaml",
                "pretrained": "/some/file.pt",
                "split": "holdout",
            }
        )
    )
    assert problems == {
        "extra.mosaic": "must be between 0 and 1",
        "extra.cos_lr": "must be a boolean",
        "extra.close_mosaic": "must be an integer",
        "extra.bogus": "unknown or unsupported Ultralytics train argument",
        "extra.epochs": "set `epochs` as a field of the spec, not in `extra`",
        "extra.project": "`project` is set by Trainforge and cannot be overridden",
        "extra.cfg": "`cfg` is set by Trainforge and cannot be overridden",
        "extra.pretrained": "must be a boolean",
        "extra.split": "must be one of test, train, val",
    }


def test_train_extra_allow_list_matches_ultralytics_default_config(tmp_path_factory) -> None:
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo-state"))
    from ultralytics.cfg import (
        CFG_BOOL_KEYS,
        CFG_FLOAT_KEYS,
        CFG_FRACTION_KEYS,
        CFG_INT_KEYS,
        DEFAULT_CFG_DICT,
    )

    assert set(TRAIN_EXTRA_ARGS) <= set(DEFAULT_CFG_DICT)
    assert (SPEC_FIELDS | CONTROLLED_ARGS) - {"save_dir"} <= set(DEFAULT_CFG_DICT)
    for key, kind in TRAIN_EXTRA_ARGS.items():
        if kind == "bool" and key != "pretrained":  # Ultralytics also takes a weights path; not allowed here
            assert key in CFG_BOOL_KEYS, key
        elif kind == "fraction":
            assert key in CFG_FRACTION_KEYS, key
        elif kind == "number":
            assert key in CFG_FLOAT_KEYS, key
        elif isinstance(kind, tuple):
            assert key in CFG_INT_KEYS, key


def test_export_formats_of_the_contract_are_those_of_ultralytics(tmp_path_factory) -> None:
    from typing import get_args

    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo-state"))
    from ultralytics.engine.exporter import export_formats

    assert set(get_args(ExportFormat)) == set(export_formats()["Argument"]) - {"-"}
