"""Per-case overlay PNGs: a few representative slices with ground-truth and prediction contours.

Arrays follow segfuse's (NIfTI) axis order: ``label`` and ``prediction`` are integer maps of shape
``(X, Y, Z)`` or ``(X, Y)``; ``image`` is ``(X, Y, Z)``, ``(C, X, Y, Z)`` (channel ``channel`` shown)
or the 2D analogues, or None (contours on a blank background, e.g. ``evaluate --pred/--labels``).
``spacing`` is the voxel size per array axis (mm). Slices are taken along ``axis`` (default: the
last, Z: axial); a slice's first remaining axis runs left to right, the second bottom to top, as in
NIfTI viewers. Row-major ``(D, H, W)`` / ``(H, W)`` arrays: pass ``layout="dhw"`` (default axis 0, H
drawn top to bottom). Each PNG holds one row of panels: the image (grey, 1st-99th percentile window)
with ground truth as solid and prediction as dashed contours, one colour per class (a fixed palette,
deterministic per label value, or ``class_colors``), the per-class Dice of that slice in the panel
title and a legend below the row. matplotlib (Agg canvas, no pyplot); numpy in, PNG out.
"""
from __future__ import annotations

import json
import os
import textwrap
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from segfuse.metrics import dice_score

# tab10 without its grey (invisible on a grey image), then tab20's lighter shades: label value v
# gets _PALETTE[(v - 1) % len(_PALETTE)], whatever other classes are present.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
            "#dbdb8d", "#9edae5"]

Names = Union[Sequence[str], Mapping[int, str], None]
IGNORE_COLOR = "#d0d0d0"   # the ignore label's region: light grey, dotted


def class_color(value: int, class_colors: Optional[Mapping] = None):
    """Colour of label ``value``: ``class_colors[value]`` if given, else the fixed palette."""
    if class_colors and value in class_colors:
        return class_colors[value]
    return _PALETTE[(int(value) - 1) % len(_PALETTE)]


def read_dataset_classes(dataset_json: str) -> Tuple[Dict[int, str], Dict[int, object]]:
    """``({value: name}, {value: colour})`` from an nnU-Net ``dataset.json``. ``labels`` is
    ``{name: int}``; colours come from an optional (non-standard) ``"colors"`` / ``"label_colors"``
    key mapping a name or value to ``"#rrggbb"`` or ``[r, g, b]`` (0-255 or 0-1); else ``{}``."""
    with open(dataset_json) as f:
        meta = json.load(f)
    names = {int(v): str(k) for k, v in meta.get("labels", {}).items() if isinstance(v, (int, float))}
    by_name = {n: v for v, n in names.items()}
    colors = {}
    for k, c in (meta.get("colors") or meta.get("label_colors") or {}).items():
        v = by_name.get(k, int(k) if str(k).lstrip("-").isdigit() else None)
        if v is not None:
            colors[v] = tuple(x / 255.0 for x in c) if isinstance(c, list) and max(c) > 1 else c
    return names, colors


