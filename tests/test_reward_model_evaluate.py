"""Evaluation maths: calibration (ECE), temperature fit, head correlation, per-prompt offsets."""

import numpy as np
import pytest
import torch

from rewardlab.reward.readings import candidate_readings
from rewardlab.reward_model.evaluate import (
    evaluate_pairs,
    expected_calibration_error,
    fit_classifier_temperature,
    fit_temperature,
    head_correlation,
    offset_statistics,
    reliability_bins,
)


def calibrated_diffs(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Score differences of a perfectly calibrated BT scorer, oriented chosen − rejected.

    The true difference s ~ N(0, 2²); the first response wins with probability σ(s); the
    winner is recorded as chosen, so the observed difference is s or −s.
    """
    g = torch.Generator().manual_seed(seed)
    s = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    first_wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(s)
    return torch.where(first_wins, s, -s)


def test_ece_of_a_calibrated_scorer_is_near_zero_and_of_an_overconfident_one_large():
    d = calibrated_diffs()
    assert expected_calibration_error(d) < 0.02
    over = expected_calibration_error(3.0 * d)
    assert over > 0.1
    # Underconfidence is miscalibration too.
    assert expected_calibration_error(d / 3.0) > 0.1


def test_reliability_bins_match_a_numpy_computation():
    d = calibrated_diffs(500, seed=3)
    conf = 1 / (1 + np.exp(-np.abs(d.numpy())))
    correct = (d.numpy() > 0).astype(float)
    bins = reliability_bins(d, n_bins=5)
    edges = np.linspace(0.5, 1.0, 6)
    for b, lo, hi in zip(bins, edges[:-1], edges[1:], strict=True):
        m = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        assert b.count == m.sum()
        if m.any():
            assert b.accuracy == pytest.approx(correct[m].mean())
            assert b.confidence == pytest.approx(conf[m].mean())
    assert sum(b.count for b in bins) == 500


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_temperature_fit_recovers_a_known_temperature(true_t):
    d = calibrated_diffs()
    t = fit_temperature(true_t * d)
    assert t == pytest.approx(true_t, rel=0.10)
    # Dividing by the fitted T makes the scorer calibrated again.
    assert expected_calibration_error(true_t * d / t) < 0.02


def test_temperature_fit_on_separable_pairs_hits_the_lower_bound():
    assert fit_temperature(torch.tensor([1.0, 2.0, 3.0])) < 0.0101


def test_classifier_temperature_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(20000, 3, generator=g)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
    assert fit_classifier_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.10)


def test_head_correlation_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    x[:, 1] = 0.8 * x[:, 0] + 0.2 * x[:, 1]
    x[:, 2] = -x[:, 0] + 0.1 * x[:, 2]
    np.testing.assert_allclose(head_correlation(x).numpy(), np.corrcoef(x.numpy().T), atol=1e-5)


def test_offset_statistics_match_numpy():
    chosen = torch.tensor([3.0, 4.0, -1.0, 0.5])
    rejected = torch.tensor([1.0, 2.0, -2.0, 0.0])
    prompts = ["a", "a", "b", "c"]
    out = offset_statistics(chosen, rejected, prompts)
    offsets = np.array([np.mean([3, 4, 1, 2]), np.mean([-1, -2]), np.mean([0.5, 0.0])])
    assert out["num_prompts"] == 3
    assert out["offset_mean"] == pytest.approx(offsets.mean())
    assert out["offset_std"] == pytest.approx(offsets.std())
    r = np.array([3, 4, -1, 0.5, 1, 2, -2, 0])
    o = np.array([offsets[0], offsets[0], offsets[1], offsets[2]] * 2)
    within = np.mean((r - o) ** 2)
    assert out["within_prompt_std"] == pytest.approx(np.sqrt(within))
    # Only prompt "a" has 2 pairs: the between-prompt share is not identifiable from one prompt.
    assert out["between_prompt_fraction"] is None and out["between_prompt_prompts"] == 1
    # Adding a constant per prompt to both responses moves only the offsets.
    shifted = offset_statistics(chosen + torch.tensor([5.0, 5.0, 0.0, 0.0]),
                                rejected + torch.tensor([5.0, 5.0, 0.0, 0.0]), prompts)
    assert shifted["within_prompt_std"] == pytest.approx(out["within_prompt_std"])


def test_candidate_readings_for_two_heads():
    logits = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    r = candidate_readings(logits)
    assert set(r) == {"head(k=0)", "head(k=1)", "mean", "sum", "min", "logodds(pos=1,neg=0)"}
    assert r["logodds(pos=1,neg=0)"].tolist() == [2.0, -3.0]
    assert r["min"].tolist() == [1.0, -1.0]


def test_evaluate_pairs_accuracy_per_reading_and_plot(tmp_path):
    # Head 0 orders every pair right, head 1 every pair wrong: the mean depends on magnitudes.
    chosen = torch.tensor([[2.0, 0.0], [1.0, -1.0], [3.0, 1.0]])
    rejected = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    rep = evaluate_pairs(chosen, rejected, ["p", "p", "q"], semantics="bradley_terry", plot=str(tmp_path / "r.png"))
    assert rep.readings["head(k=0)"].accuracy == 1.0
    assert rep.readings["head(k=1)"].accuracy == 0.0
    # Differences of the mean: 0.5, 0 (a tie, counted half), 1.
    assert rep.readings["mean"].accuracy == pytest.approx((1 + 0.5 + 1) / 3)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep.offsets["num_prompts"] == 2
    cls = evaluate_pairs(chosen, rejected, semantics="classifier")
    assert cls.principal == "logodds(pos=1,neg=0)"


def _synthetic(n_prompts, pairs_per_prompt, prompt_sd, seed=0):
    """Rewards r = prompt effect + response noise (sd 1); chosen and rejected drawn alike."""
    gen = torch.Generator().manual_seed(seed)
    effect = prompt_sd * torch.randn(n_prompts, generator=gen).repeat_interleave(pairs_per_prompt)
    chosen = effect + torch.randn(effect.shape, generator=gen)
    rejected = effect + torch.randn(effect.shape, generator=gen)
    prompts = [f"p{i}" for i in range(n_prompts) for _ in range(pairs_per_prompt)]
    return chosen, rejected, prompts


def test_between_prompt_share_is_not_reported_with_one_pair_per_prompt():
    # No prompt effect at all: the old Var(offsets)/Var(r) gave ~0.5 here (0.41 in the check).
    out = offset_statistics(*_synthetic(400, 1, prompt_sd=0.0))
    assert out["between_prompt_fraction"] is None and out["between_prompt_prompts"] == 0


@pytest.mark.parametrize("prompt_sd, share", [(0.0, 0.0), (1.0, 0.5), (2.0, 0.8)])
def test_between_prompt_share_is_unbiased_with_several_pairs(prompt_sd, share):
    out = offset_statistics(*_synthetic(400, 3, prompt_sd))
    assert out["between_prompt_fraction"] == pytest.approx(share, abs=0.06)
    assert out["between_prompt_prompts"] == 400


def test_between_prompt_share_equals_the_anova_estimate():
    chosen, rejected, prompts = _synthetic(5, 2, 1.0, seed=3)
    groups = [np.array([chosen[i].item() for i in range(10) if prompts[i] == p]
                       + [rejected[i].item() for i in range(10) if prompts[i] == p]) for p in dict.fromkeys(prompts)]
    y = np.concatenate(groups)
    k, n, m = len(groups), len(y), 4
    msb = sum(m * (g.mean() - y.mean()) ** 2 for g in groups) / (k - 1)
    msw = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
    var_b = max(0.0, (msb - msw) / m)
    assert offset_statistics(chosen, rejected, prompts)["between_prompt_fraction"] == pytest.approx(var_b / (var_b + msw))
