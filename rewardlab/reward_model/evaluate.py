"""Evaluate a reward model on preference pairs: accuracy per reading, calibration, temperature, heads, offsets.

For each pair the model gives head logits ``l_c, l_r`` (H each). A *reading* reduces H logits
to one reward (`rewardlab.reward.readings`); each is scored by preference accuracy. For the model's
principled reading (mean over BT heads, log-odds for a classifier) we also report:

- **calibration**: the BT probability p = σ(r_c − r_r) that the chosen response wins, binned by
  confidence; ECE = Σ_b (n_b / N) |accuracy_b − confidence_b| (Guo et al. 2017) and a
  reliability-diagram PNG;
- **temperature**: T = argmin_T −mean log σ((r_c − r_r) / T) on the held-out pairs; σ(Δr / T)
  is then calibrated (Guo et al. 2017's temperature scaling);
- **head correlation**: Pearson correlation of the H logits over all responses (BT heads
  trained together correlate strongly positively; classifier logits anti-correlate);
- **per-prompt offsets**: a BT reward is identified only up to a constant c(x) per prompt;
  o(x) = mean reward of x's responses measures it. ``between_prompt_fraction`` is the share of
  reward variance due to the prompt, σ²_b / (σ²_b + σ²_w), from the one-way ANOVA estimates of the
  variance components (unbiased: the naive Var(mean per prompt) / Var(r) also counts the
  responses' own noise, σ²_w / n per prompt, and came out ~40% with no prompt effect at all). It
  is reported only from prompts with at least 2 pairs (None otherwise: with one pair the pair's
  own gap and the prompt's offset cannot be told apart).

Example::

    from rewardlab.reward_model.evaluate import evaluate_reward_model
    report = evaluate_reward_model("runs/rm", "eval.jsonl", plot="reliability.png")
    print(report.to_dict())
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rewardlab.atomic import atomic_path
from rewardlab.errors import RewardlabError
from rewardlab.reward.readings import candidate_readings, principal_reading, read_heads
from rewardlab.reward_model.loss import preference_accuracy

# Temperature search range: beyond it a model is either degenerate or not a reward model.
T_MIN, T_MAX = 1e-2, 1e2


# --------------------------------------------------------------------------------------------
# Calibration and temperature (pure maths on score differences d = r_c − r_r)
# --------------------------------------------------------------------------------------------
@dataclass
class ReliabilityBin:
    """One confidence bin: [lo, hi), its pair count, mean confidence and accuracy."""

    lo: float
    hi: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(diffs: Tensor, n_bins: int = 10) -> list[ReliabilityBin]:
    """Top-label reliability bins of the BT probability σ(d).

    Each pair predicts the side with the higher reward, with confidence c = σ(|d|) ∈ [0.5, 1];
    it is correct when d > 0 (a tie counts half). Bins split [0.5, 1] evenly.

    Shapes: diffs (N,).
    """
    d = diffs.detach().double().flatten()
    conf = torch.sigmoid(d.abs())
    correct = (d > 0).double() + 0.5 * (d == 0).double()
    edges = torch.linspace(0.5, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=True)  # 0..n_bins-1; conf == 1 lands in the last bin
    bins = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        bins.append(ReliabilityBin(
            lo=float(edges[b]), hi=float(edges[b + 1]), count=n,
            confidence=float(conf[m].mean()) if n else float("nan"),
            accuracy=float(correct[m].mean()) if n else float("nan"),
        ))
    return bins


def expected_calibration_error(diffs: Tensor, n_bins: int = 10) -> float:
    """ECE of σ(r_c − r_r): Σ_b (n_b / N) · |accuracy_b − confidence_b| over `reliability_bins`.

    0 for a calibrated scorer; a scorer whose differences are k× too large (overconfident)
    has accuracy below its confidence in the upper bins.

    Shapes: diffs (N,) → float.
    """
    bins = reliability_bins(diffs, n_bins)
    n = sum(b.count for b in bins)
    if n == 0:
        raise ValueError("expected_calibration_error: no pairs")
    return sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count)


def preference_nll(diffs: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the observed preferences: −mean log σ(d / T).

    Shapes: diffs (N,) → float.
    """
    return float(-F.logsigmoid(diffs.detach().double() / temperature).mean())


