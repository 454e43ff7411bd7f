"""Reference-reward cache and group references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.baselines import ReferenceRewards, group_references, prompt_key, reference_baseline


def test_reference_baseline_mean_and_quantile_match_numpy():
    ref = torch.randn(4, 9, dtype=torch.float64)
    np.testing.assert_allclose(reference_baseline(ref).numpy(), ref.numpy().mean(1))
    for q in (0.0, 0.3, 0.85, 1.0):
        np.testing.assert_allclose(reference_baseline(ref, q).numpy(), np.quantile(ref.numpy(), q, axis=1))


def test_prompt_key_is_stable_and_distinguishes_text_from_ids():
    assert prompt_key([1, 2, 3]) == prompt_key(torch.tensor([1, 2, 3]))
    assert prompt_key([1, 2, 3]) != prompt_key([1, 2, 4])
    assert prompt_key("1,2,3") != prompt_key([1, 2, 3])


def test_cache_gathers_per_row_and_round_trips(tmp_path):
    cache = ReferenceRewards()
    a, b = prompt_key("a"), prompt_key("b")
    cache.add([a, a, b], torch.tensor([[1.0], [2.0], [10.0]]))
    cache.add([b], torch.tensor([[20.0]]))
    assert cache.missing([a, "zzz", b, "zzz"]) == ["zzz"]
    ref = cache.gather([b, a, b])
    assert ref.shape == (3, 2, 1)
    torch.testing.assert_close(ref[:, :, 0], torch.tensor([[10.0, 20.0], [1.0, 2.0], [10.0, 20.0]]))
    path = tmp_path / "refs.safetensors"
    cache.save(path)
    loaded = ReferenceRewards.load(path)
    torch.testing.assert_close(loaded.gather([a, b]), cache.gather([a, b]))
    assert not list(tmp_path.glob("*.tmp-*"))  # atomic write leaves no temp file


def test_cache_errors():
    cache = ReferenceRewards()
    cache.add(["a", "a", "b"], torch.zeros(3, 1))
    with pytest.raises(RewardlabError, match="no reference rewards for 1 prompt"):
        cache.gather(["a", "c"])
    with pytest.raises(RewardlabError, match="different numbers of references"):
        cache.gather(["a", "b"])
    assert cache.gather(["a", "b"], k=1).shape == (2, 1, 1)
    with pytest.raises(RewardlabError, match="only 1"):
        cache.gather(["a", "b"], k=2)
    with pytest.raises(RewardlabError, match="2-head|heads"):
        cache.add(["a"], torch.zeros(1, 2))
    with pytest.raises(RewardlabError, match="NaN"):
        cache.add(["d"], torch.tensor([[float("nan")]]))


def test_group_references_are_leave_one_out():
    logits = torch.tensor([[1.0], [2.0], [3.0], [10.0], [20.0], [30.0]])
    ref = group_references(logits, [0, 0, 0, 1, 1, 1])
    assert ref.shape == (6, 2, 1)
    torch.testing.assert_close(ref[0, :, 0], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(ref[4, :, 0], torch.tensor([10.0, 30.0]))
    with pytest.raises(RewardlabError, match="equal size"):
        group_references(logits, [0, 0, 1, 1, 1, 1])
