"""Seconds per study and peak memory of SCANet inference, with the plain ResNet34 beside it.

On CPU (2 threads, float32, the Predictor's path) at the full 224 input and at the demo
weights' 112, batch 1; on CUDA when present, batch 1 and batch 12 under bf16 autocast.
Each model is measured in its own child process, so that peak memory (the child's highest
resident set size, ``ru_maxrss``) belongs to that model alone. A report, not a test: the
exit status is 0 whatever the figures.

    python tests/benchmarks/inference.py [--repeats 5] [--sizes 224 112]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from scanet_node.model.network import Architecture, build
kind, size, batch, device, repeats, threads = sys.argv[1:7]
size, batch, repeats, threads = int(size), int(batch), int(repeats), int(threads)
torch.set_num_threads(threads)
torch.manual_seed(0)
dev = torch.device(device)
model = build(Architecture(kind=kind, size=size)).to(dev).eval()
x = torch.rand(batch, 2, 26, size, size, device=dev)
ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else None
times = []
with torch.inference_mode():
    for i in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if ctx:
            with ctx():
                model(x)
        else:
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first pass warms up
            times.append(time.perf_counter() - t)
times.sort()
gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
print(json.dumps({"median_s": times[len(times) // 2], "rss_mb":
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mb": gpu}))
"""


def measure(kind: str, size: int, batch: int, device: str, repeats: int, threads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            kind,
            str(size),
            str(batch),
            device,
            str(repeats),
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    runs = [("cpu", size, 1) for size in args.sizes]
    if torch.cuda.is_available():
        runs += [("cuda", 224, 1), ("cuda", 224, 12)]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, median of {args.repeats}")
    print("| device | input | batch | model | s per batch | s per study | peak RSS MB | GPU MB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for device, size, batch in runs:
        for kind in ("scanet", "resnet34"):
            r = measure(kind, size, batch, device, args.repeats, args.threads)
            rows[(device, size, batch, kind)] = r
            gpu = "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"
            precision = "bf16" if device == "cuda" else "fp32"
            print(
                f"| {device} {precision} | {size} | {batch} | {kind} | {r['median_s']:.3f} "
                f"| {r['median_s'] / batch:.3f} | {r['rss_mb']:.0f} | {gpu} |",
                flush=True,
            )
        s, b = rows[(device, size, batch, "scanet")], rows[(device, size, batch, "resnet34")]
        print(
            f"|  |  |  | SCANet / ResNet34 | {s['median_s'] / b['median_s']:.2f}x time "
            f"| | {s['rss_mb'] / b['rss_mb']:.2f}x RSS | |"
        )


if __name__ == "__main__":
    main()
