import pytest
import torch

from rewardlab.ops.penalties import overlong_penalty


def test_overlong_penalty_hand_values():
    # budget 16, soft zone of the last 4 tokens: 0 up to 12, linear to −factor at 16, −factor beyond
    lengths = torch.tensor([3, 12, 13, 15, 16, 20])
    out = overlong_penalty(lengths, max_length=16, buffer=4, factor=0.5)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.125, -0.375, -0.5, -0.5]))


def test_overlong_penalty_checks_its_buffer():
    with pytest.raises(ValueError, match="buffer=0"):
        overlong_penalty(torch.tensor([1]), max_length=8, buffer=0, factor=1.0)
    with pytest.raises(ValueError, match="buffer=9"):
        overlong_penalty(torch.tensor([1]), max_length=8, buffer=9, factor=1.0)


def test_sequence_penalties_hand_values():
    from rewardlab.ops.penalties import sequence_penalties

    scores = torch.tensor([1.0, 1.0, 1.0, 1.0])
    finished = torch.tensor([True, False, True, False])
    lengths = torch.tensor([2, 8, 7, 4])
    # EOS: −2 where unfinished; overlong over the last 2 of 8 tokens: 0, −1, −0.5, 0
    out = sequence_penalties(scores, finished, lengths, missing_eos_penalty=2.0, max_length=8, overlong_buffer_len=2,
                             overlong_penalty_factor=1.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0 - 2.0 - 1.0, 1.0 - 0.5, 1.0 - 2.0]))
    off = sequence_penalties(scores, None, None, missing_eos_penalty=None, max_length=None, overlong_buffer_len=None,
                             overlong_penalty_factor=1.0)
    assert off is scores
