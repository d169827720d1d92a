"""Prediction: 2D slice-wise or 3D sliding-window inference with Gaussian weighting and overlap,
optional test-time flips.

``predict_volume(model, image [C, X, Y, Z], dims, patch_size) -> probabilities [K, X, Y, Z]``.
2D models see slices along the last axis (``[B, C, X, Y]``), 3D models ``[1, C, X, Y, Z]``; in both
cases windows of ``patch_size`` are tiled with ``overlap`` and blended with a Gaussian importance map
(sigma = patch / 8, as nnU-Net), so every window size the model sees equals the training patch.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Callable, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segfuse.kernels.utils import upsample_to


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """``[*patch]`` float32 weights, max 1, floor 1e-3 (so borders still count where nothing overlaps)."""
    axes = []
    for p in patch:
        x = torch.arange(p, dtype=torch.float32) - (p - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / max(p * sigma_scale, 1e-6)) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    return (w / w.max()).clamp_min(1e-3)


def window_starts(size: int, patch: int, overlap: float) -> List[int]:
    """Start indices of windows of ``patch`` covering ``size >= patch`` with at least ``overlap``."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Final-resolution logits of ``model(x)``: the last (finest) map if it returns a list."""
    out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if tuple(out.shape[2:]) != tuple(x.shape[2:]):
        out = upsample_to(out.float(), x.shape[2:])
    return out


def softmax_fn(model, tta: bool = False, amp_dtype=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(x [N, C, *P]) -> softmax probabilities [N, K, *P]``; with ``tta`` averaged over all
    2^d combinations of flips of the spatial axes."""
    nd = None

    def fn(x):
        nonlocal nd
        nd = x.ndim - 2
        flips = [()] + ([c for r in range(1, nd + 1) for c in itertools.combinations(range(2, 2 + nd), r)]
                        if tta else [])
        acc = None
        ctx = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        for f in flips:
            xi = x.flip(f) if f else x
            with ctx:
                p = logits_of(model, xi).float().softmax(1)
            p = p.flip(f) if f else p
            acc = p if acc is None else acc + p
        return acc / len(flips)
    return fn


@torch.no_grad()
def sliding_window(fn, x: torch.Tensor, patch: Sequence[int], num_classes: int, overlap: float = 0.5,
                   gaussian: bool = True) -> torch.Tensor:
    """``x [B, C, *S]`` -> blended probabilities ``[B, K, *S]`` of ``fn`` over windows of ``patch``.

    Images smaller than the patch are padded with their minimum and cropped back.
    """
    nd = x.ndim - 2
    patch = tuple(int(p) for p in patch)
    if len(patch) != nd:
        raise ValueError(f"patch_size {patch} does not match input with {nd} spatial dims")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    size = x.shape[2:]
    pad = []
    for s, p in zip(reversed(size), reversed(patch)):
        extra = max(0, p - s)
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        x = F.pad(x, pad, value=float(x.min()))
    padded = x.shape[2:]
    w = gaussian_importance(patch).to(x.device) if gaussian else torch.ones(patch, device=x.device)
    out = torch.zeros((x.shape[0], num_classes) + tuple(padded), device=x.device)
    norm = torch.zeros(tuple(padded), device=x.device)
    for starts in itertools.product(*[window_starts(s, p, overlap) for s, p in zip(padded, patch)]):
        sl = tuple(slice(a, a + p) for a, p in zip(starts, patch))
        out[(slice(None), slice(None)) + sl] += fn(x[(slice(None), slice(None)) + sl]) * w
        norm[sl] += w
    out = out / norm
    if any(pad):
        crop = tuple(slice(pad[2 * (nd - 1 - d)], pad[2 * (nd - 1 - d)] + size[d]) for d in range(nd))
        out = out[(slice(None), slice(None)) + crop]
    return out


@torch.no_grad()
def predict_volume(model: torch.nn.Module, image: np.ndarray, dims: int, patch_size: Sequence[int],
                   num_classes: int, overlap: float = 0.5, tta: bool = False, batch_size: int = 8,
                   device="cpu", amp_dtype=None) -> np.ndarray:
    """Softmax probabilities ``[K, X, Y, Z]`` float32 for a normalised ``image [C, X, Y, Z]``."""
    model.eval()
    fn = softmax_fn(model, tta, amp_dtype)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if dims == 3:
        probs = sliding_window(fn, x[None].to(device), patch_size, num_classes, overlap)[0]
        return probs.cpu().numpy()
    if dims != 2:
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    out = np.empty((num_classes,) + image.shape[1:], np.float32)
    for z0 in range(0, image.shape[-1], batch_size):
        xb = x[..., z0:z0 + batch_size].permute(3, 0, 1, 2).to(device)        # [B, C, X, Y]
        pb = sliding_window(fn, xb, patch_size, num_classes, overlap)         # [B, K, X, Y]
        out[..., z0:z0 + batch_size] = pb.permute(1, 2, 3, 0).cpu().numpy()
    return out
