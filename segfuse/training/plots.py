"""PNG plots of a run from its history (the rows of ``metrics.csv``); matplotlib Figures, no pyplot.

``curves.png``: train loss, validation Dice (per class and mean) and the learning-rate schedule vs
epoch. ``lomix_weights.png`` (LoMix runs, rows with ``w_<map name>`` columns): the final weight of
every supervised map as horizontal bars, grouped and coloured by operator (base maps, add, mul,
concat, attention, ...) and ranked within each group, beside a maps x logged-epochs heatmap of the
weights with the rows in the same order.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

# operator of a map name ("p0" -> base maps, "mul(p0,p2)" -> mul): order and colour
_OP_COLORS = {"base maps": "#4d4d4d", "add": "#1f77b4", "mean": "#9467bd", "mul": "#ff7f0e",
              "concat": "#2ca02c", "attention": "#d62728"}
_EXTRA_COLORS = ["#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f"]


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _figure(**kw):
    from matplotlib.figure import Figure   # Agg canvas on save; no pyplot, no global figure state
    return Figure(**kw)


def curves_figure(history: List[Dict]):
    """Figure with the panels "loss", "validation Dice" and "learning rate" (None if no history)."""
    if not history:
        return None
    ep = [_num(h.get("epoch")) for h in history]
    fig = _figure(figsize=(15, 4))
    a1, a2, a3 = fig.subplots(1, 3)
    a1.plot(ep, [_num(h.get("train_loss")) for h in history], marker=".")
    a1.set(xlabel="epoch", ylabel="train loss", title="loss")
    keys = list(dict.fromkeys(k for h in history for k in h))
    plotted = False
    for key in [k for k in keys if k.startswith("val_dice_")]:
        pts = [(e, _num(h[key])) for e, h in zip(ep, history) if not math.isnan(_num(h.get(key)))]
        if pts:
            a2.plot(*zip(*pts), marker=".", lw=2.5 if key == "val_dice_mean" else 1,
                    label=key[len("val_dice_"):])
            plotted = True
    a2.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    if plotted:
        a2.legend(fontsize=7)
    lr = [(e, _num(h.get("lr"))) for e, h in zip(ep, history)]
    lr = [p for p in lr if not math.isnan(p[1])]
    if lr:
        a3.plot(*zip(*lr), marker=".", color="#2ca02c")
        a3.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        a3.text(0.5, 0.5, "no lr logged", ha="center", va="center", transform=a3.transAxes)
    a3.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    a3.set_ylim(bottom=0)
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def operator_of(name: str) -> str:
    """``"p0"`` -> ``"base maps"``, ``"attention(p0,p1)"`` -> ``"attention"``."""
    return name.split("(", 1)[0] if "(" in name else "base maps"


def weights_figure(history: List[Dict]):
    """Figure of the LoMix weights (bars of the final weights + maps x time heatmap; axes titled
    "final weights" and "weights over training"), or None when no row has ``w_*`` columns."""
    rows = [h for h in history if any(k.startswith("w_") for k in h)]
    names = list(dict.fromkeys(k[2:] for h in rows for k in h if k.startswith("w_")))
    if not names:
        return None
    import numpy as np
    from matplotlib.patches import Patch

    ops = list(dict.fromkeys([o for o in _OP_COLORS if any(operator_of(n) == o for n in names)]
                             + [operator_of(n) for n in names]))
    extra = iter(_EXTRA_COLORS * (len(ops) // len(_EXTRA_COLORS) + 1))
    color = {o: _OP_COLORS.get(o) or next(extra) for o in ops}
    W = np.array([[_num(h.get("w_" + n)) for h in rows] for n in names])   # (maps, time)
    final = W[:, -1]
    rank = lambda i: -final[i] if not math.isnan(final[i]) else math.inf   # noqa: E731
    order = [i for o in ops for i in sorted((i for i, n in enumerate(names) if operator_of(n) == o), key=rank)]
    T = len(names)
    fig_h = 1.6 + 0.19 * T
    fig = _figure(figsize=(13, max(fig_h, 3.0)))
    ab, ah = fig.subplots(1, 2, sharey=True, gridspec_kw=dict(width_ratios=[1, 1.5], wspace=0.04))
    y = np.arange(T)
    bars = ab.barh(y, np.nan_to_num(final[order]), color=[color[operator_of(names[i])] for i in order], height=0.8)
    ab.bar_label(bars, labels=[f"{final[i]:.3g}" for i in order], fontsize=6 if T > 30 else 7, padding=2)
    ab.set_xlim(0, 1.18 * max(float(np.nanmax(final)) if np.isfinite(final).any() else 1.0, 1e-9))
    ab.axvline(float(np.nanmean(final)), color="k", ls=":", lw=1)
    ab.set_yticks(y)
    ab.set_yticklabels([names[i] for i in order], fontsize=7 if T > 30 else 8)
    for lab, i in zip(ab.get_yticklabels(), order):
        lab.set_color(color[operator_of(names[i])])
    ab.set_ylim(T - 0.5, -0.5)   # first group on top
    ab.set(xlabel="weight (dotted: mean)", title="final weights")
    ab.grid(axis="x", alpha=0.3)
    finite = W[np.isfinite(W)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-6 * max(1.0, abs(vmax)):   # constant weights (e.g. one epoch): a readable range
        vmin, vmax = vmin - 0.05 * abs(vmin) - 1e-3, vmax + 0.05 * abs(vmax) + 1e-3
    mesh = ah.pcolormesh(np.arange(W.shape[1] + 1) - 0.5, np.arange(T + 1) - 0.5, np.ma.masked_invalid(W[order]),
                         cmap="viridis", vmin=vmin, vmax=vmax, shading="flat")
    cols = np.arange(W.shape[1])
    ticks = cols[:: max(1, int(math.ceil(len(cols) / 10)))]
    ah.set_xticks(ticks)
    ah.set_xticklabels([f"{_num(rows[i].get('epoch')):g}" for i in ticks], fontsize=8)
    ah.set(xlabel="epoch", title="weights over training")
    ah.tick_params(axis="y", left=False)
    fig.colorbar(mesh, ax=ah, label="weight", fraction=0.04, pad=0.02)
    counts = [sum(operator_of(n) == o for n in names) for o in ops]
    bounds = np.cumsum(counts)[:-1] - 0.5
    for a in (ab, ah):
        for b in bounds:
            a.axhline(b, color="w" if a is ah else "0.6", lw=1.2)
    means = [float(np.nanmean([final[i] for i, n in enumerate(names) if operator_of(n) == o])) for o in ops]
    handles = [Patch(color=color[o], label=f"{o} ({c}, mean {m:.2f})") for o, c, m in zip(ops, counts, means)]
    top = 1.0 - 0.85 / max(fig_h, 3.0)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0 - 0.32 / max(fig_h, 3.0)))
    fig.suptitle(f"LoMix learned weights of {T} supervised map{'s' if T > 1 else ''} (by operator, ranked within each)",
                 fontsize=10, y=1.0 - 0.06 / max(fig_h, 3.0), va="top")
    fig.subplots_adjust(left=0.16, right=0.93, top=top, bottom=0.7 / max(fig_h, 3.0))
    return fig


def plot_history(history: List[Dict], run_dir: str) -> List[str]:
    """Writes ``curves.png`` and, when the history has ``w_*`` columns, ``lomix_weights.png`` into
    ``run_dir``. Returns the paths written."""
    paths = []
    for name, make in (("curves.png", curves_figure), ("lomix_weights.png", weights_figure)):
        fig = make(history)
        if fig is not None:
            paths.append(os.path.join(run_dir, name))
            _save(fig, paths[-1])
    return paths


def _save(fig, path: Optional[str]):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
