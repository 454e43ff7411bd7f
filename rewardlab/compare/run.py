"""Compare two policies on held-out prompts: reward, win rate, KL to a reference, length, EOS rate.

Steps of `compare_policies`:

1. Read the prompts (any dataset `rewardlab.datasets_io` reads; the first ``num_prompts`` rows), load
   the gold function, parse the reward pipeline — everything cheap, before any model loads.
2. Load policy A, policy B and the reference (default: B, the starting policy) and refuse tokenizers
   that differ: log π_A − log π_ref is only defined over the same token ids.
3. Sample one response per prompt from A and from B with the same per-prompt seeds (common random
   numbers: comparing a policy with itself gives identical samples, a win rate of exactly ½ and
   KL 0), as PPO samples (`rewardlab.ppo.rollout`: seeded, stop tokens, temperature τ).
4. KL to the reference, per sample: k1 summed over tokens, Σ_t log π_x(y_t) − log π_ref(y_t) on
   π_x's own sample y, logprobs at the sampling temperature (as in `rewardlab.study.runs.evaluate_policy`).
5. Score both policies' samples with the reward side (`rewardlab.reward.side.RewardSide`) in one
   batch, so stages that normalise over the batch (whiten, running_norm) apply the same map to both.
   Centred pipelines (center, lsc, par, standardize) centre every sample on K samples of the
   *reference* policy for the same prompt (``num_reference_samples``), as PPO does.
6. Win rate of A over B per prompt (ties half) with a 95 % Wilson interval (`rewardlab.compare.stats`),
   by the pipeline's score and, with a gold function, by gold.
7. Write results.json (every number, and every paired sample) and report.html (`rewardlab.compare.report`).

Example::

    from rewardlab.compare import compare_policies
    results = compare_policies("runs/ppo_tiny/policy", "runs/tiny/policy", reward_model="runs/tiny/reward",
                               prompts="runs/tiny/prompts.jsonl", num_prompts=64, out_dir="compare_out")
    results["win_rate"]["score"]            # {"win_rate": 0.62, "low": 0.50, "high": 0.73, …}
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rewardlab.compare.stats import summary, win_summary
from rewardlab.errors import RewardlabError

__all__ = ["Rollout", "compare_policies", "load_gold"]


@dataclass
class Rollout:
    """One policy's samples on the prompts, on the CPU."""

    response_ids: Tensor   # (N, T) int64, padded after the stop token
    response_mask: Tensor  # (N, T) int64
    finished: Tensor       # (N,) bool, ended with a stop token within response_length
    kl: Tensor             # (N,) float64, Σ_t log π(y_t) − log π_ref(y_t) on this policy's own samples


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_gold(ref: str) -> Callable[[list[Any], list[str]], Any]:
    """The gold function ``module:function`` or ``path/to/file.py:function``: ``fn(prompts, responses) -> scores``."""
    module, _, name = ref.rpartition(":")
    if not module or not name:
        raise RewardlabError(f"--gold={ref!r}: name a function as module:function or path/to/file.py:function")
    from rewardlab.reward.rules import load_module_file

    try:
        mod = load_module_file(module, f"--gold={ref!r}") if module.endswith(".py") else importlib.import_module(module)
        return getattr(mod, name)
    except ImportError as err:
        raise RewardlabError(f"--gold={ref!r}: cannot import {module!r} ({err}); put it on PYTHONPATH or give "
                             "path/to/file.py:function") from None
    except AttributeError:
        raise RewardlabError(f"--gold={ref!r}: {module!r} has no function {name!r}") from None


def _gold_scores(fn: Callable, ref: str, prompts: list[Any], responses: list[str]) -> np.ndarray:
    out = np.asarray(fn(list(prompts), list(responses)), dtype=np.float64)
    if out.shape != (len(prompts),):
        raise RewardlabError(f"gold function {ref!r} returned shape {out.shape}; return one number per response "
                             f"({len(prompts)},)")
    return out