def _golden_log_t(nll, lo: float, hi: float, iters: int) -> float:
    """Minimise a unimodal function of log T over [log lo, log hi] by golden-section search."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, e = b - g * (b - a), a + g * (b - a)
    fc, fe = nll(c), nll(e)
    for _ in range(iters):
        if fc < fe:
            b, e, fe = e, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, e, fe
            e = a + g * (b - a)
            fe = nll(e)
    return math.exp((a + b) / 2.0)


def fit_temperature(diffs: Tensor, lo: float = T_MIN, hi: float = T_MAX, iters: int = 100) -> float:
    """Temperature scaling: T* = argmin_{T ∈ [lo, hi]} −mean log σ(d / T).

    The NLL is convex in 1/T, hence unimodal in log T; golden-section search on log T finds the
    minimum to ~1e-8 relative precision. A result at `lo` means the pairs are (nearly)
    separable — the NLL keeps falling as T → 0 — and at `hi` that the scores carry no signal.

    Shapes: diffs (N,) → float.
    """
    d = diffs.detach().double().flatten()
    if d.numel() == 0:
        raise ValueError("fit_temperature: no pairs")
    return _golden_log_t(lambda log_t: float(-F.logsigmoid(d * math.exp(-log_t)).mean()), lo, hi, iters)


def fit_classifier_temperature(
    logits: Tensor, labels: Tensor, lo: float = T_MIN, hi: float = T_MAX, iters: int = 100
) -> float:
    """Temperature scaling of a classifier: T* = argmin_T mean −log softmax(l / T)_y.

    Shapes: logits (N, C), labels (N,) → float.
    """
    x = logits.detach().double()
    return _golden_log_t(lambda log_t: float(F.cross_entropy(x * math.exp(-log_t), labels)), lo, hi, iters)


# --------------------------------------------------------------------------------------------
# Heads and per-prompt offsets
# --------------------------------------------------------------------------------------------
def head_correlation(logits: Tensor) -> Tensor:
    """Pearson correlation matrix of the H logits over N responses (NaN for a constant head).

    Shapes: logits (N, H) → (H, H).
    """
    from rewardlab.reward.pipeline import head_correlation_matrix

    return head_correlation_matrix(logits).float()


MIN_PAIRS_PER_PROMPT = 2


def offset_statistics(chosen: Tensor, rejected: Tensor, prompts: list[str]) -> dict[str, Any]:
    """Per-prompt reward offsets o(x) = mean reward of prompt x's responses (chosen and rejected).

    Returns ``offset_mean``, ``offset_std``, ``offset_min``, ``offset_max`` (over prompts, as
    measured), ``within_prompt_std`` (std of r − o(x)), and ``between_prompt_fraction``: the
    share of reward variance due to the prompt, σ²_b / (σ²_b + σ²_w), estimated by one-way ANOVA
    (σ²_w = MSW, σ²_b = max(0, (MSB − MSW) / n₀)) over the prompts with ≥ 2 pairs; None when fewer
    than 2 prompts have that many (``between_prompt_prompts`` says how many were used).

    Shapes: chosen, rejected (N,); prompts: N keys.
    """
    r = torch.cat([chosen, rejected]).detach().double()
    keys = list(prompts) + list(prompts)
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(k, len(index)) for k in keys])
    n_prompts = len(index)
    sums = torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, ids, r)
    counts = torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, ids, torch.ones_like(r))
    offsets = sums / counts
    resid = r - offsets[ids]
    var_within = float((resid**2).mean())
    return {
        "num_prompts": n_prompts,
        "offset_mean": float(offsets.mean()),
        "offset_std": float(offsets.std(correction=0)),
        "offset_min": float(offsets.min()),
        "offset_max": float(offsets.max()),
        "within_prompt_std": math.sqrt(var_within),
        **_between_prompt_share(r, ids, counts, offsets),
    }


def _between_prompt_share(r: Tensor, ids: Tensor, counts: Tensor, offsets: Tensor) -> dict[str, Any]:
    """One-way ANOVA variance components over the prompts with ≥ MIN_PAIRS_PER_PROMPT pairs."""
    keep = counts >= 2 * MIN_PAIRS_PER_PROMPT  # two responses per pair
    k = int(keep.sum())
    if k < 2:
        return {"between_prompt_fraction": None, "between_prompt_prompts": k}
    rows = keep[ids]
    y, g, n_i, m_i = r[rows], ids[rows], counts[keep], offsets[keep]
    n = float(n_i.sum())
    grand = float(y.mean())
    msb = float((n_i * (m_i - grand) ** 2).sum()) / (k - 1)
    msw = float(((y - offsets[g]) ** 2).sum()) / (n - k)
    n0 = (n - float((n_i**2).sum()) / n) / (k - 1)
    var_b = max(0.0, (msb - msw) / n0)
    total = var_b + msw
    return {"between_prompt_fraction": var_b / total if total > 0 else float("nan"), "between_prompt_prompts": k}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
@dataclass
class ReadingResult:
    """How one reading of the heads does on the preferences."""

    accuracy: float
    ece: float
    nll: float


@dataclass
class EvaluationReport:
    """Everything `evaluate_pairs` measures. ``principal`` is the reading calibration refers to."""

    num_pairs: int
    num_heads: int
    semantics: str | None
    principal: str
    readings: dict[str, ReadingResult]
    temperature: float
    nll_at_temperature: float
    ece_at_temperature: float
    head_correlation: list[list[float]] | None
    diff_correlation: list[list[float]] | None
    offsets: dict[str, Any] | None
    reliability: list[ReliabilityBin] = field(default_factory=list)
    plot: str | None = None
    semantics_source: str | None = None
    """Where ``semantics`` came from: "declared", "metadata", "inferred" (as `rewardlab inspect` infers
    them from these preferences), "num_labels" or None (undecided)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_pairs(
    chosen: Tensor,
    rejected: Tensor,
    prompts: list[str] | None = None,
    semantics: str | None = None,
    principal: str | None = None,
    n_bins: int = 10,
    plot: str | None = None,
) -> EvaluationReport:
    """Evaluate head logits of preference pairs (see the module docstring for each number).

    Args:
        chosen: head logits of the chosen responses.
        rejected: head logits of the rejected responses.
        prompts: a prompt key per pair, for per-prompt offsets (None skips them).
        semantics: "bradley_terry", "classifier" or None; picks the principal reading.
        principal: override the principal reading (a key of `candidate_readings`).
        n_bins: confidence bins for ECE and the diagram.
        plot: write a reliability-diagram PNG of the principal reading here.

    Shapes: chosen, rejected (N, H).
    """
    if chosen.shape != rejected.shape or chosen.dim() != 2 or chosen.shape[0] == 0:
        raise RewardlabError(f"chosen and rejected must be non-empty (N, H); got {tuple(chosen.shape)}, {tuple(rejected.shape)}")
    n, n_heads = chosen.shape
    chosen, rejected = chosen.float(), rejected.float()
    rc, rr = candidate_readings(chosen), candidate_readings(rejected)
    readings = {}
    for name in rc:
        d = rc[name] - rr[name]
        readings[name] = ReadingResult(
            accuracy=float(preference_accuracy(rc[name], rr[name])),
            ece=expected_calibration_error(d, n_bins),
            nll=preference_nll(d),
        )
    principal = principal or principal_reading(semantics, n_heads)
    if principal not in rc:
        swapped = re.fullmatch(r"logodds\(pos=(\d+),neg=(\d+)\)", principal)
        if swapped is None or not all(int(k) < n_heads for k in swapped.groups()):
            raise RewardlabError(f"--reading {principal!r} is not a reading of this {n_heads}-head model; choose one of "
                                 f"{', '.join(rc)}")
        rc[principal], rr[principal] = read_heads(principal, chosen), read_heads(principal, rejected)
        d = rc[principal] - rr[principal]
        readings[principal] = ReadingResult(float(preference_accuracy(rc[principal], rr[principal])),
                                            expected_calibration_error(d, n_bins), preference_nll(d))
    d = rc[principal] - rr[principal]
    t = fit_temperature(d)
    both = torch.cat([chosen, rejected])
    report = EvaluationReport(
        num_pairs=n, num_heads=n_heads, semantics=semantics, principal=principal, readings=readings,
        temperature=t, nll_at_temperature=preference_nll(d, t), ece_at_temperature=expected_calibration_error(d / t, n_bins),
        head_correlation=head_correlation(both).tolist() if n_heads > 1 else None,
        diff_correlation=head_correlation(chosen - rejected).tolist() if n_heads > 1 else None,
        offsets=offset_statistics(rc[principal], rr[principal], prompts) if prompts is not None else None,
        reliability=reliability_bins(d, n_bins),
    )
    if plot:
        report.plot = plot_reliability(report.reliability, plot, title=f"{principal}: ECE {readings[principal].ece:.3f}")
    return report


