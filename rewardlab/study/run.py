"""The study: gold vs proxy vs KL for each reward calculation, on a task with a known gold reward.

Stages (each cached under ``<out>/cache`` by a content hash of everything it depends on, so a
re-run or an interrupted run only redoes what is missing):

1. SFT policy π₀ trained from scratch on the task's demonstrations.
2. Preference pairs sampled from π₀, labelled by Bradley-Terry sampling from gold.
3. Proxy reward models trained on them (rewardlab's trainer): 1 head, 2 heads (mean BT loss), and
   for the full preset a k-member ensemble; one per proxy seed.
4. PPO runs, one per (strategy, seed): a strategy is a reward-pipeline spec on a proxy; the gold
   reward itself is the ceiling. Gold, raw proxy and KL(π‖π₀) are measured on a fixed set of
   evaluation prompts at a geometric schedule of updates (the gold peak comes early).
5. Analysis and report (`rewardlab.study.report`).

Example::

    rewardlab study                      # default preset, writes study_out/report.html
    rewardlab study --preset smoke --out /tmp/s
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError
from rewardlab.reward.readings import principal_reading
from rewardlab.study.runs import Job, content_hash, evaluate_policy, pool, proxy_side, quiet_worker, run_jobs
from rewardlab.study.tasks.base import (
    Task,
    TaskHandle,
    check_lengths,
    load_task,
    model_positions,
    task_identity,
)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """Sizes and the list of comparisons of one study run."""

    name: str
    seeds: tuple[int, ...]
    jobs: tuple[tuple[str, str, str, dict], ...]  # (group, strategy, spec, extra Job fields)
    kl_coef: float = 0.02
    beta_grid: tuple[float, ...] = ()  # β values (the preset's kl_coef among them) for beta_grid_strategies
    beta_grid_strategies: tuple[str, ...] = ()
    beta_grid_seeds: tuple[int, ...] | None = None  # None: `seeds`
    group_seeds: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (group, seeds) overriding `seeds` for a group
    n_pairs: int = 3000
    sft_steps: int = 500
    rm_epochs: float = 4.0
    rm_learning_rate: float = 1e-3
    ensemble_members: int = 3
    monitors: int = 2  # extra single-head proxies (other seeds) beside each single-head proxy, read by the alarm only
    updates: int = 48
    prompts_per_update: int = 64
    ppo_epochs: int = 2
    mini_batches: int = 2
    learning_rate: float = 5e-4
    n_eval_prompts: int = 256
    n_eval_points: int = 10
    label_tau: float = 0.1
    label_flip: float = 0.0
    offset_scale: float = 3.0
    reference_samples: int = 8


_ONE_HEAD = [
    ("1-head", "raw", "raw", {}),
    ("1-head", "whiten", "whiten", {}),
    ("1-head", "running_norm+clip", "running_norm|clip(lo=-5,hi=5)", {}),
    ("1-head", "clip", "clip(lo=-1,hi=1)", {}),
    ("1-head", "logsigmoid", "logsigmoid", {}),
    ("1-head", "sigmoid", "sigmoid", {}),
    ("1-head", "lsc", "lsc(q=0.5)", {}),
    ("1-head", "par", "par", {}),
]
_TWO_HEAD = [
    ("2-head", "head 0", "head(k=0)", {"heads": 2}),
    ("2-head", "head 1", "head(k=1)", {"heads": 2}),
    ("2-head", "mean", "mean", {"heads": 2}),
    ("2-head", "sum", "sum", {"heads": 2}),
    # Declared a classifier on purpose: the only way the pipeline lets l1 − l0 through for BT heads.
    ("2-head", "logodds (wrong)", "logodds(pos=1,neg=0)", {"heads": 2, "semantics": "classifier"}),
]
_STRESS = [
    ("stress", "logsigmoid + c(x)", "logsigmoid", {"offsets": True}),
    ("stress", "sigmoid + c(x)", "sigmoid", {"offsets": True}),
    ("stress", "lsc + c(x)", "lsc(q=0.5)", {"offsets": True}),
    ("stress", "par + c(x)", "par", {"offsets": True}),
]
_ENSEMBLE = [
    ("ensemble", "ensemble mean", "mean", {"heads": 3}),
    ("ensemble", "ensemble min", "min", {"heads": 3}),
    ("ensemble", "ensemble uwo", "uwo(lam=0.5)", {"heads": 3}),
]
_CEILING = [("ceiling", "gold (ceiling)", "gold", {})]

PRESETS: dict[str, Preset] = {
    # Sized for `make study` ≤ 10 min on 2 CPU cores: the 2-head group gets 2 seeds and the β grid 3,
    # so that the grid (16× in β) fits beside the 1-head, stress and ceiling groups at 4 seeds.
    "default": Preset(
        name="default",
        seeds=(0, 1, 2, 3),
        jobs=tuple(
            [j for j in _ONE_HEAD if j[1] in ("raw", "whiten", "running_norm+clip", "logsigmoid", "sigmoid", "lsc", "par")]
            + [j for j in _TWO_HEAD if j[1] in ("head 0", "mean", "sum", "logodds (wrong)")]
            + [j for j in _STRESS if j[1] in ("logsigmoid + c(x)", "sigmoid + c(x)", "lsc + c(x)")]
            + _CEILING
        ),
        beta_grid=(0.005, 0.02, 0.08),
        beta_grid_strategies=("raw", "whiten", "logsigmoid", "lsc", "par"),
        beta_grid_seeds=(0, 1, 2),
        group_seeds=(("2-head", (0, 1)),),
    ),
    "full": Preset(
        name="full",
        seeds=(0, 1, 2, 3, 4),
        jobs=tuple(_ONE_HEAD + _TWO_HEAD + _STRESS + _ENSEMBLE + _CEILING),
        beta_grid=(0.005, 0.02, 0.08),
        beta_grid_strategies=("raw", "whiten", "logsigmoid", "lsc", "par"),
        updates=96,
        n_pairs=6000,
    ),
    "smoke": Preset(
        name="smoke",
        seeds=(0,),
        jobs=(("1-head", "raw", "raw", {}), ("1-head", "lsc", "lsc(q=0.5)", {})),
        n_pairs=300,
        sft_steps=60,
        rm_epochs=1.0,
        updates=3,
        prompts_per_update=16,
        ppo_epochs=1,
        mini_batches=1,
        n_eval_prompts=32,
        n_eval_points=3,
        reference_samples=2,
        monitors=1,
    ),
}


MONITORED_GROUPS = ("1-head", "β grid", "stress")  # single-head proxies that get `Preset.monitors` beside them


def build_jobs(preset: Preset) -> list[Job]:
    """Every PPO run of a preset: each comparison × each seed of its group, plus the β grid.

    The grid's run at the preset's own β is the 1-head run itself (not repeated). Single-head proxy runs
    (`MONITORED_GROUPS`) carry ``preset.monitors`` extra proxies for the alarm's uncertainty signal.
    """
    def job(group: str, strategy: str, spec: str, seed: int, extra: dict, **more: Any) -> Job:
        monitors = {"monitors": preset.monitors} if group in MONITORED_GROUPS else {}
        return Job(group=group, strategy=strategy, spec=spec, seed=seed, **{**monitors, **extra, **more})

    jobs = []
    group_seeds = dict(preset.group_seeds)
    for group, strategy, spec, extra in preset.jobs:
        jobs += [job(group, strategy, spec, s, extra) for s in group_seeds.get(group, preset.seeds)]
    grid_seeds = preset.seeds if preset.beta_grid_seeds is None else preset.beta_grid_seeds
    for beta in preset.beta_grid:
        for group, strategy, spec, extra in preset.jobs:
            if group == "1-head" and strategy in preset.beta_grid_strategies and beta != preset.kl_coef:
                jobs += [job("β grid", strategy, spec, s, extra, kl_coef=beta) for s in grid_seeds]
    return jobs


# --------------------------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------------------------
def _cached_dir(root: str, name: str, key: str, build: Callable[[str], None]) -> str:
    """`root/name-key`, built by `build(tmp_dir)` into a temp folder and renamed when complete."""
    final = os.path.join(root, f"{name}-{key}")
    if os.path.isdir(final):
        return final
    from rewardlab.atomic import atomic_dir

    with atomic_dir(final) as tmp:
        build(tmp)
    return final


# --------------------------------------------------------------------------------------------
# Stages 1–3
# --------------------------------------------------------------------------------------------
def stage_sft(task: Task, preset: Preset, cache: str) -> tuple[str, str]:
    from rewardlab.study.sft import SFTConfig, train_sft

    cfg = SFTConfig(steps=preset.sft_steps)
    key = content_hash("sft", task_identity(task), asdict(cfg))

    def build(tmp: str) -> None:
        tok = task.build_tokenizer()
        tok.padding_side = "left"  # the study pads prompts on the left itself; the saved tokenizer says so
        train_sft(task, tok, cfg, seed=0).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _cached_dir(cache, "sft", key, build), key


def stage_preferences(task: Task, preset: Preset, cache: str, sft_dir: str, sft_key: str) -> tuple[str, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.atomic import write_jsonl
    from rewardlab.study.preferences import sample_preferences

    key = content_hash("prefs", sft_key, task_identity(task), preset.n_pairs, preset.label_tau, preset.label_flip)

    def build(tmp: str) -> None:
        tok = AutoTokenizer.from_pretrained(sft_dir)
        policy = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()
        n_eval = max(50, preset.n_pairs // 8)
        sampled = preset.n_pairs + n_eval
        rows = sample_preferences(task, policy, tok, n_pairs=sampled, seed=1,
                                  tau=preset.label_tau, flip=preset.label_flip)
        # Identical pairs were dropped: the eval split keeps its size, training gets what is left.
        n_eval = min(n_eval, len(rows) // 2)
        if n_eval < 1:
            raise RewardlabError(
                f"task {task.name!r}: only {len(rows)} of {sampled} sampled preference pairs had two different "
                "responses; the SFT policy is (nearly) deterministic — give demonstrations more variety")
        write_jsonl(os.path.join(tmp, "train.jsonl"), rows[:-n_eval], default=float)
        write_jsonl(os.path.join(tmp, "eval.jsonl"), rows[-n_eval:], default=float)
        counts = {"sampled": sampled, "identical_dropped": sampled - len(rows), "train": len(rows) - n_eval, "eval": n_eval}
        write_text(os.path.join(tmp, "counts.json"), json.dumps(counts))

    return _cached_dir(cache, "prefs", key, build), key


def stage_proxy(task: Task, preset: Preset, cache: str, sft_dir: str, prefs_dir: str, prefs_key: str, heads: int, seed: int) -> str:
    """A proxy reward model with `heads` BT heads (mean BT loss), trained with rewardlab's trainer.

    Sized from the task like the policy (`model_positions`), so a long task is neither truncated nor broken.
    """
    from transformers import AutoTokenizer

    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
    from rewardlab.study.sft import SFTConfig
    from rewardlab.tiny import build_model, tiny_config

    sft = SFTConfig()
    positions = model_positions(task)
    key = content_hash("proxy", prefs_key, heads, seed, preset.rm_epochs, preset.rm_learning_rate, asdict(sft), positions)

    def build(tmp: str) -> None:
        tok = AutoTokenizer.from_pretrained(sft_dir)
        config = tiny_config("gpt2", tok, hidden=sft.hidden, layers=sft.layers, heads=sft.heads, max_positions=positions,
                             num_labels=heads)
        model = build_model("sequence_classification", config, seed=1000 + seed)
        train_reward_model(
            RewardTrainingConfig(
                model="(in memory)", train_file=os.path.join(prefs_dir, "train.jsonl"),
                eval_file=os.path.join(prefs_dir, "eval.jsonl"), output_dir=os.path.join(tmp, "model"),
                num_heads=heads, per_device_train_batch_size=32, num_train_epochs=preset.rm_epochs, max_length=positions,
                learning_rate=preset.rm_learning_rate, seed=seed, progress=False, logging_steps=50,
            ),
            model=model, tokenizer=tok,
        )

    return os.path.join(_cached_dir(cache, "proxy", key, build), "model")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
DEFAULT_TASK = "rewardlab.study.tasks.digits:DigitSumTask"


MONITOR_SEEDS = 1000  # monitor m of seed s is the single-head proxy of seed 1000·m + s (no other job's proxy)


def _proxy_needs(job: Job, preset: Preset) -> list[tuple[int, int]]:
    """(heads, proxy seed) of each proxy model a job reads: the optimised one first, then its monitors."""
    if job.spec == "gold":
        return []
    if job.group == "ensemble":
        return [(1, 100 * job.seed + m) for m in range(preset.ensemble_members)]
    return [(job.heads, job.seed)] + [(1, MONITOR_SEEDS * m + job.seed) for m in range(1, job.monitors + 1)]


def _proxy_name(heads: int, seed: int) -> str:
    """How the report names a proxy: ``1-head seed 2``, or ``1-head seed 2, monitor 1``."""
    if seed >= MONITOR_SEEDS and heads == 1:
        return f"1-head seed {seed % MONITOR_SEEDS}, monitor {seed // MONITOR_SEEDS}"
    return f"{heads}-head seed {seed}"


def _proxy_job(args: tuple) -> tuple[tuple[int, int], str]:
    handle, preset, cache, sft_dir, prefs_dir, prefs_key, heads, seed = args
    return (heads, seed), stage_proxy(handle.load(), preset, cache, sft_dir, prefs_dir, prefs_key, heads, seed)


def run_study(
    preset: str | Preset = "default",
    out_dir: str = "study_out",
    *,
    task: str | Task = DEFAULT_TASK,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume from cache) a whole study and write results.json, the plots and the report.

    Returns the results dict (also written to ``<out_dir>/results.json``).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rewardlab.study.summary import summarise, write_outputs

    t_start = time.perf_counter()
    quiet_worker()
    preset_obj = PRESETS[preset] if isinstance(preset, str) else preset
    task_obj = load_task(task)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    cache = os.path.join(out_dir, "cache")
    os.makedirs(cache, exist_ok=True)
    jobs = build_jobs(preset_obj)

    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, disable=not progress, transient=False) as bar:
        # 1–2. SFT policy and preferences (single process; seconds).
        stage = bar.add_task("SFT policy + preferences", total=2)
        sft_dir, sft_key = stage_sft(task_obj, preset_obj, cache)
        bar.advance(stage)
        prefs_dir, prefs_key = stage_preferences(task_obj, preset_obj, cache, sft_dir, sft_key)
        bar.advance(stage)

        # 3. Proxy reward models, in parallel.
        needs = sorted({n for j in jobs for n in _proxy_needs(j, preset_obj)})
        proxies: dict[tuple[int, int], str] = {}
        stage = bar.add_task("proxy reward models", total=len(needs))
        with pool(workers) as ex:
            handle = TaskHandle.of(task_obj)
            for need, path in ex.map(_proxy_job, [(handle, preset_obj, cache, sft_dir, prefs_dir, prefs_key, h, s) for h, s in needs]):
                proxies[need] = path
                bar.advance(stage)

        # 4. PPO runs, cached one by one.
        eval_prompts = task_obj.sample_prompts(preset_obj.n_eval_prompts, np.random.default_rng(12345))
        check_lengths(task_obj, task_obj.build_tokenizer(), eval_prompts)
        results = run_jobs(
            jobs, preset=preset_obj, task=task_obj, sft_dir=sft_dir,
            proxy_dirs=lambda job: [proxies[n] for n in _proxy_needs(job, preset_obj)], eval_prompts=eval_prompts,
            out_dir=out_dir, workers=workers, key_parts=[sft_key], bar=bar,
        )

    # 5. The SFT baseline on the evaluation prompts, then the analysis and the report.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.reward.scoring import RewardModel

    tok = AutoTokenizer.from_pretrained(sft_dir)
    sft = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()
    first_proxy = proxies.get((1, preset_obj.seeds[0]))
    proxy = proxy_side([RewardModel.from_pretrained(first_proxy, semantics="bradley_terry")]) if first_proxy else None
    sft_eval = evaluate_policy(sft, sft, tok, task_obj, eval_prompts, proxy, max_new_tokens=task_obj.max_response_tokens,
                               seed=0)
    summary = summarise(
        results, preset=preset_obj, task=task_obj, eval_prompts=eval_prompts, sft_eval=sft_eval,
        proxies={_proxy_name(h, s): p for (h, s), p in proxies.items()}, prefs_dir=prefs_dir,
        wall_seconds=time.perf_counter() - t_start,
    )
    write_outputs(summary, out_dir)
    return summary


USER_STRATEGIES = ("raw", "whiten", "running_norm_clip", "logsigmoid", "lsc", "par")


def run_user_study(
    policy: str,
    reward_model: str,
    prompts: str,
    out_dir: str = "study_out",
    *,
    gold: str | None = None,
    semantics: str | None = None,
    strategies: Sequence[str] = USER_STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    updates: int = 48,
    prompts_per_update: int = 64,
    response_length: int = 64,
    kl_coef: float = 0.05,
    learning_rate: float = 1e-5,
    reference_samples: int = 4,
    workers: int | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """The strategy comparison on a user's own policy, reward model and prompts.

    With no gold function the report shows proxy reward, KL and diagnostics per strategy; with
    ``gold="module:function"`` (``fn(prompts, responses) -> scores``) gold columns are filled too.
    ``device``: ``cpu`` (default), ``cuda`` or ``auto`` (the GPU when one is visible), for every model.
    """
    from rich.progress import Progress

    from rewardlab.errors import RewardlabError
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.strategies import strategy_spec
    from rewardlab.study.summary import summarise, write_outputs
    from rewardlab.study.tasks.user import UserTask

    t_start = time.perf_counter()
    quiet_worker()
    from rewardlab.devices import resolve_device

    device = resolve_device(device, "--device").type  # a device this machine lacks: refused before any work
    rm = RewardModel.from_pretrained(reward_model, semantics=semantics, device=device)
    if rm.num_heads > 1 and rm.semantics is None:
        raise RewardlabError(
            f"{reward_model} has {rm.num_heads} outputs and no recorded head semantics; pass --semantics bradley_terry "
            "or --semantics classifier (`rewardlab inspect` infers which)"
        )
    reading = "" if rm.num_heads == 1 else principal_reading(rm.semantics, rm.num_heads)
    task = UserTask(policy=policy, prompts_file=prompts, gold_ref=gold, max_response_tokens=response_length)
    jobs = [Job(group="user", strategy=name, spec=strategy_spec(name, reading), seed=s, semantics=rm.semantics or "bradley_terry",
                heads=rm.num_heads) for name in strategies for s in seeds]
    preset = Preset(name="user", seeds=tuple(seeds), jobs=(), kl_coef=kl_coef, updates=updates,
                    prompts_per_update=prompts_per_update, learning_rate=learning_rate, reference_samples=reference_samples)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    eval_prompts = task.sample_prompts(preset.n_eval_prompts, np.random.default_rng(12345))
    with Progress(disable=not progress) as bar:
        results = run_jobs(
            jobs, preset=preset, task=task, sft_dir=policy,
            proxy_dirs=lambda job: [reward_model], eval_prompts=eval_prompts, out_dir=out_dir, workers=workers,
            key_parts=[semantics], bar=bar, rm_semantics=semantics, device=device,
        )
    from transformers import AutoModelForCausalLM

    tok = task.build_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(policy, use_safetensors=True).eval().to(device)
    sft_eval = evaluate_policy(base, base, tok, task, eval_prompts, proxy_side([rm]), max_new_tokens=response_length,
                               seed=0)
    summary = summarise(results, preset=preset, task=task, eval_prompts=eval_prompts, sft_eval=sft_eval,
                        proxies={}, prefs_dir=None, wall_seconds=time.perf_counter() - t_start)
    write_outputs(summary, out_dir)
    return summary
