"""Diagnose a sequence-classification reward model: what its logits mean and how to read them.

    rewardlab inspect runs/rm --preferences eval.jsonl --output inspect.json

Python::

    from rewardlab.reward_model.inspect import inspect_reward_model
    report = inspect_reward_model("runs/rm", preferences="eval.jsonl")
    report.recommended_spec, report.why

Head semantics come from, in order: the user's declaration; rewardlab metadata in config.json;
or inference. Inference uses the fact that training shapes the heads in opposite ways:

- H Bradley-Terry heads trained with the loss averaged over heads all receive the *same*
  gradient ∂L/∂l_h (TRL's RewardTrainer on a 2-logit model did this), so they move together:
  their logits correlate strongly positively, each head alone orders preferences well, and
  their difference (log-odds) carries almost nothing;
- a cross-entropy classifier's two logits receive *opposite* gradients (∂L/∂l_1 = −∂L/∂l_0),
  so they anti-correlate; only l_1 − l_0 is defined, and one head alone orders preferences
  the wrong way round.

With preference data the correlation is measured on its responses and the accuracy pattern
checked; without, on random token sequences (weaker evidence, said so). A model with one
output (TRL's RewardTrainer requires ``num_labels=1``) is a single BT head.

For H ≥ 2 Bradley-Terry heads the report adds the heads' agreement (`head_agreement`): their mean
pairwise correlation and mean per-sequence spread on the evaluated sequences, and with preference
data each head's accuracy and the fraction of pairs whose winner the heads dispute. For bootstrap
heads (`train-rm --bootstrap`) this is the ensemble's uncertainty signal.

The recommended pipeline spec follows the semantics: ``mean|lsc(q=0.5)`` for BT heads (with
``temperature(t=T)`` when a non-trivial T is known), ``logodds(pos,neg)|logsigmoid`` for a
2-class classifier (= log p(good)). See docs/reward-models.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError
from rewardlab.reward.readings import candidate_specs, probe_sequences
from rewardlab.reward.scoring import CONTRADICTION_CORR
from rewardlab.reward_model.evaluate import T_MAX, T_MIN, EvaluationReport, evaluate_pairs, head_correlation
from rewardlab.reward_model.loss import preference_accuracy

# |correlation| above which the heads' relation decides the semantics, and above which it is "high"
# (the level at which RewardModel refuses declared semantics that contradict it).
DECIDE_CORR, HIGH_CORR = 0.5, CONTRADICTION_CORR
# Temperatures within this factor of 1 are left out of the recommended spec.
T_NEGLIGIBLE = 1.1


@dataclass
class SemanticsFinding:
    """The head semantics and how they were established.

    Attributes:
        semantics: "bradley_terry", "classifier", or None when undecided.
        source: "declared", "metadata", "num_labels", "preferences", "probe" or "none".
        confidence: "certain", "high", "medium" or "low".
        evidence: one line per fact used.
    """

    semantics: str | None
    source: str
    confidence: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class ReadingVerdict:
    """One candidate reading of the heads: its spec, verdict and why; accuracy/ECE with preferences."""

    reading: str
    verdict: str  # "recommended", "ok", "same" or "wrong"
    why: str
    accuracy: float | None = None
    ece: float | None = None


@dataclass
class HeadAgreement:
    """How far H ≥ 2 Bradley-Terry heads agree on the evaluated sequences.

    Attributes:
        source: "preferences" (the pairs' chosen and rejected responses) or "probe" (random token sequences).
        num_sequences: N, the sequences the heads were compared on.
        ensemble: the metadata's ensemble kind ("bootstrap"), or None.
        mean_correlation: mean over head pairs h ≠ h' of the Pearson correlation of l_h and l_h' over the N
            sequences (NaN when a head is constant).
        mean_head_std: mean over sequences of the population std over heads, sqrt((1/H) Σ_h (l_h − l̄)²), in
            reward units (uwo's penalty is λ times its square, per sequence).
        reward_std: std over sequences of the head mean l̄: the scale to read mean_head_std against.
        head_accuracy: per head, the fraction of pairs it orders correctly (ties half); preferences only.
        winner_disagreement: the fraction of pairs on which the heads do not all pick the same winner
            (a tie counts as a pick of its own); preferences only.
    """

    source: str
    num_sequences: int
    ensemble: str | None
    mean_correlation: float
    mean_head_std: float
    reward_std: float
    head_accuracy: list[float] | None = None
    winner_disagreement: float | None = None


def head_agreement(logits: torch.Tensor, chosen: torch.Tensor | None = None, rejected: torch.Tensor | None = None,
                   *, source: str = "preferences", ensemble: str | None = None) -> HeadAgreement:
    """The agreement statistics of `HeadAgreement` for head logits, and of preference pairs when given.

    Shapes: logits (N, H), H ≥ 2; chosen, rejected (P, H).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"head_agreement needs logits (N, H) with H ≥ 2; got {tuple(logits.shape)}")
    logits = logits.double()
    out = HeadAgreement(
        source=source, num_sequences=logits.shape[0], ensemble=ensemble,
        mean_correlation=_mean_offdiag(head_correlation(logits)),
        mean_head_std=float(logits.std(dim=-1, correction=0).mean()),
        reward_std=float(logits.mean(-1).std(correction=0)),
    )
    if chosen is not None and rejected is not None:
        d = chosen.double() - rejected.double()  # (P, H)
        out.head_accuracy = [float(preference_accuracy(chosen[:, k], rejected[:, k])) for k in range(d.shape[1])]
        winner = torch.sign(d)  # +1 chosen, −1 rejected, 0 a tie
        out.winner_disagreement = float((winner != winner[:, :1]).any(-1).double().mean())
    return out


@dataclass
class InspectionReport:
    model: str
    architecture: str
    num_labels: int
    metadata: dict[str, Any] | None
    semantics: SemanticsFinding
    readings: list[ReadingVerdict]
    recommended_spec: str
    why: str
    temperature: float | None
    evaluation: EvaluationReport | None = None
    agreement: HeadAgreement | None = None
    """The heads' agreement, for H ≥ 2 Bradley-Terry heads."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------------------------
def _mean_offdiag(corr: torch.Tensor) -> float:
    h = corr.shape[0]
    off = corr[~torch.eye(h, dtype=torch.bool)]
    return float(off.mean())


def infer_semantics(
    num_labels: int,
    logits: torch.Tensor | None,
    source: str,
    evaluation: EvaluationReport | None = None,
) -> SemanticsFinding:
    """Infer BT vs classifier from the heads' correlation (and the accuracy pattern, with preferences).

    Args:
        num_labels: H.
        logits: head logits of some responses (N, H), or None.
        source: "preferences" (logits of real responses) or "probe" (random token sequences).
        evaluation: the preference evaluation, for the accuracy pattern (H = 2).
    """
    if num_labels == 1:
        return SemanticsFinding(
            "bradley_terry", "num_labels", "high",
            ["one output: a single scalar reward, as TRL's RewardTrainer trains (num_labels=1); read it as one BT head"],
        )
    if logits is None or logits.shape[0] < 3:
        return SemanticsFinding(None, "none", "low", ["no responses to measure the heads on"])
    corr = _mean_offdiag(head_correlation(logits))
    what = "the preference responses" if source == "preferences" else f"{logits.shape[0]} random token sequences"
    evidence = [f"mean correlation between heads over {what}: {corr:+.2f}"]
    if math.isnan(corr):
        return SemanticsFinding(None, source, "low", evidence + ["a head is constant; the correlation is undefined"])
    if corr >= DECIDE_CORR:
        semantics = "bradley_terry"
    elif corr <= -DECIDE_CORR:
        semantics = "classifier"
    else:
        return SemanticsFinding(None, source, "low", evidence + [
            f"|correlation| < {DECIDE_CORR}: neither BT heads (strongly positive) nor classifier logits "
            "(strongly negative); declare the semantics"])
    confidence = "high" if abs(corr) >= HIGH_CORR else "medium"
    if source == "probe":
        confidence = "medium" if confidence == "high" else "low"
        evidence.append("random token sequences are weaker evidence than real responses; pass --preferences")
    if evaluation is not None and num_labels == 2:
        acc = {k: v.accuracy for k, v in evaluation.readings.items()}
        heads_agree = acc["head(k=0)"] > 0.5 and acc["head(k=1)"] > 0.5
        heads_oppose = (acc["head(k=0)"] - 0.5) * (acc["head(k=1)"] - 0.5) < 0
        evidence.append(
            f"preference accuracy: head 0 {acc['head(k=0)']:.3f}, head 1 {acc['head(k=1)']:.3f}, "
            f"log-odds {acc['logodds(pos=1,neg=0)']:.3f}"
        )
        fits = heads_agree if semantics == "bradley_terry" else heads_oppose
        if fits:
            evidence.append("the accuracy pattern agrees (" + (
                "both heads order preferences the same way" if semantics == "bradley_terry"
                else "the two heads order preferences in opposite ways") + ")")
        else:
            confidence = "low"
            evidence.append("the accuracy pattern does not agree with the correlation; declare the semantics")
    return SemanticsFinding(semantics, source, confidence, evidence)


# --------------------------------------------------------------------------------------------
# Readings and the recommendation
# --------------------------------------------------------------------------------------------
def _classifier_pair(evaluation: EvaluationReport | None) -> tuple[int, int]:
    """(pos, neg) of a 2-class classifier: (1, 0) unless the preferences say class 0 is the good one."""
    if evaluation is not None and evaluation.readings["logodds(pos=1,neg=0)"].accuracy < 0.5:
        return 0, 1
    return 1, 0


def judge_readings(semantics: str | None, num_labels: int, evaluation: EvaluationReport | None,
                   principal: str) -> list[ReadingVerdict]:
    """A verdict for every candidate reading under the given semantics."""
    names = candidate_specs(num_labels)
    if principal not in names:  # e.g. logodds(pos=0,neg=1) for a classifier whose class 0 is the good one
        names.append(principal)
    out = []
    for name in names:
        if name == principal:
            verdict, why = "recommended", "the principled reading for these semantics"
        elif num_labels == 1:
            verdict, why = "same", "one head: every reduction is the same reward"
        elif semantics == "bradley_terry":
            if name.startswith(("logodds", "logprob")):
                verdict, why = "wrong", ("BT heads are rewards of their own; their difference or softmax cancels "
                                         "the reward they share")
            elif name == "sum":
                verdict, why = "ok", f"= {num_labels}·mean; against a fixed KL coefficient β it acts like β/{num_labels}"
            elif name == "min":
                verdict, why = "ok", "worst case over heads (ensembles); conservative"
            else:
                verdict, why = "ok", "one BT head: a valid reward, noisier than the mean"
        elif semantics == "classifier":
            if name.startswith(("logodds", "logprob")):
                verdict, why = "ok", "a classifier reading (check which class is the good one)"
            else:
                verdict, why = "wrong", ("classifier logits are defined only up to a constant per response; a "
                                         "single logit, their mean, sum or min is arbitrary")
        else:
            verdict, why = "ok", "semantics undecided: cannot judge"
        v = ReadingVerdict(name, verdict, why)
        if evaluation is not None and name in evaluation.readings:
            v.accuracy, v.ece = evaluation.readings[name].accuracy, evaluation.readings[name].ece
            if semantics == "classifier" and verdict == "ok" and v.accuracy < 0.5:
                verdict, v.why = "wrong", "reads the classes the wrong way round: it orders preferences backwards"
                v.verdict = verdict
            if verdict == "wrong":
                v.why += f" (accuracy {v.accuracy:.3f})"
        out.append(v)
    return out


def recommend(semantics: str | None, num_labels: int, temperature: float | None,
              evaluation: EvaluationReport | None) -> tuple[str, str, str]:
    """(recommended spec, principal reading, one line of why)."""
    if semantics == "classifier":
        if num_labels == 2:
            pos, neg = _classifier_pair(evaluation)
            reading = f"logodds(pos={pos},neg={neg})"
            why = (f"a cross-entropy classifier: only l_{pos} − l_{neg} is defined, and logσ of it is log p(class {pos}), "
                   "an absolute log-probability that needs no per-prompt centring")
            return f"{reading}|logsigmoid", reading, why
        k = num_labels - 1
        if evaluation is not None:
            k = max(range(num_labels), key=lambda j: evaluation.readings[f"logprob(k={j})"].accuracy)
        reading = f"logprob(k={k})"
        why = (f"a {num_labels}-class classifier: log-softmax of class {k}, the class "
               + ("whose probability best orders the preferences" if evaluation is not None
                  else "assumed best (the last); check it with --preferences"))
        return reading, reading, why
    if semantics is None and num_labels > 1:
        return "", "mean", ("head semantics undecided: declare them (--semantics bradley_terry → 'mean|lsc(q=0.5)'; "
                            "--semantics classifier → 'logodds(pos=1,neg=0)|logsigmoid')")
    spec = "mean"
    if temperature is not None and max(temperature, 1 / temperature) >= T_NEGLIGIBLE:
        spec += f"|temperature(t={float(f'{temperature:.3g}')})"
    spec += "|lsc(q=0.5)"
    heads = "one BT head:" if num_labels == 1 else f"{num_labels} BT heads: mean averages independent rewards, and"
    why = (f"{heads} lsc(q=0.5) = logσ(r − median reference reward) removes the per-prompt constant a BT reward "
           "leaves undetermined and bounds the reward (Wang et al. 2024)")
    share = None if evaluation is None or evaluation.offsets is None else evaluation.offsets["between_prompt_fraction"]
    if share is not None and math.isfinite(share):  # only where identifiable (≥ 2 pairs per prompt)
        why += f"; here {share:.0%} of the reward variance is per-prompt offset"
    if "temperature" in spec:
        why += f"; T={temperature:.3g} makes σ(Δr/T) calibrated"
    return spec, "mean", why


# --------------------------------------------------------------------------------------------
# The whole inspection
# --------------------------------------------------------------------------------------------
def inspect_reward_model(
    model: Any,
    preferences: Any = None,
    *,
    dataset_config: str | None = None,
    split: str | None = None,
    device: Any = None,
    semantics: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    plot: str | None = None,
) -> InspectionReport:
    """Diagnose a reward model (see the module docstring).

    Args:
        model: a model folder, a Hub name or a `RewardModel`.
        preferences: optional preference data for accuracy, calibration and stronger inference: a file, a
            dataset folder, a Hub dataset or a ``datasets.Dataset``.
        dataset_config, split: the dataset's configuration and split (None: its only split).
        device: where the model runs (None: the CPU; ``"auto"``: the GPU when there is one).
        semantics: declared semantics (overrides metadata and inference).
        max_length: keep the last max_length tokens of each sequence.
        plot: reliability-diagram PNG path (with preferences).
    """
    from rewardlab.reward.metadata import read_metadata
    from rewardlab.reward_model.evaluate import load_reward_model, score_pairs, score_sequences

    data = None
    if preferences is not None:  # read (and checked) before the model loads
        from rewardlab.reward_model.data import read_preferences

        data = read_preferences(preferences, config=dataset_config, split=split, field="--preferences")
    rm = load_reward_model(model, None, batch_size, device)
    config = rm.model.config
    h = rm.num_heads
    meta = read_metadata(config)
    name = model if isinstance(model, str) else type(rm.model).__name__
    arch = (getattr(config, "architectures", None) or [type(rm.model).__name__])[0]

    pairs, chosen, rejected, evaluation, probe_logits = None, None, None, None, None
    if data is not None:
        from rewardlab.reward_model.data import tokenize_preferences

        pairs = tokenize_preferences(data, rm.tokenizer, max_length)
        chosen, rejected = score_pairs(rm, pairs, rm.tokenizer.pad_token_id)
        # A first pass with the reading to be decided; redone below once the semantics are known.
        evaluation = evaluate_pairs(chosen, rejected, pairs.prompts)

    # ---- semantics -----------------------------------------------------------------------
    if semantics is not None:
        finding = SemanticsFinding(semantics, "declared", "certain", [f"declared by the user: {semantics}"])
    elif meta is not None:
        finding = SemanticsFinding(meta.semantics, "metadata", "certain",
                                   [f"rewardlab metadata in config.json: {meta.semantics}, loss {meta.loss}"])
    elif h == 1:
        finding = infer_semantics(h, None, "none")
    elif chosen is not None:
        finding = infer_semantics(h, torch.cat([chosen, rejected]), "preferences", evaluation)
    else:
        probe_logits = score_sequences(rm, probe_sequences(rm.tokenizer), rm.tokenizer.pad_token_id)
        finding = infer_semantics(h, probe_logits, "probe")
    if finding.source in ("declared", "metadata") and h > 1 and chosen is not None:
        check = infer_semantics(h, torch.cat([chosen, rejected]), "preferences", evaluation)
        if check.semantics is not None and check.semantics != finding.semantics:
            finding.evidence.append(f"warning: the data suggest {check.semantics} ({'; '.join(check.evidence)})")

    # ---- temperature and recommendation ------------------------------------------------------
    temperature = meta.temperature if meta is not None else None
    if temperature is not None and not T_MIN * 1.01 < temperature < T_MAX * 0.99:
        temperature = None  # a fit stuck at its search bound is not a calibration
    spec, principal, why = recommend(finding.semantics, h, None, evaluation)
    if evaluation is not None:
        evaluation = evaluate_pairs(chosen, rejected, pairs.prompts, semantics=finding.semantics,
                                    principal=principal, plot=plot)
        if temperature is None and T_MIN * 1.01 < evaluation.temperature < T_MAX * 0.99:
            temperature = evaluation.temperature
    spec, principal, why = recommend(finding.semantics, h, temperature, evaluation)
    if finding.confidence in ("low", "medium") and spec:
        why += f" (semantics inferred with {finding.confidence} confidence; declare them to be sure)"

    # ---- agreement of BT heads ---------------------------------------------------------------
    agreement = None
    if finding.semantics == "bradley_terry" and h > 1:
        ensemble = meta.ensemble if meta is not None else None
        if chosen is not None:
            agreement = head_agreement(torch.cat([chosen, rejected]), chosen, rejected, ensemble=ensemble)
        else:
            if probe_logits is None:
                probe_logits = score_sequences(rm, probe_sequences(rm.tokenizer), rm.tokenizer.pad_token_id)
            agreement = head_agreement(probe_logits, source="probe", ensemble=ensemble)
    return InspectionReport(
        model=str(name), architecture=arch, num_labels=h, metadata=None if meta is None else meta.to_dict(),
        semantics=finding, readings=judge_readings(finding.semantics, h, evaluation, principal),
        recommended_spec=spec, why=why, temperature=temperature, evaluation=evaluation, agreement=agreement,
    )


def _json_safe(obj: Any) -> Any:
    """NaN/inf → None (JSON has neither); containers recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(report: Any, path: str) -> None:
    """Write ``report.to_dict()`` as JSON, atomically (temp file in the same folder, then rename).

    Undefined numbers (an empty calibration bin's accuracy, a constant head's correlation) are null.
    """
    write_text(path, json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False))


def check_spec(spec: str, semantics: str | None) -> None:
    """Raise `RewardlabError` if the pipeline does not accept `spec` (guards the recommendation)."""
    from rewardlab.reward.pipeline import RewardPipeline

    if spec:
        RewardPipeline.from_spec(spec, semantics=semantics)
    elif semantics is not None:
        raise RewardlabError("no spec recommended although the semantics are known")
