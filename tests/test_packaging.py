"""The distribution installs everything under the single ``segfuse`` namespace."""
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_maps_top_level_folders_into_segfuse(tmp_path):
    if not (ROOT / "setup.py").exists():
        pytest.skip("not running from a source checkout")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("segfuse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top <= {"segfuse", *[n.split("/")[0] for n in names if ".dist-info" in n]}, top
    for must in ("segfuse/kernels/dwconv/triton.py", "segfuse/kernels/dispatch.py", "segfuse/bench/traffic.py",
                 "segfuse/models/__init__.py", "segfuse/losses/__init__.py", "segfuse/cli.py"):
        assert must in names, f"{must} missing from the wheel"
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and b"segfuse = segfuse.cli:main" in zipfile.ZipFile(wheel).read(entry[0])

    # a normal (non-editable) install of that wheel imports from its own folder, not from the checkout
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    code = ("import segfuse.kernels, segfuse.bench.traffic, segfuse.models, segfuse.losses, pathlib; "
            "print(pathlib.Path(segfuse.kernels.__file__).resolve())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout
    assert pathlib.Path(out.strip()).is_relative_to(target.resolve()), out


def test_import_resolves_to_the_mapped_folders():
    import segfuse.bench
    import segfuse.kernels

    assert pathlib.Path(segfuse.kernels.__file__).parent.name == "kernels"
    assert pathlib.Path(segfuse.bench.__file__).parent.name == "bench"
