"""rewardlab's error types: every message names the problem, the value, and the fix.

The CLI boundary (``rewardlab.cli``) maps them to exit codes:

- :class:`RewardlabError` — bad input or configuration (exit 2);
- :class:`RunFailure` — the input was fine but the run could not go on (disk full, a corrupt
  checkpoint found mid-run; exit 1);
- :class:`RunInterrupted` — Ctrl-C or a fatal signal; its message says where to resume (exit 130).
"""


class RewardlabError(ValueError):
    """Bad input or configuration. Subclasses ValueError so callers may catch either."""


class RunFailure(RuntimeError):
    """A run that could not continue for a reason outside its input (disk, corrupt state)."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM; the message names the last checkpoint and ``--resume``."""

    exit_code = 130
