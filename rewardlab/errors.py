"""rewardlab's error type: every message names the problem, the value, and the fix."""


class RewardlabError(ValueError):
    """Bad input or configuration. Subclasses ValueError so callers may catch either."""
