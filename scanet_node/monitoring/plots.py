"""The ROC and reliability plots of the local performance, as PNG bytes for the admin page."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Pixel size of each plot (at 100 dpi).
WIDTH_PX, HEIGHT_PX = 420, 380
_EMPTY = "no outcomes with both classes yet"


def _figure() -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure  # no pyplot: no global state in the server's threads

    fig = Figure(figsize=(WIDTH_PX / 100, HEIGHT_PX / 100), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return fig, ax


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def roc_png(roc: Mapping[str, list[float]], *, auc: float | None, n: int) -> bytes:
    """The local ROC curve, or an empty frame that says there is none yet."""
    fig, ax = _figure()
    if roc.get("fpr"):
        label = f"here: ROC-AUC {auc:.2f} (n = {n})" if auc is not None else f"here (n = {n})"
        ax.plot(roc["fpr"], roc["tpr"], color="C0", label=label)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, _EMPTY, ha="center")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, mTICI >= 2c")
    return _png(fig)


def reliability_png(curve: Mapping[str, list[float]]) -> bytes:
    """Observed frequency against mean predicted probability per tenth, dots sized by count."""
    fig, ax = _figure()
    if curve.get("predicted"):
        sizes = [12 + 4 * c for c in curve.get("count", [])]
        ax.plot(curve["predicted"], curve["observed"], color="C0", linewidth=1)
        ax.scatter(curve["predicted"], curve["observed"], s=sizes, color="C0")
    else:
        ax.text(0.5, 0.5, _EMPTY, ha="center")
    ax.set_xlabel("predicted P(mTICI >= 2c)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability")
    return _png(fig)
