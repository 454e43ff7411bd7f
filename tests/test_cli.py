"""The command-line dispatcher."""

import subprocess
import sys

from rewardlab import cli


def test_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "rewardlab.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("rewardlab ")


def test_public_api_resolves():
    import rewardlab

    for name in rewardlab.__all__:
        assert getattr(rewardlab, name) is not None, name