def choose_slices(label: np.ndarray, prediction: Optional[np.ndarray] = None, num_slices: int = 3,
                  axis: int = -1) -> List[int]:
    """Up to ``num_slices`` slice indices along ``axis`` (sorted) from the foreground of ``label``
    (else of ``prediction``): the slice of largest foreground area, plus the slices at evenly spaced
    quantiles of the foreground volume (the one nearest the largest replaced by it), topped up with
    the next largest; both empty: the middle slice."""
    for vol in (label, prediction):
        if vol is None:
            continue
        area = np.moveaxis(np.asarray(vol) > 0, axis, 0).reshape(vol.shape[axis], -1).sum(1)
        if not area.any():
            continue
        top = int(np.argmax(area))
        cum = np.cumsum(area) / area.sum()
        picks = [int(np.searchsorted(cum, (i + 0.5) / num_slices)) for i in range(num_slices)]
        picks[int(np.argmin([abs(p - top) for p in picks]))] = top
        picks = list(dict.fromkeys(p for p in picks if area[p] > 0))
        for i in np.argsort(-area, kind="stable")[: num_slices + len(picks)]:
            if len(picks) < num_slices and area[i] > 0 and int(i) not in picks:
                picks.append(int(i))
        return sorted(picks)
    return [label.shape[axis] // 2]


def _window(image: np.ndarray) -> Tuple[float, float]:
    """Grey window: 1st-99th percentile of the voxels above an Otsu threshold (the body, not the air
    around it); the whole image's if that leaves under 1 % of it."""
    x = image.ravel()[:: max(1, image.size // 2_000_000)].astype(np.float64)
    hist, edges = np.histogram(x, 256)
    w0, centers = np.cumsum(hist), (edges[:-1] + edges[1:]) / 2
    m0 = np.cumsum(hist * centers)
    w1, m1 = w0[-1] - w0, m0[-1] - m0
    between = w0 * w1 * (m0 / np.maximum(w0, 1) - m1 / np.maximum(w1, 1)) ** 2
    inside = x[x > edges[int(np.argmax(between)) + 1]]
    lo, hi = np.percentile(inside if inside.size > 0.01 * x.size else x, (1, 99))
    return float(lo), float(max(hi, lo + 1e-6))


def write_case_overlays(image: Optional[np.ndarray], label: Optional[np.ndarray], prediction: Optional[np.ndarray],
                        out_path: str, *, dpi: int = 100, **kw) -> List[str]:
    """Write one PNG for one case (shapes: module docstring; keywords: :func:`case_overlay_figure`,
    ``case_id`` defaulting to the file name); returns ``[out_path]``."""
    kw.setdefault("case_id", os.path.splitext(os.path.basename(out_path))[0])
    fig = case_overlay_figure(image, label, prediction, **kw)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "." + os.path.basename(out_path) + ".tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    os.replace(tmp, out_path)
    return [out_path]


def case_overlay_figure(image: Optional[np.ndarray], label: Optional[np.ndarray], prediction: Optional[np.ndarray], *,
                        case_id: Optional[str] = None, class_names: Names = None,
                        class_colors: Optional[Mapping] = None, num_slices: int = 3, axis: Optional[int] = None,
                        spacing: Optional[Sequence[float]] = None, channel: int = 0, layout: str = "xyz",
                        mask: Optional[np.ndarray] = None, ignore_label: Optional[int] = None):
    """The overlay as a matplotlib Figure (one panel per chosen slice, each titled with its slice
    index and per-class Dice). ``label`` or ``prediction`` may be None (not drawn), not both.
    ``class_names``: list indexed by label value or ``{value: name}``; ``class_colors``:
    ``{value: colour}``; ``num_slices``/``axis``: see :func:`choose_slices`. ``mask``: the voxels that are
    scored (e.g. the held-out slices; slices are chosen and Dice computed there); ``ignore_label``: a label
    value that is not a class (drawn as a grey dotted contour, "ignore (not scored)", and not scored)."""
    from matplotlib.figure import Figure   # no pyplot: no global backend or figure state touched
    from matplotlib.lines import Line2D

    ref = label if label is not None else prediction
    if ref is None:
        raise ValueError("write_case_overlays needs a label or a prediction")
    ref = np.asarray(ref)
    if label is not None and prediction is not None and np.shape(label) != np.shape(prediction):
        raise ValueError(f"label shape {np.shape(label)} != prediction shape {np.shape(prediction)}")
    if layout not in ("xyz", "dhw"):
        raise ValueError(f"layout must be 'xyz' or 'dhw', got {layout!r}")
    if ref.ndim == 2:   # one slice: a trailing (xyz) or leading (dhw) axis of size 1
        expand = (lambda a: a[..., None]) if layout == "xyz" else (lambda a: a[None])
        label, prediction, mask = [None if a is None else expand(np.asarray(a)) for a in (label, prediction, mask)]
        if image is not None:
            image = np.asarray(image)
            image = image[channel] if image.ndim == 3 else image
            image = expand(image)
        spacing = None if spacing is None else ((*spacing[:2], 1.0) if layout == "xyz" else (1.0, *spacing[:2]))
        ref = expand(ref)
    if image is not None:
        image = np.asarray(image, np.float32)
        image = image[channel] if image.ndim == ref.ndim + 1 else image
        if image.shape != ref.shape:
            raise ValueError(f"image shape {image.shape} != label shape {ref.shape}")
    axis = (ref.ndim - 1 if layout == "xyz" else 0) if axis is None else axis % ref.ndim
    sp = (tuple(float(s) for s in spacing or ()) + (1.0,) * ref.ndim)[: ref.ndim]
    in_plane = [a for a in range(ref.ndim) if a != axis]
    # imshow aspect = height of one row / width of one column, in mm
    aspect = sp[in_plane[1]] / sp[in_plane[0]] if layout == "xyz" else sp[in_plane[0]] / sp[in_plane[1]]
    names = dict(enumerate(class_names)) if isinstance(class_names, (list, tuple)) else dict(class_names or {})
    scored = None if mask is None else np.asarray(mask, bool)
    if scored is not None and scored.shape != ref.shape:
        raise ValueError(f"mask shape {scored.shape} != label shape {ref.shape}")
    ignored = None
    if ignore_label is not None and label is not None:
        ignored = np.asarray(label) == ignore_label
        scored = ~ignored if scored is None else scored & ~ignored
    present = set()
    for a in (label, prediction):
        if a is not None:
            present |= {int(v) for v in np.unique(a) if v > 0 and v != ignore_label}
    classes = sorted(present)

    def in_scored(a):   # what slice choice looks at: the scored voxels only
        return a if a is None or scored is None else np.where(scored, a, 0)
    slices = choose_slices(in_scored(label) if label is not None else np.zeros(ref.shape, bool),
                           in_scored(prediction), num_slices, axis)
    lo, hi = _window(image) if image is not None else (0.0, 1.0)

    def cut(a, k):
        s = np.take(a, k, axis=axis)
        return s.T if layout == "xyz" else s    # rows = vertical axis

    def dice_line(k):   # per-class Dice on slice k, classes in ground truth or prediction there
        if label is None or prediction is None:
            return ""
        gt, pr = cut(label, k), cut(prediction, k)
        m = np.ones(gt.shape, bool) if scored is None else cut(scored, k)
        return ",  ".join(f"{names.get(c, c)} {dice_score(pr == c, gt == c, m):.2f}" for c in classes
                          if ((gt == c) & m).any() or ((pr == c) & m).any())

    rows, cols = cut(ref, 0).shape
    n, panel_w = len(slices), 3.6

    def title(k):
        head = [f"{('xyz' if layout == 'xyz' else 'dhw')[axis]} = {k}  ({k + 1}/{ref.shape[axis]})"] \
            if ref.shape[axis] > 1 else []
        dice = textwrap.wrap(dice_line(k).replace(" ", "\u00a0").replace(",\u00a0\u00a0", ",  "),
                             int(panel_w * 16), initial_indent="Dice ")
        return "\n".join(head + dice) if classes else "\n".join(head + ["no foreground"])

    titles = [title(k) for k in slices]
    handles = [Line2D([], [], color="k", lw=1.6, ls=ls, label=what)
               for a, ls, what in ((label, "solid", "ground truth"), (prediction, "dashed", "prediction"))
               if a is not None]
    handles += [Line2D([], [], color=class_color(c, class_colors), lw=3, label=str(names.get(c, c)))
                for c in classes]
    if ignored is not None and ignored.any():
        handles.append(Line2D([], [], color=IGNORE_COLOR, lw=1.4, ls="dotted", label="ignore (not scored)"))
    fig_w = panel_w * n + 0.4
    ncol = min(len(handles), max(2, int(fig_w * 0.75)))
    panel_h = float(np.clip(panel_w * rows * aspect / cols, 1.6, 6.0))
    top_h = 0.35 + 0.15 * max(t.count("\n") + 1 for t in titles)    # suptitle + panel titles
    bottom_h = 0.15 + 0.22 * int(np.ceil(len(handles) / ncol))        # legend
    fig_h = panel_h + top_h + bottom_h
    fig = Figure(figsize=(fig_w, fig_h))
    axes = fig.subplots(1, n, squeeze=False)
    fig.subplots_adjust(left=0.2 / fig_w, right=1 - 0.2 / fig_w, wspace=0.06, top=1 - top_h / fig_h,
                        bottom=bottom_h / fig_h)
    origin = "lower" if layout == "xyz" else "upper"
    for ax, k, title in zip(axes[0], slices, titles):
        bg = cut(image, k) if image is not None else np.full((rows, cols), 0.85, np.float32)  # light grey
        ax.imshow(bg, cmap="gray", vmin=lo, vmax=hi, origin=origin, aspect=aspect, interpolation="nearest")
        for c in classes:
            for a, style in ((label, "solid"), (prediction, "dashed")):
                m = None if a is None else cut(a, k) == c
                if m is not None and m.any():
                    ax.contour(m.astype(np.float32), levels=[0.5], colors=[class_color(c, class_colors)],
                               linewidths=1.6, linestyles=style)
        if ignored is not None and cut(ignored, k).any():
            ax.contour(cut(ignored, k).astype(np.float32), levels=[0.5], colors=[IGNORE_COLOR], linewidths=1.4,
                       linestyles="dotted")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    if case_id is not None:
        fig.suptitle(str(case_id), fontsize=10, y=1 - 0.08 / fig_h, va="top")
    return fig


def write_evaluation_overlays(cases: Sequence[tuple], out_dir: str, *, images: Optional[Mapping] = None,
                              class_names: Names = None, class_colors: Optional[Mapping] = None,
                              num_slices: int = 3, max_cases: Optional[int] = None,
                              ignore_label: Optional[int] = None) -> List[str]:
    """For ``segfuse evaluate``: ``cases`` as it builds them, ``(case_id, pred, label, spacing[, mask])``
    (arrays ``(X, Y[, Z])``; ``mask``: the scored voxels or None); ``images``: optional
    ``{case_id: image (X, Y[, Z]) or (C, X, Y[, Z])}``. Writes ``<out_dir>/overlays/<case_id>.png`` for the
    first ``max_cases`` cases (all if None); returns the paths."""
    paths = []
    for case in list(cases)[:max_cases]:
        cid, pred, lab, spacing = case[:4]
        paths += write_case_overlays((images or {}).get(cid), lab, pred,
                                     os.path.join(out_dir, "overlays", f"{cid}.png"), case_id=cid,
                                     class_names=class_names, class_colors=class_colors,
                                     num_slices=num_slices, spacing=spacing,
                                     mask=case[4] if len(case) > 4 else None, ignore_label=ignore_label)
    return paths
