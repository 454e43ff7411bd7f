"""Compare two policies on held-out prompts: ``rewardlab compare`` and `compare_policies`.

Final policy against the SFT policy, or one checkpoint against another: reward-score distributions,
the win rate of A over B with a 95 % interval, KL to the reference, response length and EOS rate,
gold when a gold function is given, and paired samples side by side — in results.json and a
self-contained report.html. See docs/compare.md.
"""

from rewardlab.compare.run import compare_policies

__all__ = ["compare_policies"]
