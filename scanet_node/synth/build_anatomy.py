"""Build the shipped head anatomy file from the MNI ICBM152 2009a templates (offline tool).

Run once by a developer, never imported by the package::

    python -m scanet_node.synth.build_anatomy --wheel nilearn-0.14.1-py3-none-any.whl

The nilearn wheel (``pip download --no-deps nilearn==0.14.1``) carries the symmetric MNI ICBM152
2009a grey matter, white matter and T1 templates (1 mm, 197x233x189, brain-extracted). This tool
keeps the grey and white matter probability maps and derives a tissue label map for a pseudo-CT:
intracranial cavity (brain plus subarachnoid CSF), a three-layer skull around it, scalp with a
subcutaneous fat layer, and below the cranial cavity a soft-tissue face/neck block with a cervical
canal and a bony ring around it, on a grid extended 28 mm below the template so that a CT field of
view reaching the skull base stays plausible. The result is written with ``np.savez_compressed``
to ``scanet_node/synth/data/mni152_2009a_head.npz``. nibabel is needed here only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
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
OUTPUT = Path(__file__).resolve().parent / "data" / "mni152_2009a_head.npz"

# Label values stored in the file; anatomy.py maps them to Hounsfield units.
AIR, SOFT, FAT, SKIN, CORTICAL, DIPLOE, CAVITY = 0, 1, 2, 3, 4, 5, 6

EXTRA_SLICES_BELOW = 28  # mm of neck added under the template's lowest slice (z = -72)
CLOSE_MM = 4.0  # closing radius that bridges sulci and fissures before hole filling
SMOOTH_MM = 3.0  # Gaussian smoothing of the closed brain outline
SMOOTH_LEVEL = 0.35  # threshold of the smoothed outline; below 0.5 it grows over the sulci
CSF_MM = 2.5  # subarachnoid CSF rim around the closed brain
SKULL_MM = 6.5  # calvarium thickness
TABLE_MM = 1.8  # thickness of each cortical table
SCALP_MM = 5.5  # scalp thickness over the calvarium
SKIN_MM = 1.5
FAT_MM = 2.0  # subcutaneous fat under the skin
FACE_REF_Z_MM = -25.0  # axial level whose head outline is extruded down for the face and neck
NECK_FROM_Z_MM = -60.0  # below this level the extruded outline narrows into the neck ...
NECK_NARROWING = 0.25  # ... by this fraction over NECK_OVER_MM
NECK_OVER_MM = 40.0


def _load_templates(
    wheel: Path,
) -> tuple[dict[str, npt.NDArray[np.uint8]], npt.NDArray[np.float64]]:
    """Read the three templates straight out of the wheel; returns arrays and the shared affine."""
    import nibabel as nib

    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    affine: npt.NDArray[np.float64] | None = None
    with zipfile.ZipFile(wheel) as zf:
        for key, member in TEMPLATE_MEMBERS.items():
            raw = zf.read(member)
            logger.info("%s: %s (%d bytes, sha256 %s)", key, member, len(raw), _sha256(raw))
            image = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
            arrays[key] = np.asarray(image.dataobj, dtype=np.uint8)
            if affine is None:
                affine = np.asarray(image.affine, dtype=np.float64)
            elif not np.allclose(affine, image.affine):
                raise ValueError(f"{member}: affine differs from the other templates")
    assert affine is not None
    return arrays, affine


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ball_dilate(mask: npt.NDArray[np.bool_], radius: float) -> npt.NDArray[np.bool_]:
    return np.asarray(ndi.distance_transform_edt(~mask) <= radius)


def _ball_erode(mask: npt.NDArray[np.bool_], radius: float) -> npt.NDArray[np.bool_]:
    return np.asarray(ndi.distance_transform_edt(mask) > radius)


def _fill_holes_2d(mask: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    """Fill holes slice by slice along ``axis`` (cisterns open in 3-D but enclosed in-plane)."""
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndi.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, axis)


def _convex_hull_2d(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Filled convex hull of a 2-D mask (half-plane test against the hull edges)."""
    from scipy.spatial import ConvexHull  # type: ignore[import-untyped,unused-ignore]

    pts = np.argwhere(mask)
    if len(pts) < 3:
        return mask.copy()

    hull = ConvexHull(pts)
    ii, jj = np.indices(mask.shape)
    grid = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)
    inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5, axis=1)
    return np.asarray(inside.reshape(mask.shape), dtype=bool)


