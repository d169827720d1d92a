"""Structure rules, read from the source with ``ast``: only the training package itself, the train command
and the lazy ``segfuse.train`` import from ``segfuse.training`` (predict, evaluate and the run API do not);
every network lives in ``models/``."""
import ast
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the folders that install as the segfuse namespace (setup.py), but for bench/ (experiments may train)
PACKAGES = {"segfuse": "segfuse", "models": "segfuse.models", "losses": "segfuse.losses", "kernels": "segfuse.kernels"}
MAY_IMPORT_TRAINING = {"segfuse/__init__.py", "segfuse/train_cli.py"}   # + segfuse/training/ itself
# nn.Module subclasses outside models/ that are not networks, with what they are
NOT_NETWORKS = {("segfuse/training/trainer.py", "_Joint"): "model + loss in one module for DDP"}


def _modules():
    """(relative path, dotted module name, syntax tree) of every Python file of the packages."""
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            parts = package.split(".") + list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield rel, ".".join(parts), ast.parse(path.read_text(), filename=rel)


def imported_modules(module: str, is_package: bool, tree: ast.AST):
    """Every module name an ``import`` in ``tree`` can load (relative imports resolved; ``from a import b``
    counts as ``a`` and ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _is_training(name: str) -> bool:
    return name == "segfuse.training" or name.startswith("segfuse.training.")


def test_the_scan_sees_relative_and_absolute_imports():
    tree = ast.parse("from .training.api import train\nfrom segfuse import training\nimport segfuse.training.config")
    found = set(imported_modules("segfuse", True, tree))
    assert {"segfuse.training.api", "segfuse.training", "segfuse.training.config"} <= found
    found = set(imported_modules("segfuse.runs.folder", False, ast.parse("from ..training import x")))
    assert "segfuse.training" in found


def test_only_training_the_train_command_and_the_lazy_train_import_segfuse_training():
    offenders = []
    for rel, module, tree in _modules():
        if rel.startswith("segfuse/training/") or rel in MAY_IMPORT_TRAINING:
            continue
        names = [n for n in imported_modules(module, rel.endswith("__init__.py"), tree) if _is_training(n)]
        if names:
            offenders.append(f"{rel} imports {sorted(set(names))}")
    assert not offenders, "\n".join(offenders)


def test_the_train_command_is_train_cli_beside_predict_and_evaluate():
    from segfuse.cli import COMMANDS
    assert COMMANDS["train"][0] == "segfuse.train_cli"
    assert COMMANDS["predict"][0] == "segfuse.predict_cli" and COMMANDS["evaluate"][0] == "segfuse.evaluate_cli"
    assert not (ROOT / "segfuse" / "train").exists(), "segfuse/train/ is now segfuse/training/"


def _is_module_base(base: ast.expr) -> bool:
    """``nn.X`` / ``torch.nn.X`` / ``X`` where ``torch.nn.X`` is an nn.Module class (Module, Sequential, ...)."""
    name = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else None
    cls = getattr(torch.nn, name, None) if name else None
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def test_every_network_lives_in_models():
    found = []
    for rel, _, tree in _modules():
        if not rel.startswith("segfuse/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_is_module_base(b) for b in node.bases):
                if (rel, node.name) not in NOT_NETWORKS:
                    found.append(f"{rel}: class {node.name}")
    assert not found, "nn.Module subclasses outside models/ (move the network to models/ and register it):\n" \
        + "\n".join(found)


def test_import_segfuse_stays_light_and_exports_the_api():
    import subprocess
    import sys
    code = ("import sys, segfuse\n"
            "heavy = [m for m in ('torch', 'numpy', 'segfuse.training') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "for name in ('train', 'predict', 'evaluate'):\n"
            "    f = getattr(segfuse, name)\n"
            "    assert callable(f) and f.__name__ == name and f.__doc__, name\n"
            "from segfuse import train, predict, evaluate\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
