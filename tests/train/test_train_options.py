"""``segfuse train``'s options are generated from ``TrainConfig``: every field is an option whose default
``--help`` shows, parsing nothing gives ``TrainConfig()``, and tuples, booleans and choices parse as typed."""
import argparse
import dataclasses
import re

import pytest

from segfuse.cli import main as cli
from segfuse.train_cli import add_arguments, cli_fields, config_from_args, default_text, option_name
from segfuse.training import TrainConfig


def _parser():
    p = argparse.ArgumentParser(prog="segfuse train")
    add_arguments(p)
    return p


@pytest.fixture(scope="module")
def help_text():
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli(["train", "--help"])
    return " ".join(out.getvalue().split())       # argparse wraps lines: compare on single spaces


def test_every_field_has_an_option_with_its_default_in_help(help_text):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - {f.name for f in cli_fields()} == {"model_kwargs"}   # filled by --model-arg
    assert "--model-arg KEY=VALUE" in help_text
    for f in cli_fields():
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"
        name = option_name(f.name)
        assert re.search(re.escape(name) + r"[ ,]", help_text), f"{name} missing from segfuse train --help"
        assert f"(default: {default_text(f)})" in help_text, f"{name}: default {default_text(f)!r} not shown"


def test_no_options_give_the_dataclass_defaults():
    assert config_from_args(_parser().parse_args([])) == TrainConfig()


def test_existing_option_names_and_values_parse_as_typed():
    args = _parser().parse_args(["--model", "lgmsnet", "--dims", "3", "--patch-size", "64", "64", "32",
                                 "--spacing", "2", "2", "2.5", "--ct-window", "-100", "200", "--no-progress",
                                 "--resume", "--iters-per-epoch", "7", "--lr", "0.01", "--max-minutes", "1.5",
                                 "--model-arg", "channels=(8,16)", "--model-arg", "pad_mode=replicate",
                                 "--threads", "1"])
    cfg = config_from_args(args)
    assert cfg == dataclasses.replace(
        TrainConfig(), model="lgmsnet", dims=3, patch_size=(64, 64, 32), spacing=(2.0, 2.0, 2.5),
        ct_window=(-100.0, 200.0), progress=False, resume=True, iters_per_epoch=7, lr=0.01, max_minutes=1.5,
        model_kwargs={"channels": (8, 16), "pad_mode": "replicate"})
    assert args.threads == 1


@pytest.mark.parametrize("argv", [["--dims", "4"], ["--supervision", "triple"], ["--patch-size"],
                                  ["--ct-window", "1"], ["--epochs", "many"]])
def test_bad_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_the_dataclass_checks_its_choices():
    with pytest.raises(ValueError, match=r"dims \(--dims\) must be one of 2, 3, got 4"):
        TrainConfig(dims=4)
    with pytest.raises(ValueError, match="supervision"):
        dataclasses.replace(TrainConfig(), supervision="triple")
