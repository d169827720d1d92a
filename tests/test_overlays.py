"""Per-case overlay PNGs (segfuse.overlays): slice choice, files written, colours, empty masks."""
import json

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.image import imread

from segfuse.overlays import (case_overlay_figure, choose_slices, class_color, read_dataset_classes,
                              write_case_overlays, write_evaluation_overlays)


def _volume(shape=(40, 36, 30), peak=13):
    """(image, label): class 1 a column whose area grows to a maximum at z=peak, class 2 a small box."""
    label = np.zeros(shape, np.uint8)
    for z in range(5, 25):
        r = 12 - abs(z - peak)
        label[20 - r:20 + r, 18 - r:18 + r, z] = 1
    label[2:6, 2:6, 12:15] = 2
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 10, shape) + 100 * (label > 0) - 500 * (np.arange(shape[0]) < 3)[:, None, None])
    return image.astype(np.float32), label


def _has_colour(png, colour, tol=0.06):
    rgb = np.asarray(mcolors.to_rgb(colour))
    return bool((np.abs(png[..., :3] - rgb).max(-1) < tol).any())


def _contours(ax):
    """(style, colour hex) of every contour drawn on a panel."""
    out = set()
    for c in ax.collections:
        dashed = any(ls[1] for ls in c.get_linestyle())
        for rgba in c.get_edgecolor():
            out.add(("dashed" if dashed else "solid", mcolors.to_hex(rgba)))
    return out


def test_choose_slices_includes_largest_and_spreads():
    _, label = _volume()
    area = (label > 0).sum((0, 1))
    assert int(np.argmax(area)) == 13
    picks = choose_slices(label, num_slices=3)
    assert len(picks) == 3 and picks == sorted(picks) and 13 in picks
    assert all(area[p] > 0 for p in picks)
    assert picks[0] < 13 < picks[-1]                 # spread over the object, not all beside the peak
    assert choose_slices(label, num_slices=1) == [13]
    assert choose_slices(label.transpose(2, 0, 1), num_slices=1, axis=0) == [13]


def test_choose_slices_keeps_the_largest_slice_off_the_median():
    label = np.zeros((30, 30, 30), np.uint8)
    label[:, :, 3] = 1                       # one large slice (900 voxels) at the bottom ...
    label[5:25, 5:25, 4:30] = 1              # ... under a long tail of 400-voxel slices
    picks = choose_slices(label, num_slices=3)
    assert 3 in picks and len(picks) == 3 and max(picks) > 15


def test_choose_slices_fallbacks():
    empty = np.zeros((8, 8, 11), np.uint8)
    pred = empty.copy()
    pred[1:3, 1:3, 4] = 2
    assert choose_slices(empty, pred, num_slices=3) == [4]      # only one foreground slice
    assert choose_slices(empty, empty, num_slices=3) == [5]     # middle slice
    assert choose_slices(empty, None) == [5]
    one = np.ones((8, 8, 1), np.uint8)
    assert choose_slices(one, one, num_slices=3) == [0]


def test_overlay_png_written_with_class_colours(tmp_path):
    image, label = _volume()
    pred = np.roll(label, 2, axis=0)
    out = tmp_path / "c1.png"
    assert write_case_overlays(image[None], label, pred, str(out), class_names=["bg", "liver", "gland"],
                               spacing=(1.0, 1.0, 2.5)) == [str(out)]
    png = imread(str(out))
    h, w = png.shape[:2]
    assert png.ndim == 3 and 200 < h < 1500 and w > 2 * h * 0.8       # a row of three panels
    assert _has_colour(png, class_color(1)) and _has_colour(png, class_color(2))
    assert not _has_colour(png, "#ff00ff")
    out2 = tmp_path / "c2.png"
    write_case_overlays(image, label, pred, str(out2), class_colors={1: "#ff00ff"})
    png2 = imread(str(out2))
    assert _has_colour(png2, "#ff00ff") and not _has_colour(png2, class_color(1))


