"""Named strategies are valid pipeline specs."""

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.strategies import STRATEGIES, strategy_spec


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("heads, h", [("", 1), ("mean", 2)])
def test_every_strategy_is_a_runnable_pipeline(name, heads, h):
    spec = strategy_spec(name, heads)
    pipe = RewardPipeline.from_spec(spec, semantics="bradley_terry")
    assert pipe.spec == spec
    out = pipe(torch.randn(6, h), ref=torch.randn(6, 3, h))
    assert out.scores.shape == (6,) and torch.isfinite(out.scores).all()


def test_unknown_strategy():
    with pytest.raises(RewardlabError, match="valid: raw, whiten"):
        strategy_spec("nope")
