"""PNG plots of a run (matplotlib, Agg backend): loss/Dice curves and LoMix weights over time."""
from __future__ import annotations

import os
from typing import Dict, List


def plot_history(history: List[Dict], run_dir: str) -> List[str]:
    """Writes ``curves.png`` (train loss, validation Dice per class and mean vs epoch) and, when the
    history has ``w_*`` columns, ``lomix_weights.png``. Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    paths = []
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(ep, [h["train_loss"] for h in history], marker=".")
    a1.set(xlabel="epoch", ylabel="train loss", title="loss")
    a1.grid(alpha=0.3)
    keys = list(dict.fromkeys(k for h in history for k in h))
    plotted = False
    for key in [k for k in keys if k.startswith("val_dice_")]:
        pts = [(h["epoch"], h[key]) for h in history if h.get(key, "") != ""]
        if pts:
            a2.plot(*zip(*pts), marker=".", lw=2.5 if key == "val_dice_mean" else 1,
                    label=key[len("val_dice_"):])
            plotted = True
    a2.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    a2.grid(alpha=0.3)
    if plotted:
        a2.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(run_dir, "curves.png"))
    _save(fig, paths[-1])
    wkeys = [k for k in keys if k.startswith("w_")]
    if wkeys:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in wkeys:
            ax.plot(ep, [h.get(k, float("nan")) for h in history], label=k[2:])
        ax.set(xlabel="epoch", ylabel="weight", title="LoMix learned weights")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        paths.append(os.path.join(run_dir, "lomix_weights.png"))
        _save(fig, paths[-1])
    plt.close("all")
    return paths


def _save(fig, path):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
