"""Time to write one synthetic study with a ~300-slice CTA (target: under 10 s on 2 cores).

Runs ``write_study`` for the first studies of a seed at full size with 0.625 mm CTA
slices (about 300), in a fresh process so that loading the anatomy counts, and
prints seconds per stage, the total and the peak memory. A report, not a test:
the exit status is 0 whatever the figures.

    python tests/benchmarks/synth.py [--studies 3] [--cta-slice-mm 0.625]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from scanet_node.synth.cohort import plan_study, write_study

TARGET_SECONDS = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scanet-synth-bench-") as tmp:
        for index in range(args.studies):
            started = time.perf_counter()
            manifest = write_study(
                Path(tmp), plan_study(args.seed, index), cta_slice_mm=args.cta_slice_mm
            )
            total = time.perf_counter() - started
            cta = next(s for s in manifest["series"] if s["role"] == "cta")
            files = sum(s["instances"] for s in manifest["series"])
            stages = ", ".join(f"{k} {v:.2f}" for k, v in manifest["timings"].items())
            verdict = "PASS" if total < TARGET_SECONDS else "FAIL"
            print(
                f"study {index}: {cta['instances']} CTA slices, {files} files, "
                f"{total:.2f} s total (target < {TARGET_SECONDS:.0f} s: {verdict})"
                + (" [includes loading the anatomy]" if index == 0 else "")
            )
            print(f"  stages (s): {stages}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
