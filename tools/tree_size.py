"""Check the tracked tree's size: it travels to lent GPU machines, which take at most 64 MiB with the wheels
they lack, so the tree keeps under 48 MiB (.ci/run runs this first).

    python tools/tree_size.py [LIMIT_MIB]     # one line; exit 1, naming the largest folders, when over
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

MIB = 1 << 20


def tracked_sizes(root: Path) -> dict[str, int]:
    """Tracked path -> bytes (as `git ls-files -z | xargs -0 du -cb` counts them)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    sizes = {}
    for name in names.decode().split("\0"):
        path = root / name
        if name and path.is_file() and not path.is_symlink():
            sizes[name] = path.stat().st_size
    return sizes


def folder_sizes(sizes: dict[str, int], depth: int = 3) -> Counter:
    """Bytes per folder, `depth` levels deep (tests/fixtures/anydoor-reference, ...)."""
    folders: Counter = Counter()
    for name, size in sizes.items():
        parts = name.split("/")[:-1]
        folders["/".join(parts[:depth]) or "."] += size
    return folders


def main(argv: list[str]) -> int:
    limit = float(argv[0]) if argv else 48.0
    root = Path(__file__).resolve().parent.parent
    total = sum(tracked_sizes(root).values())
    if total <= limit * MIB:
        print(f"tracked tree: {total / MIB:.1f} MiB (limit {limit:g} MiB)")
        return 0
    largest = ", ".join(f"{f} {s / MIB:.1f}" for f, s in folder_sizes(tracked_sizes(root)).most_common(5))
    print(
        f"error: the tracked tree is {total / MIB:.1f} MiB, over the {limit:g} MiB that leaves room for wheels on a "
        f"GPU machine; largest folders (MiB): {largest}; slim recordings (tools/reference/slim.py) or keep data "
        "out of the tree",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
