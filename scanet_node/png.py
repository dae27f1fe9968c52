"""PNG files of 8-bit images: the package's one PNG writer (Pillow).

Used by the serving path (the model input's montage, the result images) and by the synthetic
data's renderings alike, so it lives outside both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


def save_png(pixels: npt.NDArray[np.uint8], path: Path) -> Path:
    """Save a greyscale ``(H, W)`` or RGB ``(H, W, 3)`` uint8 image as a PNG; return ``path``.

    The parent folder is made when missing.

    Raises
    ------
    ValueError
        When ``pixels`` is not such an image.
    """
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError("save_png needs a uint8 (H, W) or (H, W, 3) array")
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError(f"an RGB image has 3 channels, not {pixels.shape[2]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path