def test_titles_carry_slice_and_per_class_dice():
    image, label = _volume()
    fig = case_overlay_figure(image, label, label, class_names={1: "liver", 2: "gland"}, num_slices=3, case_id="c")
    titles = [a.get_title() for a in fig.axes]
    assert len(titles) == 3 and any(t.startswith("z = 13") for t in titles)
    assert all("liver\u00a01.00" in t for t in titles)
    pred = label.copy()
    pred[label == 1] = 0
    titles = [a.get_title() for a in case_overlay_figure(image, label, pred, class_names=["bg", "liver"]).axes]
    assert any("liver\u00a00.00" in t for t in titles)
    assert fig._suptitle.get_text() == "c"
    dhw = case_overlay_figure(*(a.transpose(2, 0, 1) for a in (image, label, label)), layout="dhw",
                              spacing=(2.5, 1.0, 1.0), num_slices=1)     # row-major (D, H, W): slices along D
    assert dhw.axes[0].get_title().startswith("d = 13") and dhw.axes[0].get_aspect() == pytest.approx(1.0)


def test_ground_truth_solid_prediction_dashed_per_class_colour():
    image, label = _volume()
    c1, c2 = mcolors.to_hex(class_color(1)), mcolors.to_hex(class_color(2))
    fig = case_overlay_figure(image, label, np.roll(label, 1, axis=0), num_slices=3)
    drawn = [_contours(ax) for ax in fig.axes]
    assert all({("solid", c1), ("dashed", c1)} <= d for d in drawn)
    assert any({("solid", c2), ("dashed", c2)} <= d for d in drawn)       # the small box, on its slices
    zero = np.zeros_like(label)
    assert all(_contours(ax) <= {("solid", c1), ("solid", c2)} and _contours(ax)
               for ax in case_overlay_figure(image, label, zero).axes)
    assert all(_contours(ax) <= {("dashed", c1), ("dashed", c2)} and _contours(ax)
               for ax in case_overlay_figure(None, zero, label).axes)


@pytest.mark.parametrize("which", ["empty_gt", "empty_pred", "both_empty", "no_image", "2d", "one_slice"])
def test_degenerate_cases_still_write_a_picture(tmp_path, which):
    image, label = _volume()
    zero = np.zeros_like(label)
    args = {"empty_gt": (image, zero, label), "empty_pred": (image, label, zero), "both_empty": (image, zero, zero),
            "no_image": (None, label, label), "2d": (image[..., 13], label[..., 13], label[..., 13]),
            "one_slice": (image[..., 13:14], label[..., 13:14], zero[..., 13:14])}[which]
    out = tmp_path / f"{which}.png"
    write_case_overlays(*args, str(out))
    png = imread(str(out))
    assert png.shape[0] > 150 and png.shape[1] > 150
    if which == "both_empty":
        fig = case_overlay_figure(*args)
        assert len(fig.axes) == 1 and "no foreground" in fig.axes[0].get_title()
    if which in ("empty_pred", "empty_gt"):     # the non-empty side is still drawn
        assert _has_colour(png, class_color(1))


def test_anisotropic_spacing_sets_the_aspect():
    image, label = _volume()
    flat = case_overlay_figure(image, label, label, axis=1, num_slices=1, spacing=(1.0, 1.0, 1.0))
    tall = case_overlay_figure(image, label, label, axis=1, num_slices=1, spacing=(1.0, 1.0, 2.5))
    # coronal slice (X, Z): one row is one z step, so the row height / column width is sz / sx
    assert flat.axes[0].get_aspect() == pytest.approx(1.0)
    assert tall.axes[0].get_aspect() == pytest.approx(2.5)
    assert tall.get_figheight() > flat.get_figheight()


def test_evaluation_helper_and_dataset_json(tmp_path):
    image, label = _volume()
    meta = {"labels": {"background": 0, "liver": 1, "gland": 2}, "colors": {"liver": [255, 0, 255], "2": "#00ffff"}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    names, colours = read_dataset_classes(str(tmp_path / "dataset.json"))
    assert names == {0: "background", 1: "liver", 2: "gland"}
    assert colours == {1: (1.0, 0.0, 1.0), 2: "#00ffff"}
    cases = [("a", label, label, (1.0, 1.0, 2.0)), ("b", np.roll(label, 1, 0), label, (1.0, 1.0, 2.0)),
             ("c", label, label, (1.0, 1.0, 2.0))]
    paths = write_evaluation_overlays(cases, str(tmp_path / "eval"), images={"a": image}, class_names=names,
                                      class_colors=colours, max_cases=2)
    assert paths == [str(tmp_path / "eval" / "overlays" / f"{c}.png") for c in ("a", "b")]
    png = imread(paths[0])
    assert _has_colour(png, "#ff00ff") and _has_colour(png, "#00ffff")
    assert not list((tmp_path / "eval" / "overlays").glob(".*"))          # no temporary files left
