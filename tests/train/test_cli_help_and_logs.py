"""Every sub-command's ``--help`` lists its options; a run whose stderr is not a terminal (a log file, a
cluster job) writes one line per epoch and no progress-bar redraws."""
import pytest

from segfuse.cli import COMMANDS, main as cli

from .conftest import run_cli

# an option each command's help must list (beyond -h)
EXPECTED = {"bench": "--cases", "train": "--model", "predict": "--run", "evaluate": "--run", "check-gpu": "--out",
            "study": "--seeds"}


def test_every_command_is_covered():
    assert set(EXPECTED) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_the_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: segfuse {command}" in out
    assert EXPECTED[command] in out, out
    options = [line for line in out.splitlines() if line.strip().startswith("--")]
    assert len(options) >= 2, f"segfuse {command} --help lists no options:\n{out}"


def test_log_without_a_terminal_has_one_line_per_epoch(tiny_data, tmp_path):
    epochs = 3
    p = run_cli("train", "--model", "unet", "--data", tiny_data, "--run-dir", tmp_path / "run", "--dims", "2",
                "--batch-size", "2", "--patch-size", "32", "32", "--iters-per-epoch", "4",
                "--iterations", 4 * epochs, "--val-every", "1000", "--threads", "1")
    log = p.stdout + p.stderr  # both pipes: no terminal, as in a log file
    assert "\r" not in log, "progress-bar redraws in a log file"
    epoch_lines = [line for line in log.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == epochs, log
    assert len(log.encode()) < 2000 + 200 * epochs, f"{len(log)} bytes of log for {epochs} epochs"