def plot_reliability(bins: list[ReliabilityBin], path: str, title: str = "") -> str:
    """Write a reliability diagram (accuracy vs confidence per bin, with the diagonal) as a PNG.

    Written to a temporary file in the same folder and renamed, so the PNG is never half-written.
    """

    import matplotlib

    matplotlib.use("Agg")  # no display; safe in tests and on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    centers = [(b.lo + b.hi) / 2 for b in bins if b.count]
    width = bins[0].hi - bins[0].lo if bins else 0.05
    ax.bar(centers, [b.accuracy for b in bins if b.count], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot([b.confidence for b in bins if b.count], [b.accuracy for b in bins if b.count], "o", color="C1",
            label="(confidence, accuracy)")
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", linewidth=1, label="calibrated")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence σ(|r_c − r_r|)")
    ax.set_ylabel("fraction of pairs ordered correctly")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Driving a model
# --------------------------------------------------------------------------------------------
def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into (input_ids, attention_mask).

    Shapes: → (N, T) int64 each, T = the longest sequence.
    """
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def score_sequences(scorer: Any, seqs: list[list[int]], pad_id: int, chunk: int = 1024) -> Tensor:
    """Head logits of token-id sequences through ``scorer.score_ids`` (e.g. a `RewardModel`).

    Sequences are grouped by length in chunks of `chunk` so padding stays small; the result is
    in the input order.

    Shapes: → (N, H) float32.
    """
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: Tensor | None = None
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        ids, mask = pad_right([seqs[i] for i in idx], pad_id)
        scores = scorer.score_ids(ids, mask).float().cpu()
        if out is None:
            out = torch.empty((len(seqs), scores.shape[-1]), dtype=torch.float32)
        out[torch.tensor(idx)] = scores
    assert out is not None
    return out


def score_pairs(scorer: Any, pairs: Any, pad_id: int) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) head logits of `TokenizedPairs`. Shapes: → (N, H) each."""
    both = score_sequences(scorer, pairs.chosen_ids + pairs.rejected_ids, pad_id)
    n = len(pairs)
    return both[:n], both[n:]


