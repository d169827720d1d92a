"""Run-folder plots: the learning-rate panel and the LoMix weights figure (bars by operator + heatmap)."""
import math

import numpy as np
from matplotlib.image import imread

from segfuse.kernels.multi_logit_loss import map_names
from segfuse.training.plots import curves_figure, operator_of, plot_history, weights_figure

OPS = ["add", "mul", "concat", "attention"]


def _history(names, epochs=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "iteration": 10 * e, "lr": 2e-3 * (1 - (e - 1) / epochs) ** 0.9,
               "train_loss": 1.0 / e, "samples_per_s": 5.0}
        if e % 2 == 0:
            row.update(val_dice_liver=0.5 + 0.05 * e, val_dice_mean=0.5 + 0.05 * e)
        row.update({f"w_{n}": float(rng.uniform(0.1, 2.0)) for n in names})
        rows.append(row)
    return rows


def test_curves_have_a_learning_rate_panel():
    hist = _history(["p0"])
    fig = curves_figure(hist)
    by_title = {a.get_title(): a for a in fig.axes}
    assert {"loss", "validation Dice", "learning rate"} <= set(by_title)
    x, y = by_title["learning rate"].lines[0].get_data()
    assert list(x) == [1, 2, 3, 4, 5]
    assert np.allclose(y, [h["lr"] for h in hist])
    assert curves_figure([]) is None


def test_weights_figure_48_maps_grouped_and_ranked(tmp_path):
    names = map_names(4, OPS)
    assert len(names) == 48
    hist = _history(names, epochs=5)
    fig = weights_figure(hist)
    by_title = {a.get_title(): a for a in fig.axes}
    bars, heat = by_title["final weights"], by_title["weights over training"]
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert sorted(labels) == sorted(names)
    groups = [operator_of(n) for n in labels]
    assert list(dict.fromkeys(groups)) == ["base maps", *OPS]           # grouped, base maps first
    assert groups == sorted(groups, key=["base maps", *OPS].index)      # each group contiguous
    final = {n: hist[-1][f"w_{n}"] for n in names}
    widths = [p.get_width() for p in bars.patches]
    assert np.allclose(widths, [final[n] for n in labels])
    for op in ["base maps", *OPS]:                                      # ranked within a group
        w = [final[n] for n in labels if operator_of(n) == op]
        assert w == sorted(w, reverse=True)
    grid = np.asarray(heat.collections[0].get_array()).reshape(48, 5)   # maps x time
    assert np.allclose(grid[:, -1], [final[n] for n in labels])         # heatmap rows in the bar order
    assert np.allclose(grid[:, 0], [hist[0][f"w_{n}"] for n in labels])
    small = weights_figure(_history(["p0", "p1", "add(p0,p1)", "mul(p0,p1)"]))
    assert fig.get_figheight() > 2 * small.get_figheight()            # height scales with the map count

    paths = plot_history(hist, str(tmp_path))
    assert paths == [str(tmp_path / "curves.png"), str(tmp_path / "lomix_weights.png")]
    png = imread(paths[1])
    assert png.shape[0] > 700 and png.shape[1] > 900


def test_any_number_of_maps_and_no_weights():
    for n in (1, 2, 100):
        fig = weights_figure(_history([f"p{i}" for i in range(n)], epochs=1))
        assert len({a.get_title() for a in fig.axes} & {"final weights", "weights over training"}) == 2
    assert weights_figure(_history([])) is None


def test_plot_history_without_lomix_writes_curves_only(tmp_path):
    hist = _history([])
    hist[0]["lr"] = ""            # a resumed run's CSV cell may be empty
    assert plot_history(hist, str(tmp_path)) == [str(tmp_path / "curves.png")]
    assert not (tmp_path / "lomix_weights.png").exists()
    assert plot_history([], str(tmp_path)) == []
    fig = curves_figure(hist)
    lr_axis = [a for a in fig.axes if a.get_title() == "learning rate"][0]
    assert not any(math.isnan(v) for v in lr_axis.lines[0].get_ydata())
