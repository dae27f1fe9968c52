"""Build the shipped CT template from the MNI ICBM152 2009a maps (offline tool).

Run once by a developer, never imported by the serving path::

    python -m scanet_node.imaging.build_template --wheel nilearn-0.14.1-py3-none-any.whl

The nilearn wheel (``pip download --no-deps nilearn==0.14.1``) carries the symmetric MNI ICBM152
2009a grey matter, white matter and brain-extracted T1 templates (1 mm, 197x233x189). No pip
package ships a CT template, so this tool derives a skull-stripped pseudo-CT of the intracranial
contents in MNI space:

- intracranial mask: the brain-extracted T1's support (T1 > 0) or grey + white matter
  probability > 0.2, largest connected component, closed with a 2 mm ball, holes filled in 3-D;
- Hounsfield units inside it mix CSF, grey and white matter by probability (CSF = the
  remainder), with values of its own (8, 36 and 26 HU), smoothed with a 2 mm Gaussian inside
  the mask (normalised convolution, so nothing bleeds in from outside), -1024 HU outside;
- resampled to a 1.5 mm grid in MNI RAS mm with a voxel centre at the MNI origin.

The synthetic studies (``scanet_node.synth``) come from the same MNI152 maps but are processed
differently on purpose (their cavity is the brain closed with 4 mm, smoothed and grown by a 2.5 mm
CSF rim; other HU values, a parenchymal texture, vessels, a skull): see ``models/template/
README.md`` for why registration accuracy measured on them remains optimistic. nibabel is
needed here only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

logger = logging.getLogger(__name__)

TEMPLATE_MEMBERS = {
    "gm": "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "t1": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
OUTPUT = Path(__file__).resolve().parents[2] / "models" / "template" / "mni152_2009a_ct.npz"

HU_CSF = 8.0
HU_GM = 36.0
HU_WM = 26.0
HU_BACKGROUND = -1024.0
PROB_BRAIN = 0.2  # grey + white matter probability that counts as brain
CLOSE_MM = 2.0
SMOOTH_MM = 2.0  # Gaussian sigma of the template's intensities
SPACING_MM = 1.5
MARGIN_MM = 6.0  # air kept around the mask's bounding box


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load(
    wheel: Path,
) -> tuple[dict[str, npt.NDArray[np.uint8]], npt.NDArray[np.float64], dict[str, str]]:
    import nibabel as nib

    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    hashes: dict[str, str] = {"wheel": _sha256(wheel.read_bytes())}
    affine: npt.NDArray[np.float64] | None = None
    with zipfile.ZipFile(wheel) as zf:
        for key, member in TEMPLATE_MEMBERS.items():
            raw = zf.read(member)
            hashes[member] = _sha256(raw)
            image = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
            arrays[key] = np.asarray(image.dataobj, dtype=np.uint8)
            if affine is None:
                affine = np.asarray(image.affine, dtype=np.float64)
            elif not np.allclose(affine, image.affine):
                raise ValueError(f"{member}: affine differs from the other templates")
    assert affine is not None
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError("expected a 1 mm RAS grid without rotation")
    return arrays, affine, hashes


def _ball(radius_vox: int) -> npt.NDArray[np.bool_]:
    r = radius_vox
    z, y, x = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return np.asarray(x * x + y * y + z * z <= r * r)


def build(wheel: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Derive the template arrays (see the module docstring) from the nilearn wheel.

    Arrays are stored ``[k, j, i]`` (z, y, x): the layout of our CT volumes (slice, row, col);
    each affine maps the index ``(i, j, k)`` to MNI mm (RAS).
    """
    arrays, affine_xyz, hashes = _load(wheel)
    gm = arrays["gm"].astype(np.float32) / 255.0
    wm = arrays["wm"].astype(np.float32) / 255.0
    t1 = arrays["t1"]

    mask = (t1 > 0) | (gm + wm > PROB_BRAIN)
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    radius = round(CLOSE_MM)
    padded = np.pad(mask, radius + 1)
    closed = ndi.binary_closing(padded, structure=_ball(radius))[
        radius + 1 : -radius - 1, radius + 1 : -radius - 1, radius + 1 : -radius - 1
    ]
    mask = np.asarray(ndi.binary_fill_holes(closed | mask))
    logger.info("intracranial mask: %.0f mL", mask.sum() / 1000.0)

    tissue = np.clip(gm + wm, 0.0, 1.0)
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    hu = HU_CSF * (1.0 - tissue) + HU_GM * gm * scale + HU_WM * wm * scale
    weight = mask.astype(np.float32)
    num = ndi.gaussian_filter(np.where(mask, hu, 0.0).astype(np.float32), SMOOTH_MM)
    den = ndi.gaussian_filter(weight, SMOOTH_MM)
    smooth = np.where(den > 1e-3, num / np.maximum(den, 1e-3), HU_CSF)

    # The 1.5 mm grid: a voxel centre at the MNI origin, covering the mask plus a margin.
    idx = np.argwhere(mask)
    lo_mm = affine_xyz[:3, 3] + idx.min(axis=0) - MARGIN_MM
    hi_mm = affine_xyz[:3, 3] + idx.max(axis=0) + MARGIN_MM
    lo_n = np.floor(lo_mm / SPACING_MM).astype(int)
    hi_n = np.ceil(hi_mm / SPACING_MM).astype(int)
    shape_xyz = hi_n - lo_n + 1
    out_affine = np.eye(4)
    out_affine[:3, :3] *= SPACING_MM
    out_affine[:3, 3] = lo_n * SPACING_MM
    grid = np.stack(
        np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape_xyz), indexing="ij"), axis=0
    )
    mm = np.tensordot(out_affine[:3, :3], grid, axes=1) + out_affine[:3, 3, None, None, None]
    src = mm - affine_xyz[:3, 3, None, None, None]  # 1 mm unrotated source grid
    hu_out = ndi.map_coordinates(smooth.astype(np.float32), src, order=1, mode="nearest")
    mask_out = ndi.map_coordinates(weight, src, order=1, cval=0.0) >= 0.5
    hu_out = np.where(mask_out, hu_out, HU_BACKGROUND)

    # The 1 mm mask on the template's own grid, cropped to the mask plus the margin.
    m = round(MARGIN_MM)
    lo = np.maximum(idx.min(axis=0) - m, 0)
    hi = np.minimum(idx.max(axis=0) + m + 1, mask.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    affine_1mm = affine_xyz.copy()
    affine_1mm[:3, 3] += lo

    provenance = {
        "source": "nilearn-0.14.1-py3-none-any.whl",
        "sha256": hashes,
        "hu": {"csf": HU_CSF, "gm": HU_GM, "wm": HU_WM, "background": HU_BACKGROUND},
        "smooth_sigma_mm": SMOOTH_MM,
        "close_mm": CLOSE_MM,
        "spacing_mm": SPACING_MM,
        "layout": "arrays [k, j, i]; affine maps (i, j, k, 1) to MNI RAS mm",
    }
    return {
        "hu": np.rint(np.transpose(hu_out, (2, 1, 0))).astype(np.int16),
        "brain_mask": np.transpose(mask_out, (2, 1, 0)).astype(np.uint8),
        "affine": out_affine,
        "brain_mask_1mm": np.transpose(mask[crop], (2, 1, 0)).astype(np.uint8),
        "affine_1mm": affine_1mm,
        "provenance": np.array(json.dumps(provenance, sort_keys=True)),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: build and write the template file."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help="nilearn-0.14.1 wheel")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = build(args.wheel)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **data)  # type: ignore[arg-type]
    logger.info(
        "wrote %s: grid %s, %d bytes; sha256 %s",
        args.output,
        data["hu"].shape,
        args.output.stat().st_size,
        _sha256(args.output.read_bytes()),
    )


if __name__ == "__main__":
    main()
