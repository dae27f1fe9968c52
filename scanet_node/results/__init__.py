"""The result objects: a TID 1500 SR and Secondary Capture images, built from plain data.

Importing this package is cheap: highdicom and matplotlib are imported when something is
built, so ``scanet-node --help`` stays fast.
"""

from __future__ import annotations

# Imported (not wrapped) so that the name ``build`` is the function: importing the submodule
# binds it on the package first, and this import then rebinds it.
from scanet_node.results.build import ResultObjects, build
from scanet_node.results.files import result_files, write_results
from scanet_node.results.sc import write_png
from scanet_node.results.types import (
    AlgorithmInfo,
    AnalysisResult,
    OverlaySlice,
    ResultsError,
    StudyRefs,
)

__all__ = [
    "AlgorithmInfo",
    "AnalysisResult",
    "OverlaySlice",
    "ResultObjects",
    "ResultsError",
    "StudyRefs",
    "build",
    "result_files",
    "write_png",
    "write_results",
]
