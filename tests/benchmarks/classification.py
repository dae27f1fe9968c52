"""Series classification on a synthetic cohort, against the generator's truth (on demand).

    python tests/benchmarks/classification.py [--studies 210] [--full-size] [--workers 2]

Writes the studies (every variant in turn: standard, reversed, gantry tilt, missing slice, no
CTA, JPEG Lossless, RLE), classifies each series as the node does when it settles, once as
written and once without its descriptive tags, and prints the two confusion tables (truth by
rows; NCCT / CTA / not used by columns) and every miss with its reason. The bars: no NCCT or
CTA missed, no localizer, MIP or dose report used; ``--strict`` exits 1 when one is missed.
The CI-sized table is tests/integration/test_classification_table.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classification_table import Table, classify_cohort


def _chunk(first: int, count: int, seed: int, small: bool) -> Table:
    with tempfile.TemporaryDirectory(prefix="scanet-classification-") as tmp:
        return classify_cohort(Path(tmp), count, seed=seed, small=small, first=first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=210)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--full-size", action="store_true", help="512 px instead of 128 px")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any miss")
    args = parser.parse_args()
    started = time.perf_counter()
    table = Table()
    step = 5
    chunks = [(first, min(step, args.studies - first)) for first in range(0, args.studies, step)]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(_chunk, first, count, args.seed, not args.full_size)
            for first, count in chunks
        ]
        for future in as_completed(futures):
            part = future.result()
            for condition, counts in part.counts.items():
                table.counts[condition].update(counts)
            table.wrong.extend(part.wrong)
            table.studies += part.studies
            print(
                f"  {table.studies}/{args.studies} studies, {time.perf_counter() - started:.0f} s"
            )
    size = "512 px" if args.full_size else "128 px (--small)"
    print(f"\n{table.studies} studies of seed {args.seed}, {size}, every variant in turn")
    for condition, title in (("tags", "as written"), ("bare", "without descriptive tags")):
        print(f"\nSeries classification, {title}:\n")
        print(table.markdown(condition))
    print(f"\nMisses: {len(table.wrong)}")
    for line in sorted(table.wrong):
        print(f"  {line}")
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 1 if args.strict and table.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