def load_reward_model(model: Any, semantics: str | None = None, batch_size: int = 32, device: Any = None):
    """A `RewardModel` from a path (on ``device``: None keeps the CPU, ``"auto"`` the GPU when there is
    one; see `rewardlab.devices.resolve_device`), or the given `RewardModel` unchanged."""
    from rewardlab.reward.scoring import RewardModel

    if isinstance(model, RewardModel):
        return model
    if device is not None:
        from rewardlab.devices import resolve_device

        device = resolve_device(device)
    return RewardModel.from_pretrained(model, semantics=semantics, batch_size=batch_size, device=device)


def evaluate_reward_model(
    model: Any,
    preferences: Any,
    *,
    dataset_config: str | None = None,
    split: str | None = None,
    device: Any = None,
    semantics: str | None = None,
    principal: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    n_bins: int = 10,
    plot: str | None = None,
) -> EvaluationReport:
    """Score a preference file with a reward model and evaluate it (`evaluate_pairs`).

    Args:
        model: a model folder, a Hub name or a `RewardModel`.
        preferences: preference data: a file, a dataset folder, a Hub dataset or a ``datasets.Dataset``
            (see `rewardlab.reward_model.data`).
        dataset_config, split: the dataset's configuration and split (None: its only split).
        device: where the model runs (None: the CPU; ``"auto"``: the GPU when there is one).
        semantics: declared head semantics; default: the model's metadata, else None.
        principal: the reading for calibration; default from the semantics.
        max_length: keep the last max_length tokens of each sequence.
        plot: write the reliability diagram here.
    """
    from rewardlab.reward_model.data import read_preferences, tokenize_preferences

    data = read_preferences(preferences, config=dataset_config, split=split, field="--preferences")
    rm = load_reward_model(model, semantics, batch_size, device)
    pairs = tokenize_preferences(data, rm.tokenizer, max_length)
    chosen, rejected = score_pairs(rm, pairs, rm.tokenizer.pad_token_id)
    sem, source = rm.semantics, rm.semantics_source
    if sem is None and rm.num_heads == 1:
        sem, source = "bradley_terry", "num_labels"
    elif sem is None:
        # No declaration, no metadata: infer the semantics as `rewardlab inspect` does, so both commands
        # read the model the same way (a classifier is not evaluated through its mean).
        from rewardlab.reward_model.inspect import infer_semantics, recommend

        first = evaluate_pairs(chosen, rejected, pairs.prompts)
        sem = infer_semantics(rm.num_heads, torch.cat([chosen, rejected]), "preferences", first).semantics
        source = "inferred" if sem is not None else None
        if principal is None and sem is not None:
            principal = recommend(sem, rm.num_heads, None, first)[1]
    report = evaluate_pairs(chosen, rejected, pairs.prompts, semantics=sem, principal=principal, n_bins=n_bins,
                            plot=plot)
    report.semantics_source = source
    return report
