"""Numerical parity with the reference implementations, on deterministic random weights.

A fixture directory (format: ``../shared/golden/README.md``) holds inputs and reference outputs made with the
reference code; ``verify_golden(dir)`` rebuilds the weights with the fill rule from that directory's
``meta.json`` and ``layouts.json``, runs *our* code, and compares. Nothing here assumes a seed, size, batch size,
text, beta or alpha: all of it comes from the fixture.

Each model family contributes a module in this package with ``checks(fixture) -> Iterator[Check]`` and, where
a fixture directory may lack its files (``shared/golden`` has no SFE arrays, ``shared/golden-sfe`` nothing
else), ``applies(fixture) -> bool``: a family that does not apply is skipped and said so.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

# Order matters only for the report; each module is independent.
CHECK_MODULES = ("stylegan2", "e4e", "clip", "boundary", "align", "sfe")


@dataclass(frozen=True)
class Check:
    """One comparison: ``err`` against ``tol`` (``exact`` checks pass only at err == 0)."""

    name: str
    err: float
    tol: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.err)) and self.err <= self.tol

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        extra = f"  ({self.detail})" if self.detail else ""
        return f"{mark} {self.name:<48} err={self.err:.3e}  tol={self.tol:.1e}{extra}"


def rel_err(ours, ref) -> float:
    """max|ours - ref| / max|ref|, the README's comparison, in float64."""
    a = _np64(ours)
    b = _np64(ref)
    if a.shape != b.shape:
        return math.inf
    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a - b).max()) / scale


def compare(name: str, ours, ref, tol: float) -> Check:
    a, b = _np64(ours), _np64(ref)
    if a.shape != b.shape:
        return Check(name, math.inf, tol, f"shape {a.shape} != {b.shape}")
    return Check(name, rel_err(a, b), tol)


def exact(name: str, ours, ref) -> Check:
    a, b = np.asarray(ours), np.asarray(ref)
    if a.shape != b.shape:
        return Check(name, math.inf, 0.0, f"shape {a.shape} != {b.shape}")
    return Check(name, float(np.count_nonzero(a != b)), 0.0, "count of differing entries")


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# --- the fill rule -----------------------------------------------------------------------------------------

def fill_value(key: str, shape: list[int], base_seed: int, constructed: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic weight for one checkpoint key (README "Rebuilding the weights")."""
    shape = list(shape)
    if constructed is not None and not constructed.is_floating_point():
        return torch.zeros(shape, dtype=constructed.dtype)
    if key.endswith(".kernel"):
        if constructed is None:
            raise KeyError(f"{key}: a FIR kernel must come from the constructed model")
        return constructed.detach().clone().float()
    x = seeded_randn(key, shape, base_seed)
    if key.endswith("running_var"):
        return 1 + 0.1 * x.abs()
    if key.endswith("running_mean"):
        return 0.1 * x
    if key == "latent_avg":  # the fixtures were made with rule 6 for this 1-D key (README order says rule 4)
        return x
    if len(shape) <= 1:
        return 0.1 * x if key.endswith("bias") else 1 + 0.1 * x
    if key.startswith("style."):
        return 100 * x
    if len(shape) == 5 or any(s in key for s in ("noise", "modulation.weight", "linear.weight", "input.input", "latent_avg")):
        return x
    return x / math.sqrt(math.prod(shape[1:]))


def seeded_randn(key: str, shape: list[int], base_seed: int) -> torch.Tensor:
    """The fill rule's raw draw for ``key``: float32 normal, seeded with ``base_seed + crc32(key)``."""
    seed = base_seed + zlib.crc32(key.encode())
    return torch.randn(list(shape), generator=torch.Generator().manual_seed(seed))


def fill_state_dict(layout: dict[str, list[int]], base_seed: int,
                    constructed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights for every key of a ``layouts.json`` entry. ``constructed`` (a fresh model's state dict, same key
    names) supplies dtypes of integer buffers and the values of FIR kernels."""
    constructed = constructed or {}
    return {k: fill_value(k, s, base_seed, constructed.get(k)) for k, s in layout.items()}


# --- fixture access ----------------------------------------------------------------------------------------

@dataclass
class Fixture:
    """A golden directory: its meta, layouts and arrays, plus the device to run on."""

    dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    @cached_property
    def layouts(self) -> dict[str, dict[str, list[int]]]:
        return json.loads((self.dir / "layouts.json").read_text())

    @property
    def base_seed(self) -> int:
        return int(self.meta["base_seed"])

    def npz(self, name: str) -> dict[str, np.ndarray]:
        """``name`` without extension; cached, loaded eagerly (fixtures are small)."""
        cache = self.__dict__.setdefault("_npz", {})
        if name not in cache:
            with np.load(self.dir / f"{name}.npz") as f:
                cache[name] = {k: f[k] for k in f.files}
        return cache[name]

    def weights(self, layout_name: str, constructed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return fill_state_dict(self.layouts[layout_name], self.base_seed, constructed)


# --- runner ------------------------------------------------------------------------------------------------

def run_checks(fixture_dir: str | Path, device: str = "cpu", only: tuple[str, ...] = (),
               emit: Callable[[str], None] = print) -> list[Check]:
    """Run every check module against ``fixture_dir``; ``emit`` each result line as it comes."""
    fixture = Fixture(Path(fixture_dir), torch.device(device))
    results: list[Check] = []
    for mod_name in only or CHECK_MODULES:
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"{__name__}.{mod_name}")
            if not getattr(module, "applies", lambda _: True)(fixture):
                emit(f"     {mod_name}: no fixture files here, skipped")
                continue
            for check in _iter(module.checks(fixture)):
                results.append(check)
                emit(check.line())
        except Exception as exc:  # a crash in one family is a failed check, not a lost report
            check = Check(f"{mod_name}: crashed", math.inf, 0.0, f"{type(exc).__name__}: {exc}")
            results.append(check)
            emit(check.line())
            emit(traceback.format_exc(limit=3))
        emit(f"     {mod_name}: {time.perf_counter() - start:.1f}s")
    passed = sum(c.ok for c in results)
    emit(f"golden: {passed}/{len(results)} checks within tolerance")
    return results


def _iter(it: Iterator[Check]) -> Iterator[Check]:
    with torch.inference_mode():
        yield from it
