"""Time and peak memory of brain extraction and registration for one full-size study.

Writes one synthetic study with a ~300-slice CTA (0.625 mm), loads its NCCT and CTA with
``imaging.series``, then runs and measures each stage of the
preparation: brain extraction, CTA->NCCT rigid (ANTs), NCCT->template affine (ANTs) and the
resampling of both to template space; then SimpleITK's own rigid registration (Mattes MI,
Euler3DTransform, three levels) on the same 2 mm images beside the ANTs rigid, as a reference.
The CTA's load is also timed against SimpleITK's DICOM series reader (GDCM) on the same files.
Target on the 2-core machine: the whole preparation under 20 s and under 2 GB, the full-size
CTA loaded in under 3 s. A report, not a test: the exit status is 0 whatever the figures.

    python tests/benchmarks/prepare.py [--seed 0] [--index 0] [--cta-slice-mm 0.625]
        [--method affine|syn]

Peak memory per stage is the highest resident set size sampled (every 5 ms) while the stage
ran, for the whole process: it includes the loaded volumes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from scanet_node.imaging import series as imaging_series
from scanet_node.synth.cohort import plan_study, write_study

TARGET_SECONDS = 20.0
TARGET_MB = 2048.0
TARGET_CTA_LOAD_SECONDS = 3.0


class Meter:
    """Wall time and peak RSS of named stages."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []
        self._process = psutil.Process()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peak = [self._process.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], self._process.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            stop.set()
            thread.join()
            peak[0] = max(peak[0], self._process.memory_info().rss)
            self.rows.append((name, seconds, peak[0] / 2**20))

    def time(self, name: str, fn: Callable[[], Any]) -> Any:
        with self.stage(name):
            return fn()


