"""Range headers of downloads: one byte range, served as 206; past the end 416; anything else ignored."""

import pytest

from gateway.ranges import RangeNotSatisfiable, byte_range, content_range


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("", None),
    ("bytes=0-9", (0, 10)),
    ("bytes=10-", (10, 100)),
    ("bytes=90-200", (90, 100)),
    ("bytes=-10", (90, 100)),
    ("bytes=-500", (0, 100)),
    ("bytes=0-1,5-9", None),  # several ranges: the whole file
    ("items=0-9", None),
    ("bytes=9-3", None),
    ("bytes=-", None),
    ("bytes=a-b", None),
])
def test_a_single_byte_range_is_parsed(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize("header, size",
                         [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_a_range_past_the_end_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        byte_range(header, size)
    assert raised.value.status_code == 416 and raised.value.headers == {"Content-Range": f"bytes */{size}"}


def test_content_range_names_the_last_byte_inclusive() -> None:
    assert content_range(10, 20, 100) == "bytes 10-19/100"
