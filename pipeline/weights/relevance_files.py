"""The relevance files' formats, read and checked without running anything they hold: StyleCLIP's ``fs3.npy``
(or the ``fs3`` of our ``.npz``) and the per-channel style statistics (StyleCLIP's ``S_mean_std`` pickle or our
``style_stats.npz``). The downloader checks a fetched file with them; ``pipeline.edit.relevance`` builds the
``Relevance`` the edit uses from them."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.weights.style_stats import FILE as STYLE_STATS_FILE


def load_relevance_matrix(path: str | Path) -> np.ndarray:
    """Only ``fs3`` of a relevance file (StyleCLIP's ``.npy`` or our ``.npz``), checked: a finite 2-D matrix."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                loaded = loaded["fs3"]
        fs3 = np.asarray(loaded)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise PipelineError(MODEL_INVALID, f"{path} is not a relevance matrix: {exc}") from exc
    if fs3.ndim != 2 or fs3.dtype.kind != "f" or not np.all(np.isfinite(fs3)):
        raise PipelineError(MODEL_INVALID, f"{path}: fs3 must be a finite [channels, D] float matrix, "
                                           f"got {fs3.dtype} {list(fs3.shape)}")
    return fs3


def load_style_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel style (mean, std), flat over all layers: StyleCLIP's ``S_mean_std`` (a pickle of
    ``[mean], [std]`` per style layer, toRGB included; the torch port prepends a third item; only numpy arrays,
    lists and tuples are unpickled, so the file cannot run code) or our ``style_stats.npz``."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as f:
                mean, std = f["style_mean"], f["style_std"]
        else:
            with open(path, "rb") as f:
                loaded = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            mean, std = (np.concatenate([np.asarray(a).reshape(-1) for a in part]) for part in loaded[-2:])
    except (OSError, ValueError, TypeError, IndexError, KeyError, pickle.UnpicklingError, EOFError,
            zipfile.BadZipFile) as exc:
        raise PipelineError(MODEL_INVALID, f"{path}: not style statistics (StyleCLIP S_mean_std or "
                                           f"{STYLE_STATS_FILE}): {exc}") from exc
    mean, std = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
    if mean.shape != std.shape or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
        raise PipelineError(MODEL_INVALID, f"{path}: style mean/std must be finite and of one length")
    return mean, std


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}  # protocol-2 pickles spell array bytes as _codecs.encode(str, "latin1")

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