def _read_prompts(prompts: Any, column: str, config: str | None, split: str | None,
                  num_prompts: int | None) -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, other columns) of a dataset, a list of rows or a list of prompts; the first ``num_prompts``."""
    from rewardlab.ppo.prompts import prompt_rows

    if isinstance(prompts, (str, os.PathLike)):
        from rewardlab.datasets_io import describe, load_split

        name = describe(prompts, config, split)
        ds = load_split(prompts, config=config, split=split, field="--prompts")
        if column not in ds.column_names:
            raise RewardlabError(f"--prompts {name} has no {column!r} column (columns: {list(ds.column_names)}); "
                                 "set --prompt-column to the column that holds the prompts")
        rows, columns = prompt_rows(ds, column, name)
    else:
        rows, columns = prompt_rows(prompts, column, "prompts=")
    n = len(rows) if num_prompts is None else min(num_prompts, len(rows))
    return rows[:n], {c: v[:n] for c, v in columns.items()}


def _load_policy(path: str, field: str, device: torch.device) -> tuple[Any, Any, str]:
    """(model in eval mode on ``device``, tokenizer, folder) of a causal-LM folder or Hub name; a PPO run folder
    or checkpoint (``runs/ppo``, ``runs/ppo/checkpoints/update-8``) stands for the ``policy/`` folder inside it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.local import model_folder

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) \
            and os.path.isfile(os.path.join(path, "policy", "config.json")):
        path = os.path.join(path, "policy")  # a PPO run folder or one of its checkpoints: the policy inside
    folder = model_folder(path, field, need_tokenizer=True)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None and tok.eos_token_id is None:
        raise RewardlabError(f"{field}={path!r}: its tokenizer has neither a pad nor an EOS token; set one")
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).to(device).eval()
    return model, tok, folder


def _check_tokenizers(named: Sequence[tuple[str, Any]]) -> None:
    """Refuse policies whose tokenizers map text to different ids (KL compares logprobs of the same ids)."""
    from rewardlab.reward.scoring import same_tokenizer

    (first, tok), *rest = named
    for name, other in rest:
        if not same_tokenizer(tok, other):
            raise RewardlabError(f"{first} and {name} have different tokenizers (vocabulary or special tokens); the "
                                 "KL to the reference compares logprobs of the same token ids, so compare "
                                 "checkpoints of one model family, or give a --reference with the same tokenizer")


