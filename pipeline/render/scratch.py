"""Activation buffers reused from one render to the next, by role.

A fresh 128 MB tensor costs tens of milliseconds in page faults on first touch; a 1024² synthesis makes a dozen
of them. ``pipeline.render.cpu.CpuRenderer`` instead writes its large intermediates into a few buffers it owns
("the upsampling phases", "the interleaved phases", "the convolution output"), each grown to the largest size
asked for. The buffers never leave the renderer (it returns new tensors), and it renders one image at a time
under its own lock: two renders must not share them.
"""

from __future__ import annotations

import math

import torch


class Scratch:
    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A ``shape`` view of the ``role`` buffer (uninitialized), on ``like``'s device and dtype; it shares
        memory with every earlier view of that role, so the owner reads a view only before taking the role
        again."""
        numel = math.prod(shape)
        buf = self._buffers.get(role)
        if buf is None or buf.numel() < numel or buf.device != like.device or buf.dtype != like.dtype:
            self._buffers.pop(role, None)  # free the old one before allocating its successor
            with torch.inference_mode(False):  # a normal tensor: later renders may run outside inference mode
                buf = self._buffers[role] = torch.empty(numel, device=like.device, dtype=like.dtype)
        return buf[:numel].view(shape)

    def clear(self) -> None:
        """Give the memory back (the next render allocates again)."""
        self._buffers.clear()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    # a copied or pickled owner starts with empty buffers
    def __deepcopy__(self, memo) -> Scratch:
        return Scratch()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
