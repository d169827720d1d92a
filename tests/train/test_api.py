"""The Python API from a notebook's point of view: ``segfuse.train`` -> ``segfuse.runs.Run`` ->
``segfuse.predict`` -> ``segfuse.evaluate`` on a tiny synthetic run (eager path)."""
import os

import nibabel as nib
import numpy as np
from matplotlib.image import imread
import pytest
import torch

import segfuse
from segfuse.kernels import force_backend
from segfuse.runs import Run


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A 2-iteration 2D U-Net run on the tiny phantoms, trained through ``segfuse.train``."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    with force_backend("reference"):
        result = segfuse.train(model="unet", data=tiny_data, run_dir=str(run_dir), dims=2, iterations=2,
                               iters_per_epoch=1, batch_size=2, patch_size=(32, 32), progress=False, seed=3,
                               augment="none", model_kwargs={"channels": (8, 16, 32)})
    return result


def test_train_returns_the_run_folder_and_final_metrics(trained):
    assert os.path.isabs(trained.run_dir) and trained.run_dir.endswith("run")
    assert trained.metrics["iteration"] == 2 and 0.0 <= trained.metrics["val_dice_mean"] <= 1.0


def test_train_rejects_an_unknown_option_before_training(tmp_path):
    with pytest.raises(TypeError, match="iteration"):
        segfuse.train({"model": "unet", "run_dir": str(tmp_path / "r")}, iteration=3)
    assert not (tmp_path / "r").exists()


def test_run_folder_api(trained):
    run = Run(trained.run_dir)
    assert run.dims == 2 and run.num_classes == 6 and run.class_names[1] == "liver" and run.patch_size == [32, 32]
    assert run.config["size_multiple"] == 4 and run.config["model_kwargs"] == {"channels": [8, 16, 32]}
    assert set(run.checkpoints()) == {"last", "best"}
    model = run.load_model("best")
    assert not model.training and model.size_multiple == 4
    state = run.load_checkpoint("best")
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    pre = run.preprocess()
    assert pre.channel_names == run.config["channel_names"] and pre.spacing is None
    val = run.validation_volumes()            # 5 training cases, every 5th held out
    assert len(val) == 1 and val[0].label is not None


def test_predict_then_evaluate_from_python(trained, tiny_data, tmp_path):
    with force_backend("reference"):
        result = segfuse.predict(trained.run_dir, os.path.join(tiny_data, "imagesTs"), tmp_path / "pred",
                                 checkpoint="best", device="cpu")
    assert not result.failed and list(result.written) == ["phantom_005"]
    out = nib.load(result.written["phantom_005"])
    ref = nib.load(os.path.join(tiny_data, "imagesTs", "phantom_005_0000.nii.gz"))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)

    ev = segfuse.evaluate(pred=tmp_path / "pred", labels=os.path.join(tiny_data, "labelsTs"), hd95=False)
    assert [s["name"] for s in ev.summary][:2] == ["liver", "spleen"] and 0.0 <= ev.mean_dice <= 1.0
    assert ev.predictions is None and os.path.isfile(os.path.join(ev.out_dir, "summary.csv"))
    png = os.path.join(ev.out_dir, "overlays", "phantom_005.png")  # contours only: --pred/--labels have no image
    assert imread(png).shape[0] > 100
    ev = segfuse.evaluate(pred=tmp_path / "pred", labels=os.path.join(tiny_data, "labelsTs"), hd95=False,
                          out=tmp_path / "no_overlays", overlays=False)
    assert not os.path.exists(os.path.join(ev.out_dir, "overlays"))


def test_evaluate_a_run_on_its_validation_split(trained):
    with force_backend("reference"):
        ev = segfuse.evaluate(Run(trained.run_dir), split="val", hd95=False, device="cpu")
    assert ev.predictions == os.path.join(trained.run_dir, "eval_val") == ev.out_dir
    assert {r["case"] for r in ev.rows} == {"phantom_002"} and 0.0 <= ev.mean_dice <= 1.0
    img = imread(os.path.join(ev.out_dir, "overlays", "phantom_002.png"))  # the image under the contours
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="not both"):
        segfuse.evaluate(trained.run_dir, pred="x", labels="y")