# --------------------------------------------------------------------------------------------
# Sampling and KL
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def _sample(policy, q: Tensor, qm: Tensor, seeds: list[int], *, stop_ids: tuple[int, ...], pad_id: int,
            response_length: int, temperature: float, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded responses, cut after the first stop token. Shapes: (N, Tq) → (N, T), (N, T), (N,) on the CPU."""
    from rewardlab.ppo.rollout import generate_responses, truncate_after_stop

    raw = generate_responses(policy, q, qm, seeds=seeds, pad_id=pad_id, stop_ids=stop_ids, micro_batch=batch_size,
                             response_length=response_length, temperature=temperature, top_k=0, top_p=1.0)
    r, m, finished = truncate_after_stop(raw, stop_ids, pad_id)
    return r.cpu(), m.cpu(), finished.cpu()


@torch.no_grad()
def _sequence_logprobs(policy, q: Tensor, qm: Tensor, r: Tensor, m: Tensor, *, temperature: float,
                       batch_size: int) -> Tensor:
    """Σ_t log π(y_t) over each response's real tokens, at the sampling temperature.

    Shapes: q, qm (N, Tq) on the policy's device; r, m (N, T) → (N,) float64 on the CPU.
    """
    from rewardlab.ops import logprobs_from_logits
    from rewardlab.ppo.rollout import response_logits

    out = []
    for s in range(0, q.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        rr, mm = r[sl].to(q.device), m[sl].to(q.device)
        lp = logprobs_from_logits(response_logits(policy, q[sl], qm[sl], rr, mm), rr, temperature)  # (b, T)
        out.append((lp.double() * mm).sum(1).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------
def compare_policies(
    policy_a: str,
    policy_b: str,
    *,
    reward_model: str | None,
    prompts: Any,
    out_dir: str | None,
    pipeline: str | None = None,
    reference: str | None = None,
    gold: str | None = None,
    num_prompts: int | None = 256,
    response_length: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    semantics: str | None = None,
    allow_semantics_mismatch: bool = False,
    num_reference_samples: int = 4,
    prompt_column: str = "prompt",
    dataset_config: str | None = None,
    dataset_split: str | None = None,
    max_prompt_length: int | None = None,
    batch_size: int = 64,
    labels: tuple[str, str] = ("A", "B"),
    show_pairs: int = 24,
) -> dict[str, Any]:
    """Compare policy A (e.g. the final policy) with policy B (e.g. the SFT policy) on the same prompts.

    Args:
        policy_a, policy_b: causal-LM folders or Hub names (same tokenizer).
        reward_model: a sequence-classification reward model folder (None: rule terms only).
        prompts: a dataset (file, folder, Hub name), rows with a ``prompt_column``, or the prompts.
        out_dir: where results.json and report.html go (None: nothing written).
        pipeline: the reward pipeline spec (None: the reward model's principal reading, e.g. ``mean``).
        reference: the policy KL is measured against, and that centred pipelines centre on (default: B).
        gold: ``module:function`` or ``file.py:function``, ``fn(prompts, responses) -> scores``.
        num_prompts: the first this many prompts (None: all).
        response_length, temperature: sampling, as PPO's ``generation`` section.
        seed: the sampling seed (the same per-prompt seeds for A and B).
        device: where the models run (`rewardlab.devices.resolve_device`).
        semantics, allow_semantics_mismatch: the reward model's head semantics, as ``rewardlab score`` takes them.
        num_reference_samples: K reference samples per prompt for centred pipelines.
        prompt_column, dataset_config, dataset_split: which prompts of ``prompts``.
        max_prompt_length: drop prompts longer than this many tokens.
        batch_size: rows per forward pass.
        labels: how the report names A and B.
        show_pairs: paired samples shown in report.html (results.json keeps all).

    Returns:
        The results dict written to results.json (see docs/compare.md).
    """
    from rewardlab.devices import resolve_device
    from rewardlab.ops import pad_rows
    from rewardlab.ppo.config import GenerationConfig
    from rewardlab.ppo.prompts import PromptSet
    from rewardlab.ppo.rollout import episode_seeds, stop_token_ids
    from rewardlab.reward.readings import principal_reading
    from rewardlab.reward.samples import PolicyTokens, Samples
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.side import RewardSide, RewardSpec
    from rewardlab.study.analysis import mean_ci

    # 1. Cheap checks first.
    for name, value, low in (("--num-prompts", num_prompts, 1), ("--response-length", response_length, 1),
                             ("--batch-size", batch_size, 1), ("--num-reference-samples", num_reference_samples, 1)):
        if value is not None and value < low:
            raise RewardlabError(f"{name} must be >= {low}; got {value}")
    if not temperature > 0:
        raise RewardlabError(f"--temperature must be > 0; got {temperature}")
    if reward_model is None and pipeline is None:
        raise RewardlabError("give a reward model (--reward-model) or a pipeline of rule terms (--pipeline)")
    if out_dir is not None:
        from rewardlab.local import check_output_dir

        check_output_dir(out_dir, "--out")
    dev = resolve_device(device)
    rows, columns = _read_prompts(prompts, prompt_column, dataset_config, dataset_split, num_prompts)
    gold_fn = load_gold(gold) if gold else None
    n_models = 0 if reward_model is None else 1
    spec = RewardSpec(pipeline, num_models=n_models) if pipeline is not None else None
    if spec is not None:
        spec.check_columns(list(columns))

    # 2. Models.
    pol_a, tok, folder_a = _load_policy(policy_a, "--policy-a", dev)
    pol_b, tok_b, folder_b = _load_policy(policy_b, "--policy-b", dev)
    named = [("--policy-a", tok), ("--policy-b", tok_b)]
    if reference is None or os.path.realpath(reference) == os.path.realpath(folder_b):
        ref, ref_name = pol_b, "B"
    elif os.path.realpath(reference) == os.path.realpath(folder_a):
        ref, ref_name = pol_a, "A"
    else:
        ref, tok_r, _ = _load_policy(reference, "--reference", dev)
        ref_name = reference
        named.append(("--reference", tok_r))
    _check_tokenizers(named)
    models = [] if reward_model is None else [RewardModel.from_pretrained(reward_model, semantics=semantics, device=dev,
                                                                          batch_size=batch_size)]
    if spec is None:
        spec = RewardSpec(principal_reading(models[0].semantics, models[0].num_heads), num_models=1)
    side = RewardSide(spec, models, semantics=semantics, what="--pipeline", num_references=num_reference_samples)

    # 3. Samples, with the same seed per prompt for A and B.
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # the tokenizer's EOS and each policy's generation-config end-of-turn ids, as PPO's stop_token: eos
    eos = GenerationConfig(stop_token="eos")
    stops = tuple(dict.fromkeys(stop_token_ids(eos, tok, pol_a) + stop_token_ids(eos, tok, pol_b)))
    pset = PromptSet.build(tok, rows, columns, max_prompt_length=max_prompt_length)
    rows, columns = pset.prompts, pset.columns
    n = len(rows)
    q, qm = pad_rows(pset.ids, pad_id, side="left")
    q, qm = q.to(dev), qm.to(dev)
    seeds = episode_seeds(seed, 0, 0, n)
    gen = dict(stop_ids=stops, pad_id=pad_id, response_length=response_length, temperature=temperature,
               batch_size=batch_size)
    rollouts = {}
    for key, policy in (("a", pol_a), ("b", pol_b)):
        r, m, finished = _sample(policy, q, qm, seeds, **gen)
        # 4. KL to the reference on this policy's own samples (0 when it is the reference).
        lp = _sequence_logprobs(policy, q, qm, r, m, temperature=temperature, batch_size=batch_size)
        ref_lp = lp if ref is policy else _sequence_logprobs(ref, q, qm, r, m, temperature=temperature,
                                                               batch_size=batch_size)
        rollouts[key] = Rollout(r, m, finished, lp - ref_lp)

    # 5. Scores: both policies in one batch; centred terms centre on K reference samples per prompt.
    qc, qmc = q.cpu(), qm.cpu()

    def samples(ro: Rollout) -> Samples:
        return Samples(rows, columns=columns, finished=ro.finished,
                       tokens=PolicyTokens(qc, qmc, ro.response_ids, ro.response_mask, tok))

    sa, sb = samples(rollouts["a"]), samples(rollouts["b"])
    raw = torch.cat([side.score(sa), side.score(sb)])  # (2N, C)
    if models and not allow_semantics_mismatch:
        models[0].check_declared_semantics(side.proxy(raw), declared_as="--semantics",
                                           override="--allow-semantics-mismatch")
    ref_scores = None
    if side.needs_references:
        k = num_reference_samples
        qk, qmk = q.repeat_interleave(k, 0), qm.repeat_interleave(k, 0)
        rr, rm_, rf = _sample(ref, qk, qmk, episode_seeds(seed, 1, 0, n * k), **gen)
        ref_samples = Samples([p for p in rows for _ in range(k)], finished=rf,
                              columns={c: [x for x in v for _ in range(k)] for c, v in columns.items()},
                              tokens=PolicyTokens(qk.cpu(), qmk.cpu(), rr, rm_, tok))
        ref_scores = side.reference_scores(ref_samples).view(n, k, -1)
        ref_scores = torch.cat([ref_scores, ref_scores])  # (2N, K, R)
    finished = torch.cat([rollouts["a"].finished, rollouts["b"].finished])
    lengths = torch.cat([rollouts["a"].response_mask.sum(1), rollouts["b"].response_mask.sum(1)])
    out = side.reward(raw, ref=ref_scores, finished=finished, lengths=lengths, update=True)
    scores = torch.where(out.scorable, out.scores.double(), torch.full_like(out.scores.double(), math.nan))
    heads = side.proxy(raw).double()

    # 6. Per-policy numbers, win rates, paired samples.
    texts = {"a": sa.texts()[1], "b": sb.texts()[1]}
    per: dict[str, dict[str, np.ndarray]] = {}
    for i, key in enumerate(("a", "b")):
        ro, part = rollouts[key], slice(i * n, (i + 1) * n)
        per[key] = {"score": scores[part].numpy(), "raw": heads[part].numpy(), "kl": ro.kl.numpy(),
                    "length": lengths[part].numpy(), "eos": finished[part].numpy(),
                    "gold": _gold_scores(gold_fn, gold, rows, texts[key]) if gold_fn else None}
    policies = {}
    for key, path, label in (("a", policy_a, labels[0]), ("b", policy_b, labels[1])):
        p = per[key]
        policies[key] = {
            "label": label, "path": str(path),
            "score": summary(p["score"]),
            "raw": {"mean_per_head": [float(x) for x in np.nanmean(p["raw"], 0)]} if p["raw"].shape[1] else None,
            "kl": summary(p["kl"]), "length": summary(p["length"]), "eos_rate": float(p["eos"].mean()),
            "gold": summary(p["gold"]) if p["gold"] is not None else None,
        }
    win, difference = {}, {}
    for field in ("score", "gold") if gold_fn else ("score",):
        win[field] = win_summary(per["a"][field], per["b"][field])
        mean, half, count = mean_ci(per["a"][field] - per["b"][field])
        difference[field] = {"mean": mean, "half": half, "n": count, "interval": "student-t-95"}

    def side_row(key: str, j: int) -> dict[str, Any]:
        p = per[key]
        return {"response": texts[key][j], "score": _num(p["score"][j]), "raw": [_num(x) for x in p["raw"][j]],
                "kl": _num(p["kl"][j]), "length": int(p["length"][j]), "eos": bool(p["eos"][j]),
                "gold": _num(p["gold"][j]) if p["gold"] is not None else None}

    pairs = [{"index": j, "prompt": rows[j], "a": side_row("a", j), "b": side_row("b", j)} for j in range(n)]
    results = {
        "settings": {
            "policy_a": str(policy_a), "policy_b": str(policy_b), "reference": str(reference or policy_b),
            "reference_is": ref_name, "reward_model": None if reward_model is None else str(reward_model),
            "pipeline": side.spec, "semantics": models[0].semantics if models else None, "gold": gold,
            "num_prompts": n, "response_length": response_length, "temperature": temperature, "seed": seed,
            "device": str(dev), "stop_token_ids": list(stops),
            "num_reference_samples": num_reference_samples if ref_scores is not None else 0,
            "prompts": str(prompts) if isinstance(prompts, (str, os.PathLike)) else "prompts=",
        },
        "policies": policies,
        "win_rate": win,
        "difference": difference,
        "pairs": pairs,
    }
    results = json.loads(json.dumps(results, default=_num))  # NaN → null, numpy → Python, as results.json holds it
    results = _nan_to_none(results)
    if out_dir is not None:
        from rewardlab.atomic import write_text
        from rewardlab.compare.report import write_report

        os.makedirs(out_dir, exist_ok=True)
        write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1, ensure_ascii=False))
        write_report(results, out_dir, show_pairs=show_pairs)
    return results


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON null) for NaN/inf; numpy scalars become Python numbers."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
