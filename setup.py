"""segfuse: one distribution whose top-level folders are mapped into the ``segfuse`` namespace.

The repository root keeps ``kernels/``, ``models/``, ``losses/`` and ``bench/`` beside ``segfuse/``;
they install as ``segfuse.kernels``, ``segfuse.models``, ``segfuse.losses`` and ``segfuse.bench``,
so nothing generic (``kernels``, ``models``) lands at the top of site-packages.
"""
import os

from setuptools import setup

MAPPED = {"segfuse.kernels": "kernels", "segfuse.models": "models",
          "segfuse.losses": "losses", "segfuse.bench": "bench"}


def _subpackages(pkg: str, folder: str):
    """Yield (package, folder) for ``folder`` and every sub-folder holding an __init__.py."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        if "__init__.py" in files:
            rel = os.path.relpath(root, folder)
            yield (pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")), root


package_dir = {}
for pkg, folder in [("segfuse", "segfuse"), *MAPPED.items()]:
    package_dir.update(dict(_subpackages(pkg, folder)))

setup(
    name="segfuse",
    version="0.1.0",
    description="Triton kernels for medical image segmentation: multi-kernel depthwise conv, "
                "3D deformable attention, Monte Carlo attention, fused multi-logit Dice/CE",
    python_requires=">=3.10",
    packages=sorted(package_dir),
    package_dir=package_dir,
    install_requires=["torch>=2.4", "triton>=3.0", "timm>=1.0", "numpy", "nibabel", "scipy",
                      "tqdm", "matplotlib"],
    extras_require={"dev": ["pytest", "pytest-benchmark", "monai"], "mni152": ["nilearn"]},
    entry_points={"console_scripts": ["segfuse=segfuse.cli:main"]},
)
