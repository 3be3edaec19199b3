import re

import pytest

from runner.logparse import MAX_DICT_CHARS, Progress, parse_line, parse_metrics, parse_progress


def test_json_line_gives_its_numbers():
    assert parse_metrics('{"loss": 1.5, "step": 10, "tag": "x", "ok": true}') == {"loss": 1.5, "step": 10.0}


def test_nested_json_is_flattened_with_dots():
    assert parse_metrics('{"eval": {"loss": 0.5, "acc": 0.9}}') == {"eval.loss": 0.5, "eval.acc": 0.9}


def test_hugging_face_trainer_dict_line():
    line = "{'loss': 1.23, 'grad_norm': 0.871, 'learning_rate': 2e-05, 'epoch': 0.5}"
    assert parse_metrics(line) == {"loss": 1.23, "grad_norm": 0.871, "learning_rate": 2e-05, "epoch": 0.5}


def test_llama_factory_dict_line_after_a_logger_prefix():
    line = "[INFO|2024-05-01 10:00:00] trainer.py:123 >> {'eval_loss': 0.75, 'eval_runtime': 3.2, 'epoch': 1.0}"
    assert parse_metrics(line) == {"eval_loss": 0.75, "eval_runtime": 3.2, "epoch": 1.0}


def test_dict_line_with_nan_keeps_the_finite_values():
    assert parse_metrics("{'loss': nan, 'grad_norm': inf, 'epoch': 0.1}") == {"epoch": 0.1}


def test_dict_line_is_never_evaluated_as_code():
    assert parse_metrics("{'loss': __import__('os').system('echo hacked')}") == {}
    assert parse_metrics("{'loss': (lambda: 1)()}") == {}


def test_too_long_dict_line_is_not_read():
    line = "{'loss': 1.0, 'pad': '" + "x" * MAX_DICT_CHARS + "'}"
    assert parse_metrics(line) == {}


def test_deeply_nested_dict_line_does_not_crash():
    assert parse_metrics("{'a': " + "[" * 3000 + "]" * 3000 + "}") == {}


def test_key_value_pairs():
    assert parse_metrics("step=10 loss=0.52 lr=3e-4 acc=.9 name=run1") == {
        "step": 10.0,
        "loss": 0.52,
        "lr": 3e-4,
        "acc": 0.9,
    }


def test_key_value_skips_environment_style_keys_and_words_glued_to_numbers():
    assert parse_metrics("CUDA_VISIBLE_DEVICES=0 model=llama-7b size=7b") == {}


def test_plain_text_has_no_metrics():
    assert parse_metrics("Loading checkpoint shards: done") == {}
    assert parse_metrics("") == {}


def test_extra_patterns_add_named_groups():
    pattern = re.compile(r"eval accuracy: (?P<eval_acc>[0-9.]+) \((?P<eval_n>\d+) samples\)")
    assert parse_metrics("eval accuracy: 0.93 (500 samples)", [pattern]) == {"eval_acc": 0.93, "eval_n": 500.0}


def test_extra_pattern_group_that_is_not_a_number_is_ignored():
    pattern = re.compile(r"phase (?P<phase>\w+)")
    assert parse_metrics("phase warmup", [pattern]) == {}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (" 45%|████▌     | 45/100 [00:01<00:02, 20.00it/s]", Progress(step=45, total=100)),
        ("\r100%|██████████| 30/30 [00:03<00:00,  9.8it/s, loss=0.1]", Progress(step=30, total=30)),
        ("Training:  12%|█▏        | 12/100 [00:01<00:08]", Progress(step=12, total=100)),
        ("step 12/500 loss=1.2", Progress(step=12, total=500)),
        ("Step: 7 / 70", Progress(step=7, total=70)),
        ("global_step 3/9", Progress(step=3, total=9)),
        ("iter [4/8]", Progress(step=4, total=8)),
        ("Epoch 2/3", Progress(epoch=2, epochs=3)),
    ],
)
def test_progress_forms(line, expected):
    assert parse_progress(line) == expected


def test_progress_beyond_its_total_or_of_zero_is_ignored():
    assert parse_progress("step 12/0") is None
    assert parse_progress("step 13/12") is None
    assert parse_progress("45it [00:01, 20.00it/s]") is None
    assert parse_progress("2024/05/01 started") is None


def test_progress_fraction():
    assert Progress(step=25, total=100).fraction == 0.25
    assert Progress(epoch=1, epochs=4).fraction == 0.25
    assert Progress().fraction is None


def test_parse_line_gives_both_metrics_and_progress():
    info = parse_line(" 50%|█████     | 5/10 [00:01<00:01, loss=0.4]")
    assert info.progress == Progress(step=5, total=10)
    assert info.metrics == {"loss": 0.4}
    assert not parse_line("hello")
