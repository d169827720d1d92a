"""Issue 15: faults a user can cause in runs, checkpoints and prediction batches are named and contained."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from segfuse.cli import main as cli
from segfuse.data import UserError
from segfuse.kernels import force_backend
from segfuse.runs.checkpoint import load_checkpoint, save_checkpoint, write_json
from segfuse.training.runlock import RunFolderBusy, acquire_run_lock
from segfuse.training import TrainConfig, Trainer

from .conftest import run_cli


def _cfg(data, run_dir, **kw):
    base = dict(model="unet", data=data, run_dir=str(run_dir), dims=2, iterations=2, iters_per_epoch=1,
                batch_size=2, patch_size=(32, 32), progress=False, seed=7, augment="none")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """A finished 2-iteration run (last.pt, best.pt, config.json)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    with force_backend("reference"):
        Trainer(_cfg(tiny_data, run)).fit()
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _train_args(data, run, *extra):
    return ["train", "--model", "unet", "--data", data, "--run-dir", run, "--dims", "2", "--batch-size", "2",
            "--patch-size", "32", "32", "--iters-per-epoch", "1", "--iterations", "1", "--no-progress",
            "--threads", "1", "--augment", "none", *extra]


# ---------------------------------------------------------------- item 1: run-folder lock
def test_second_run_on_a_locked_folder_is_refused_naming_the_pid(tiny_data, tmp_path):
    run = tmp_path / "run"
    lock = acquire_run_lock(str(run))
    try:
        p = run_cli(*_train_args(tiny_data, run), check=False)
    finally:
        lock.release()
    assert p.returncode != 0
    assert f"PID {os.getpid()}" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (run / "config.json").exists() and not (run / "last.pt").exists()


def test_lock_is_released_when_the_holder_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from segfuse.training.runlock import acquire_run_lock; "
                               f"acquire_run_lock({str(run)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"PID {holder.pid}") as e:
            acquire_run_lock(str(run))
        assert isinstance(e.value, UserError)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire_run_lock(str(run)).release()       # the OS dropped the dead process's lock


def test_two_concurrent_real_runs_second_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = _train_args(tiny_data, run)
    args[args.index("--iterations") + 1] = "100000"
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "segfuse", *map(str, args)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.json").is_file():       # config.json is written under the lock
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "first run did not start within 120 s"
            time.sleep(0.1)
        second = run_cli(*_train_args(tiny_data, run), check=False)
        assert second.returncode != 0 and f"PID {first.pid}" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ---------------------------------------------------------------- item 3: damaged checkpoints, stale temp files
def test_truncated_checkpoint_is_named(run_copy):
    last = run_copy / "last.pt"
    raw = last.read_bytes()
    last.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"last\.pt.*damaged") as e:
        load_checkpoint(str(last))
    assert isinstance(e.value, UserError)
    (run_copy / "random.pt").write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match=r"random\.pt.*damaged"):
        load_checkpoint(str(run_copy / "random.pt"))


def test_resume_with_damaged_last_falls_back_to_best(tiny_data, run_copy, capsys):
    best = load_checkpoint(str(run_copy / "best.pt"))
    last = run_copy / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with force_backend("reference"):
        with pytest.warns(UserWarning, match=r"last\.pt.*damaged.*best\.pt"):
            tr = Trainer(_cfg(tiny_data, run_copy, iterations=3, resume=True))
            tr.fit()
    assert tr.iteration == 3
    assert load_checkpoint(str(last))["iteration"] == 3          # a good last.pt again
    assert (run_copy / "last.pt.damaged").is_file()              # the damaged file is kept for inspection
    assert best["iteration"] <= 2


def test_resume_with_damaged_last_and_no_best_refuses(tiny_data, run_copy):
    (run_copy / "best.pt").unlink()
    (run_copy / "last.pt").write_bytes(b"garbage")
    with force_backend("reference"):
        with pytest.raises(ValueError, match=r"last\.pt.*damaged") as e:
            Trainer(_cfg(tiny_data, run_copy, iterations=3, resume=True)).fit()
    assert isinstance(e.value, UserError)


def test_stale_temp_files_are_removed_on_start(tiny_data, run_copy):
    stale = [run_copy / ".last.pt.abc123.tmp", run_copy / ".best.pt.x_y.tmp", run_copy / ".metrics.csv.q.tmp"]
    for s in stale:
        s.write_bytes(b"half a checkpoint")
    keep = run_copy / "notes.tmp"
    keep.write_text("mine")
    with force_backend("reference"):
        Trainer(_cfg(tiny_data, run_copy, iterations=3, resume=True)).fit()
    assert not any(s.exists() for s in stale) and keep.exists()


# ---------------------------------------------------------------- item 6: umask, one-line user errors
def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, str(tmp_path / "config.json"))
        save_checkpoint({"x": 1}, str(tmp_path / "last.pt"))
    finally:
        os.umask(old)
    for f in ("config.json", "last.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o644, f


def test_expected_user_errors_are_one_line_without_traceback(tiny_data, trained_run, tmp_path):
    p = run_cli("train", "--data", tmp_path / "missing", "--run-dir", tmp_path / "r", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "missing" in p.stderr, p.stderr
    p = run_cli(*_train_args(tiny_data, trained_run), check=False)      # folder holds a run, no --resume
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "--resume" in p.stderr, p.stderr


# ---------------------------------------------------------------- item 4: prediction batches
def test_predict_batch_continues_past_bad_cases(tiny_data, trained_run, tmp_path, capsys):
    src = os.path.join(tiny_data, "imagesTs", "phantom_005_0000.nii.gz")
    inp = tmp_path / "in"
    inp.mkdir()
    for cid in ("a_good", "b_corrupt", "c_good", "d_nan"):
        shutil.copy(src, inp / f"{cid}_0000.nii.gz")
    raw = (inp / "b_corrupt_0000.nii.gz").read_bytes()
    (inp / "b_corrupt_0000.nii.gz").write_bytes(raw[: len(raw) // 2])
    img = nib.load(src)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), inp / "d_nan_0000.nii.gz")
    shutil.copy(src, inp / "c_good_0001.nii.gz")              # extra channel for a 1-channel run
    out = tmp_path / "out"
    with force_backend("reference"):
        rc = cli(["predict", "--run", str(trained_run), "--input", str(inp), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert sorted(os.listdir(out)) == ["a_good.nii.gz", "c_good.nii.gz"]
    assert "b_corrupt_0000.nii.gz" in err and "d_nan_0000.nii.gz" in err and "NaN" in err, err
    assert "c_good_0001.nii.gz" in err and "1 channel" in err, err


def test_evaluate_names_a_truncated_prediction(tiny_data, tmp_path):
    labels = os.path.join(tiny_data, "labelsTs")
    pred = tmp_path / "pred"
    shutil.copytree(labels, pred)
    f = pred / "phantom_005.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"pred/phantom_005\.nii\.gz.*damaged") as e:
        cli(["evaluate", "--pred", str(pred), "--labels", labels])
    assert isinstance(e.value, UserError)
