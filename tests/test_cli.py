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


def test_a_command_imports_only_its_own_package():
    """Finding which commands exist must not import their packages (rewardlab.reward_model pulls in torch)."""
    code = ("import sys, contextlib, io\nfrom rewardlab.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['migrate-trl-ppo', '--help'])\n"
            "print(sorted(m for m in sys.modules if m in ('rewardlab.reward_model', 'rewardlab.study', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
