import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.stacked import StackedRewardModel


class Fixed:
    """A reward-model stand-in: (B, H) outputs from a function of the input ids."""

    def __init__(self, heads, semantics="bradley_terry", offset=0.0):
        self.num_heads, self.semantics, self.offset = heads, semantics, offset

    def score_policy_ids(self, input_ids, attention_mask, policy_tokenizer, prompt_lengths=None):
        base = input_ids.float().sum(1, keepdim=True) + self.offset
        return base + torch.arange(self.num_heads).float()


def test_stack_concatenates_members_in_order_and_splits_back():
    stack = StackedRewardModel([Fixed(1, offset=100.0), Fixed(2)])
    ids = torch.tensor([[1, 2], [3, 4]])
    out = stack.score_policy_ids(ids, torch.ones_like(ids), None)
    assert stack.num_heads == 3 and stack.head_splits == [1, 2]
    assert out.tolist() == [[103.0, 3.0, 4.0], [107.0, 7.0, 8.0]]
    a, b = stack.split(out)
    assert a.tolist() == [[103.0], [107.0]] and b.tolist() == [[3.0, 4.0], [7.0, 8.0]]
    with pytest.raises(RewardlabError, match="expected 3 stacked heads"):
        stack.split(out[:, :2])


def test_stack_semantics_common_or_none():
    assert StackedRewardModel([Fixed(1), Fixed(1)]).semantics == "bradley_terry"
    mixed = StackedRewardModel([Fixed(1), Fixed(2, semantics="classifier")])
    assert mixed.semantics is None and mixed.member_semantics == ["bradley_terry", "classifier"]
    with pytest.raises(RewardlabError, match="at least one"):
        StackedRewardModel([])