def load_series(folder: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """HU ``[k, j, i]`` and the index ``(i, j, k)`` -> LPS affine of a series folder."""
    volume = imaging_series.load_series(sorted(folder.glob("*.dcm")))
    return np.asarray(volume.hu, dtype=np.float32), np.asarray(volume.affine, dtype=np.float64)


def sitk_load(folder: Path) -> npt.NDArray[np.float32]:
    """The peer of :func:`load_series`: SimpleITK's (GDCM) series reader, HU ``[k, j, i]``."""
    import SimpleITK as sitk  # type: ignore[import-untyped,unused-ignore]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return np.asarray(sitk.GetArrayFromImage(reader.Execute()), dtype=np.float32)


def sitk_rigid(
    fixed_arr: npt.NDArray[np.float32],
    fixed_aff: npt.NDArray[np.float64],
    moving_arr: npt.NDArray[np.float32],
    moving_aff: npt.NDArray[np.float64],
    mask_arr: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """SimpleITK rigid CTA -> NCCT on the same 2 mm images; returns CTA LPS -> NCCT LPS."""
    import SimpleITK as sitk  # type: ignore[import-untyped,unused-ignore]

    def image(array: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> Any:
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))  # [k, j, i] is SimpleITK's
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        img.SetSpacing(tuple(float(v) for v in spacing))
        img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
        img.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing).ravel()))
        return img

    fixed = image(fixed_arr, fixed_aff)
    moving = image(moving_arr, moving_aff)
    mask = image(mask_arr.astype(np.uint8), fixed_aff)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=20240101)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    # The result maps fixed (NCCT) points to moving (CTA) points; read it as a 4x4.
    basis = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([result.TransformPoint(tuple(float(v) for v in p)) for p in basis])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    return np.asarray(np.linalg.inv(matrix))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    parser.add_argument("--method", choices=["affine", "syn"], default="affine")
    args = parser.parse_args()

    from scanet_node.imaging import register as reg
    from scanet_node.imaging.brain import block_factors, block_reduce, extract_brain, voxel_sizes
    from scanet_node.imaging.template import load_template

    meter = Meter()
    with tempfile.TemporaryDirectory(prefix="scanet-prepare-bench-") as tmp:
        manifest = write_study(
            Path(tmp), plan_study(args.seed, args.index), cta_slice_mm=args.cta_slice_mm
        )
        folder = Path(tmp) / manifest["case_id"]
        manifest = json.loads((folder / "manifest.json").read_text())
        ncct, ncct_aff = meter.time("load NCCT", lambda: load_series(folder / "2_ncct"))
        cta, cta_aff = meter.time("load CTA", lambda: load_series(folder / "3_cta"))
        loading = list(meter.rows)
        meter.rows.clear()
        peer_cta = meter.time(
            "load CTA (SimpleITK, reference)", lambda: sitk_load(folder / "3_cta")
        )
        load_reference = list(meter.rows)
        meter.rows.clear()

    template = meter.time("load template", load_template)
    brain = meter.time("brain extraction", lambda: extract_brain(ncct, ncct_aff))
    cta_to_ncct = meter.time(
        "CTA->NCCT rigid (ANTs)",
        lambda: reg.register_cta_to_ncct(cta, cta_aff, ncct, ncct_aff, brain.cavity | brain.skull),
    )
    fit = meter.time(
        f"NCCT->template {args.method} (ANTs)",
        lambda: reg.register_ncct_to_template(
            ncct, ncct_aff, brain.brain, template=template, method=args.method
        ),
    )
    transform = replace(fit.transform, cta_to_ncct=cta_to_ncct)

    def resample() -> tuple[Any, Any, Any]:
        grid = template.grid
        return (
            transform.to_template(ncct, ncct_aff, grid),
            transform.to_template(
                brain.brain.astype(np.float32), ncct_aff, grid, fill=0.0, antialias=False
            ),
            transform.to_template(cta, cta_aff, grid, source="cta"),
        )

    meter.time("resample NCCT, mask, CTA to template", resample)
    preparation = list(meter.rows)
    meter.rows.clear()

    # SimpleITK's rigid on exactly the images the ANTs rigid sees.
    fixed_arr, fixed_aff = reg._reduced(
        ncct, ncct_aff, reg.REGISTRATION_MM, window=reg.REGISTRATION_CTA_WINDOW_HU
    )
    moving_arr, moving_aff = reg._reduced(
        cta, cta_aff, reg.REGISTRATION_MM, window=reg.REGISTRATION_CTA_WINDOW_HU
    )
    head = block_reduce(
        brain.cavity | brain.skull, block_factors(voxel_sizes(ncct_aff), reg.REGISTRATION_MM), "any"
    )
    head = reg._dilate(np.asarray(head, bool), reg.HEAD_MARGIN_MM, fixed_aff)
    sitk_matrix = meter.time(
        "CTA->NCCT rigid (SimpleITK, reference)",
        lambda: sitk_rigid(fixed_arr, fixed_aff, moving_arr, moving_aff, head),
    )
    reference = list(meter.rows)

    clot = np.asarray(manifest["occlusion"]["clot_center_patient"])
    clot_mni = np.asarray(manifest["occlusion"]["clot_center_mni"])
    err_ants_rigid = np.linalg.norm(reg._apply(cta_to_ncct, clot[None])[0] - clot)
    err_sitk_rigid = np.linalg.norm(reg._apply(sitk_matrix, clot[None])[0] - clot)
    err_template = np.linalg.norm(transform.patient_to_mni(clot, source="cta") - clot_mni)

    print(
        f"study {manifest['case_id']}: NCCT {ncct.shape[0]} x {ncct.shape[1]} x {ncct.shape[2]}, "
        f"CTA {cta.shape[0]} x {cta.shape[1]} x {cta.shape[2]} "
        f"({args.cta_slice_mm} mm slices), brain {brain.volume_ml:.0f} mL, "
        f"similarity {fit.similarity:.3f}"
    )
    print(f"{'stage':42s} {'seconds':>8s} {'peak RSS MB':>12s}")
    for name, seconds, mb in loading + load_reference + preparation + reference:
        print(f"{name:42s} {seconds:8.2f} {mb:12.0f}")
    cta_load, peer_load = loading[1][1], load_reference[0][1]
    print(
        f"CTA load ({cta.shape[0]} slices): {cta_load:.2f} s, SimpleITK {peer_load:.2f} s "
        f"({cta_load / peer_load:.2f}x; same shape: {peer_cta.shape == cta.shape}; "
        f"target < {TARGET_CTA_LOAD_SECONDS:.0f} s: "
        f"{'PASS' if cta_load < TARGET_CTA_LOAD_SECONDS else 'FAIL'})"
    )
    total = sum(row[1] for row in preparation)
    peak = max(row[2] for row in loading + preparation)
    with_loading = total + sum(row[1] for row in loading)
    verdict = "PASS" if with_loading < TARGET_SECONDS and peak < TARGET_MB else "FAIL"
    print(
        f"preparation (template to resampling): {total:.2f} s; with loading {with_loading:.2f} s; "
        f"peak {peak:.0f} MB (target < {TARGET_SECONDS:.0f} s, < {TARGET_MB:.0f} MB: {verdict})"
    )
    print(
        f"clot error: CTA->NCCT rigid ANTs {err_ants_rigid:.2f} mm, SimpleITK "
        f"{err_sitk_rigid:.2f} mm (truth: identity); CTA clot -> MNI {err_template:.2f} mm"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
