"""Summarize a py-spy `--format raw` file (collapsed stacks): the functions with the most samples, inclusive
(anywhere on the stack) and self (at the top).

    python -m bench.profile_summary /tmp/prof/gateway.txt [--top 30] [--filter gateway/]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--filter", default="", help="only frames whose text contains this")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in args.file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            if args.filter in frame:
                inclusive[frame] += n
    print(f"{total} samples")
    print("-- inclusive")
    for frame, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("-- self")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
