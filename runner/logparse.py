"""Reading metrics and progress out of one line of a training log. Pure functions, no I/O.

Metrics, first match wins (extra patterns are added on top):
- a JSON object line: `{"loss": 1.2, "step": 10}`;
- a Python dict line, as the Hugging Face Trainer and LLaMA-Factory print them:
  `{'loss': 1.23, 'learning_rate': 2e-05, 'epoch': 0.5}` (read with `ast.literal_eval`, never evaluated);
  a prefix before the `{` (a logger's timestamp) is allowed;
- `key=value` pairs anywhere in the line: `step=10 loss=0.52 lr=3e-4` (keys in ALL CAPS, like environment
  variables, are skipped);
- per-target regular expressions whose named groups are metrics.
Only numbers become metrics (not booleans, strings, NaN or infinities); nested objects are flattened with `.`.

Progress: tqdm bars (`45%|████▌     | 45/100 [00:01<00:02, ...]`), `step 12/500` / `Step: 12/500` /
`iter 3/10`, and `epoch 2/3`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_DICT_CHARS = 8192
"""Longer `{...}` lines are not read as dicts (bounds the work `literal_eval` does on one line)."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_KEY_VALUE_RE = re.compile(rf"(?<![\w./-])(?P<key>[A-Za-z_][\w./-]*)\s*=\s*(?P<value>{_NUMBER})(?![\w.])")
_ENV_KEY_RE = re.compile(r"^[A-Z0-9_]+\Z")
_TQDM_RE = re.compile(r"(?:^|\s|:)\d{1,3}%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\b")
_STEP_RE = re.compile(
    r"\b(?:global[ _])?(?:step|iter|iteration)s?\s*[:=]?\s*\[?(?P<step>\d+)\s*/\s*(?P<total>\d+)", re.IGNORECASE
)
_EPOCH_RE = re.compile(r"\bepoch\s*[:=]?\s*\[?(?P<epoch>\d+)\s*/\s*(?P<epochs>\d+)", re.IGNORECASE)
_NON_FINITE_RE = re.compile(r"(?<=[:\[,(\s])-?(?:nan|inf)(?=\s*[,}\])])")


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None

    @property
    def fraction(self) -> float | None:
        if self.step is not None and self.total:
            return min(1.0, self.step / self.total)
        if self.epoch is not None and self.epochs:
            return min(1.0, self.epoch / self.epochs)
        return None


@dataclass(frozen=True)
class LineInfo:
    metrics: dict[str, float] = field(default_factory=dict)
    progress: Progress | None = None

    def __bool__(self) -> bool:
        return bool(self.metrics) or self.progress is not None


def parse_line(line: str, patterns: Iterable[re.Pattern[str]] = ()) -> LineInfo:
    """Metrics and progress found in one log line (empty `LineInfo` when there are none)."""
    metrics = parse_metrics(line, patterns)
    return LineInfo(metrics=metrics, progress=parse_progress(line))


def parse_metrics(line: str, patterns: Iterable[re.Pattern[str]] = ()) -> dict[str, float]:
    text = line.strip()
    found = _dict_metrics(text)
    if found is None:
        found = _key_value_metrics(text)
    for pattern in patterns:
        if match := pattern.search(text):
            for key, value in match.groupdict().items():
                if (number := _number(value)) is not None:
                    found[key] = number
    return found


def parse_progress(line: str) -> Progress | None:
    if match := _TQDM_RE.search(line):
        return _step_progress(match)
    if match := _STEP_RE.search(line):
        return _step_progress(match)
    if match := _EPOCH_RE.search(line):
        epoch, epochs = int(match["epoch"]), int(match["epochs"])
        if 0 < epochs and epoch <= epochs:
            return Progress(epoch=epoch, epochs=epochs)
    return None


def _step_progress(match: re.Match[str]) -> Progress | None:
    step, total = int(match["step"]), int(match["total"])
    if total <= 0 or step > total:
        return None
    return Progress(step=step, total=total)


def _dict_metrics(text: str) -> dict[str, float] | None:
    """Metrics of a JSON / Python dict line; None when the line is not one."""
    if not text.endswith("}") or "{" not in text:
        return None
    body = text[text.index("{") :]
    if len(body) > MAX_DICT_CHARS:
        return None
    value: Any
    try:
        value = json.loads(body)
    except ValueError:
        try:
            value = ast.literal_eval(_NON_FINITE_RE.sub("None", body))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    if not isinstance(value, dict):
        return None
    return _flatten(value)


def _flatten(value: Mapping[Any, Any], prefix: str = "", depth: int = 0) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and depth < 3:
            out.update(_flatten(item, f"{name}.", depth + 1))
        elif (number := _number(item)) is not None:
            out[name] = number
    return out


def _key_value_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for match in _KEY_VALUE_RE.finditer(text):
        key = match["key"]
        if _ENV_KEY_RE.match(key):
            continue
        if (number := _number(match["value"])) is not None:
            out[key] = number
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None