def build(wheel: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Derive the anatomy arrays (see the module docstring) from the nilearn wheel."""
    arrays, affine = _load_templates(wheel)
    gm, wm, t1 = arrays["gm"], arrays["wm"], arrays["t1"]

    # Extend the grid downward; the lowest template slice (the medulla) continues as the cord.
    pad = EXTRA_SLICES_BELOW
    gm = np.concatenate([np.repeat(gm[:, :, :1], pad, axis=2), gm], axis=2)
    wm = np.concatenate([np.repeat(wm[:, :, :1], pad, axis=2), wm], axis=2)
    t1 = np.concatenate([np.repeat(t1[:, :, :1], pad, axis=2), t1], axis=2)
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, 2] * pad
    z_mm = affine[2, 3] + affine[2, 2] * np.arange(gm.shape[2])

    prob = (gm.astype(np.float32) + wm.astype(np.float32)) / 255.0
    brain = (prob > 0.2) | (t1 > 0)
    labels_cc, n = ndi.label(brain)
    if n > 1:
        sizes = ndi.sum(brain, labels_cc, index=np.arange(1, n + 1))
        brain = labels_cc == (1 + int(np.argmax(sizes)))
    logger.info("brain: %d voxels", int(brain.sum()))

    closed = _ball_erode(_ball_dilate(brain, CLOSE_MM), CLOSE_MM) | brain
    closed = ndi.binary_fill_holes(closed)
    for axis in range(3):
        closed = _fill_holes_2d(closed, axis)
    # The inner table does not follow the gyri: smooth the outline before adding the CSF rim.
    smooth = ndi.gaussian_filter(closed.astype(np.float32), SMOOTH_MM) > SMOOTH_LEVEL
    cavity = _ball_dilate(closed | smooth, CSF_MM)
    logger.info("cavity: %d voxels", int(cavity.sum()))

    outside = np.asarray(ndi.distance_transform_edt(~cavity), dtype=np.float32)
    calvarium_head = outside <= SKULL_MM + SCALP_MM

    # Face and neck: below FACE_REF_Z_MM every axial head outline is at least the convex hull
    # of the outline at that level, narrowing gently towards the bottom of the grid.
    head = calvarium_head.copy()
    k_ref = int(np.argmin(np.abs(z_mm - FACE_REF_Z_MM)))
    ref = _convex_hull_2d(calvarium_head[:, :, k_ref])
    centre = np.argwhere(ref).mean(axis=0)
    for k in range(k_ref):
        z = z_mm[k]
        below = max(0.0, NECK_FROM_Z_MM - z)
        scale = 1.0 - NECK_NARROWING * min(1.0, below / NECK_OVER_MM)
        outline = _scaled_mask(ref, centre, scale, posterior_anchor=True)
        head[:, :, k] |= _convex_hull_2d(outline | calvarium_head[:, :, k])
    head = ndi.binary_fill_holes(head)

    labels = np.full(gm.shape, AIR, dtype=np.uint8)
    depth = np.asarray(ndi.distance_transform_edt(head), dtype=np.float32)  # from the head surface
    labels[head] = SOFT
    labels[head & (depth <= SKIN_MM + FAT_MM)] = FAT
    labels[head & (depth <= SKIN_MM)] = SKIN
    skull = head & (outside > 0) & (outside <= SKULL_MM) & (depth > SKIN_MM + 1.0)
    labels[skull] = DIPLOE
    tables = skull & ((outside <= TABLE_MM) | (outside > SKULL_MM - TABLE_MM))
    labels[tables] = CORTICAL
    labels[cavity] = CAVITY

    # Probabilities outside the cavity are meaningless for the pseudo-CT; keep the file small.
    gm = np.where(cavity, gm, 0).astype(np.uint8)
    wm = np.where(cavity, wm, 0).astype(np.uint8)

    # Crop to the head with a 2-voxel air margin.
    idx = np.argwhere(labels != AIR)
    lo = np.maximum(idx.min(axis=0) - 2, 0)
    hi = np.minimum(idx.max(axis=0) + 3, labels.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    affine[:3, 3] += affine[:3, :3] @ lo
    return {
        "gm": gm[crop],
        "wm": wm[crop],
        "labels": labels[crop],
        "affine": affine,
    }


def _scaled_mask(
    mask: npt.NDArray[np.bool_],
    centre: npt.NDArray[np.float64],
    scale: float,
    *,
    posterior_anchor: bool,
) -> npt.NDArray[np.bool_]:
    """Shrink a 2-D (x, y) mask about its centre; with the anchor its posterior edge stays put."""
    if scale >= 1.0:
        return mask
    pts = np.argwhere(mask)
    c = centre.copy()
    if posterior_anchor:
        c[1] = pts[:, 1].min()
    ii, jj = np.indices(mask.shape)
    src_i = c[0] + (ii - c[0]) / scale
    src_j = c[1] + (jj - c[1]) / scale
    return np.asarray(
        ndi.map_coordinates(mask.astype(np.float32), [src_i, src_j], order=1, cval=0.0) > 0.5
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: build and write the anatomy file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help="nilearn-0.14.1 wheel")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = build(args.wheel)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **data)  # type: ignore[arg-type]
    logger.info(
        "wrote %s: grid %s, %d bytes", args.output, data["labels"].shape, args.output.stat().st_size
    )


if __name__ == "__main__":
    main()
