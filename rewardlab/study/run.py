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

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from rewardlab.study.tasks.base import Task, load_task


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One PPO run of the study."""

    group: str  # "1-head", "2-head", "ensemble", "stress", "ceiling"
    strategy: str  # label shown in the report
    spec: str  # reward pipeline spec ("gold" for the ceiling)
    seed: int  # PPO seed = proxy seed
    semantics: str = "bradley_terry"
    heads: int = 1  # proxy heads (ensemble: members)
    offsets: bool = False  # add per-prompt constants c(x) to the proxy (stress test)
    kl_coef: float | None = None  # None: the preset's

    @property
    def key(self) -> str:
        return f"{self.group}/{self.strategy}" + ("" if self.kl_coef is None else f"@β={self.kl_coef:g}")


@dataclass(frozen=True)
class Preset:
    """Sizes and the list of comparisons of one study run."""

    name: str
    seeds: tuple[int, ...]
    jobs: tuple[tuple[str, str, str, dict], ...]  # (group, strategy, spec, extra Job fields)
    kl_coef: float = 0.02
    beta_grid: tuple[float, ...] = ()
    beta_grid_strategies: tuple[str, ...] = ()
    n_pairs: int = 3000
    sft_steps: int = 500
    rm_epochs: float = 4.0
    rm_learning_rate: float = 1e-3
    ensemble_members: int = 3
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
    "default": Preset(
        name="default",
        seeds=(0, 1, 2),
        jobs=tuple(
            [j for j in _ONE_HEAD if j[1] in ("raw", "whiten", "running_norm+clip", "logsigmoid", "lsc", "par")]
            + [j for j in _TWO_HEAD if j[1] in ("head 0", "mean", "sum", "logodds (wrong)")]
            + [j for j in _STRESS if j[1] in ("logsigmoid + c(x)", "lsc + c(x)")]
            + _CEILING
        ),
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
    ),
}


def build_jobs(preset: Preset) -> list[Job]:
    """Every PPO run of a preset: each comparison × each seed, plus the β grid."""
    jobs = []
    for group, strategy, spec, extra in preset.jobs:
        for s in preset.seeds:
            jobs.append(Job(group=group, strategy=strategy, spec=spec, seed=s, **extra))
    for beta in preset.beta_grid:
        for group, strategy, spec, extra in preset.jobs:
            if group == "1-head" and strategy in preset.beta_grid_strategies and beta != preset.kl_coef:
                for s in preset.seeds:
                    jobs.append(Job(group="β grid", strategy=strategy, spec=spec, seed=s, kl_coef=beta, **extra))
    return jobs


# --------------------------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------------------------
def content_hash(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (and the package version)."""
    from rewardlab import __version__

    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached_dir(root: str, name: str, key: str, build: Callable[[str], None]) -> str:
    """`root/name-key`, built by `build(tmp_dir)` into a temp folder and renamed when complete."""
    final = os.path.join(root, f"{name}-{key}")
    if os.path.isdir(final):
        return final
    tmp = f"{final}.tmp-{os.getpid()}"
    if os.path.isdir(tmp):
        import shutil

        shutil.rmtree(tmp)
    os.makedirs(tmp)
    build(tmp)
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------------------------
# Stages 1–3
# --------------------------------------------------------------------------------------------
def stage_sft(task: Task, preset: Preset, cache: str) -> tuple[str, str]:
    from rewardlab.study.sft import SFTConfig, train_sft

    cfg = SFTConfig(steps=preset.sft_steps)
    key = content_hash("sft", task.describe(), asdict(cfg))

    def build(tmp: str) -> None:
        tok = task.build_tokenizer()
        train_sft(task, tok, cfg, seed=0).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _cached_dir(cache, "sft", key, build), key


def stage_preferences(task: Task, preset: Preset, cache: str, sft_dir: str, sft_key: str) -> tuple[str, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.study.preferences import sample_preferences, write_jsonl

    key = content_hash("prefs", sft_key, preset.n_pairs, preset.label_tau, preset.label_flip)

    def build(tmp: str) -> None:
        tok = AutoTokenizer.from_pretrained(sft_dir)
        policy = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()
        n_eval = max(50, preset.n_pairs // 8)
        rows = sample_preferences(task, policy, tok, n_pairs=preset.n_pairs + n_eval, seed=1,
                                  tau=preset.label_tau, flip=preset.label_flip)
        write_jsonl(rows[:-n_eval], os.path.join(tmp, "train.jsonl"))
        write_jsonl(rows[-n_eval:], os.path.join(tmp, "eval.jsonl"))

    return _cached_dir(cache, "prefs", key, build), key


def stage_proxy(preset: Preset, cache: str, sft_dir: str, prefs_dir: str, prefs_key: str, heads: int, seed: int) -> str:
    """A proxy reward model with `heads` BT heads (mean BT loss), trained with rewardlab's trainer."""
    from transformers import AutoTokenizer

    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
    from rewardlab.study.sft import SFTConfig
    from rewardlab.tiny import build_model, tiny_config

    sft = SFTConfig()
    key = content_hash("proxy", prefs_key, heads, seed, preset.rm_epochs, preset.rm_learning_rate, asdict(sft))

    def build(tmp: str) -> None:
        tok = AutoTokenizer.from_pretrained(sft_dir)
        config = tiny_config("gpt2", tok, hidden=sft.hidden, layers=sft.layers, heads=sft.heads, max_positions=32, num_labels=heads)
        model = build_model("sequence_classification", config, seed=1000 + seed)
        train_reward_model(
            RewardTrainingConfig(
                model="(in memory)", train_file=os.path.join(prefs_dir, "train.jsonl"),
                eval_file=os.path.join(prefs_dir, "eval.jsonl"), output_dir=os.path.join(tmp, "model"),
                num_heads=heads, per_device_train_batch_size=32, num_train_epochs=preset.rm_epochs,
                learning_rate=preset.rm_learning_rate, seed=seed, progress=False, logging_steps=50,
            ),
            model=model, tokenizer=tok,
        )

    return os.path.join(_cached_dir(cache, "proxy", key, build), "model")


# --------------------------------------------------------------------------------------------
# Reward models as PPO sees them in the study
# --------------------------------------------------------------------------------------------
class StackedRewardModel:
    """Several 1-head reward models read as one H-head Bradley-Terry model (an ensemble)."""

    semantics = "bradley_terry"

    def __init__(self, members: list[Any]) -> None:
        self.members = members
        self.num_heads = len(members)

    def score_policy_ids(self, input_ids, attention_mask, policy_tokenizer, prompt_lengths=None) -> torch.Tensor:
        return torch.cat([m.score_policy_ids(input_ids, attention_mask, policy_tokenizer, prompt_lengths=prompt_lengths)
                          for m in self.members], dim=1)


class OffsetRewardModel:
    """A proxy plus a per-prompt constant c(x): invisible to Bradley-Terry, so still a legitimate proxy."""

    def __init__(self, inner: Any, offset_of: Callable[[str], float]) -> None:
        self.inner, self.offset_of = inner, offset_of
        self.semantics, self.num_heads = inner.semantics, inner.num_heads

    def score_policy_ids(self, input_ids, attention_mask, policy_tokenizer, prompt_lengths=None) -> torch.Tensor:
        logits = self.inner.score_policy_ids(input_ids, attention_mask, policy_tokenizer, prompt_lengths=prompt_lengths)
        offsets = [self.offset_of(_prompt_text(ids, mask, n, policy_tokenizer))
                   for ids, mask, n in zip(input_ids, attention_mask, prompt_lengths)]
        return logits + torch.tensor(offsets, dtype=logits.dtype).unsqueeze(1)


def _prompt_text(ids: torch.Tensor, mask: torch.Tensor, n_prompt: torch.Tensor, tokenizer) -> str:
    real = ids[mask.bool()]
    return tokenizer.decode(real[: int(n_prompt)], skip_special_tokens=True)


def prompt_offset(prompt: str, scale: float) -> float:
    """c(x): a fixed pseudo-random constant per prompt, N(0, scale²)."""
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    return float(np.random.default_rng(seed).normal(0.0, scale))


# --------------------------------------------------------------------------------------------
# Stage 4: one PPO run (runs in a worker process)
# --------------------------------------------------------------------------------------------
def eval_schedule(updates: int, points: int) -> list[int]:
    """Geometric evaluation steps in [0, updates], dense at the start where the gold peak sits."""
    steps = {0, updates}
    steps.update(int(round(x)) for x in np.geomspace(1, max(updates, 1), max(points - 1, 1)))
    return sorted(s for s in steps if 0 <= s <= updates)


@torch.no_grad()
def evaluate_policy(policy, ref_policy, tokenizer, task: Task, prompts: list[str], proxy, *, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Sample one response per evaluation prompt (temperature 1) and measure gold, raw proxy and KL.

    KL(π‖π₀) is estimated by Σ_t log π(y_t) − log π₀(y_t) on y ~ π (unbiased; k1 summed over tokens).
    The proxy is the reward model's mean over heads (its BT reading), with no offsets.
    """
    from rewardlab.ops import logprobs_from_logits
    from rewardlab.ppo.rollout import episode_seeds, generate_responses, response_logits, truncate_after_stop

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    q, qm = enc["input_ids"], enc["attention_mask"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    raw = generate_responses(policy, q, qm, seeds=episode_seeds(seed, 1_000_000, 0, len(prompts)), pad_id=pad, stop_id=eos,
                             micro_batch=256, response_length=max_new_tokens, temperature=1.0, top_k=0, top_p=1.0)
    r, rm, finished = truncate_after_stop(raw, eos, pad)
    lp = logprobs_from_logits(response_logits(policy, q, qm, r, rm), r, 1.0)
    ref_lp = logprobs_from_logits(response_logits(ref_policy, q, qm, r, rm), r, 1.0)
    kl = ((lp - ref_lp) * rm).sum(1)
    responses = []
    for ids, m in zip(r, rm):
        row = ids[m.bool()].tolist()
        responses.append(tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True))
    gold = task.gold(prompts, responses, finished.tolist())
    out = {"gold": gold, "kl": kl.double().numpy(), "responses": responses, "finished": finished.tolist()}
    if proxy is not None:
        out["proxy"] = proxy.score_policy_ids(torch.cat([q, r], 1), torch.cat([qm, rm], 1), tokenizer,
                                              prompt_lengths=qm.sum(1)).mean(1).double().numpy()
    return out


def run_job(args: dict[str, Any]) -> dict[str, Any]:
    """Run one PPO job (in a worker process) and return its result record; writes metrics.jsonl and config."""
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer
    from rewardlab.reward.scoring import RewardModel

    job, preset = Job(**args["job"]), Preset(**{**args["preset"], "jobs": ()})
    task = load_task(args["task_ref"])
    if args.get("task_params"):
        task = replace(task, **args["task_params"])  # type: ignore[type-var]
    out_dir, sft_dir = args["out_dir"], args["sft_dir"]
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(sft_dir)

    def load_policy():
        return AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()

    members = [RewardModel.from_pretrained(p, semantics=job.semantics if job.heads == 1 or job.group != "ensemble" else "bradley_terry")
               for p in args["proxy_dirs"]]
    proxy = StackedRewardModel(members) if job.group == "ensemble" else members[0] if members else None
    reward_model = proxy
    if job.offsets:
        reward_model = OffsetRewardModel(proxy, lambda p: prompt_offset(p, preset.offset_scale))

    def gold_fn(prompts: list[str], responses: list[str], finished: list[bool] | None = None) -> list[float]:
        return task.gold(prompts, responses, finished if finished is not None else [True] * len(prompts)).tolist()

    n_prompts = preset.prompts_per_update
    cfg = PPOConfig.from_dict({
        "models": {"sft_model_path": sft_dir, "value_model_path": sft_dir},
        "generation": {"response_length": task.max_response_tokens, "temperature": 1.0, "stop_token": "eos"},
        "reward": {"reward_pipeline": "raw" if job.spec == "gold" else job.spec, "reward_semantics": job.semantics if job.spec != "gold" else None,
                   "num_reference_samples": preset.reference_samples},
        "kl": {"kl_coef": preset.kl_coef if job.kl_coef is None else job.kl_coef},
        "ppo": {"num_ppo_epochs": preset.ppo_epochs, "num_mini_batches": preset.mini_batches},
        "optim": {"learning_rate": preset.learning_rate, "lr_scheduler_type": "constant",
                  "per_device_train_batch_size": n_prompts // preset.mini_batches, "batch_size": n_prompts,
                  "local_rollout_forward_batch_size": 256},
        "run": {"output_dir": out_dir, "total_episodes": n_prompts * preset.updates, "seed": job.seed, "progress_bar": False},
    })
    train_prompts = task.sample_prompts(4096, np.random.default_rng(10_000 + job.seed))
    trainer = PPOTrainer(cfg, policy=load_policy(), ref_policy=load_policy(), tokenizer=tok,
                         reward_model=None if job.spec == "gold" else reward_model,
                         reward_fn=gold_fn if job.spec == "gold" else None, prompts=train_prompts)
    eval_prompts = args["eval_prompts"]
    curve, metrics_rows = [], []
    schedule = eval_schedule(trainer.sizes.num_updates, preset.n_eval_points)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    last_eval: dict[str, Any] = {}
    for update in range(trainer.sizes.num_updates + 1):
        if update in schedule:
            ev = evaluate_policy(policy, trainer.ref_policy, tok, task, eval_prompts, proxy,
                                 max_new_tokens=task.max_response_tokens, seed=job.seed)
            kl = float(ev["kl"].mean())
            curve.append({"update": update, "episodes": update * n_prompts, "kl": kl, "sqrt_kl": math.sqrt(max(kl, 0.0)),
                          "gold": float(ev["gold"].mean()),
                          "proxy": float(ev["proxy"].mean()) if "proxy" in ev else math.nan})
            last_eval = ev
        if update < trainer.sizes.num_updates:
            m = trainer.step()
            trainer.update += 1
            metrics_rows.append({"update": trainer.update, **m})
    _write_json_lines(os.path.join(out_dir, "metrics.jsonl"), metrics_rows)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"job": asdict(job), "ppo_config": cfg.to_dict()}, f, indent=1, default=str)
    return {
        "key": job.key, "job": asdict(job), "curve": curve,
        "final_gold_per_prompt": last_eval["gold"].tolist(), "final_kl_per_prompt": last_eval["kl"].tolist(),
        "final_responses": last_eval["responses"][:16], "seconds": time.perf_counter() - t_start,
        "time_split": {k: float(np.sum([r.get(f"time/{k}", 0.0) for r in metrics_rows])) for k in ("generate", "forward", "score", "update")},
    }


def _write_json_lines(path: str, rows: list[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")
    os.replace(tmp, path)




# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
DEFAULT_TASK = "rewardlab.study.tasks.digits:DigitSumTask"


def _proxy_needs(job: Job, preset: Preset) -> list[tuple[int, int]]:
    """(heads, proxy seed) of each proxy model a job reads."""
    if job.spec == "gold":
        return []
    if job.group == "ensemble":
        return [(1, 100 * job.seed + m) for m in range(preset.ensemble_members)]
    return [(job.heads, job.seed)]


class _InProcess:
    """The executor interface, run in this process (workers=1: no start-up cost)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def map(self, fn: Callable, items: Any) -> Any:
        return map(fn, items)

    def submit(self, fn: Callable, *args: Any) -> Any:
        from concurrent.futures import Future

        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut


def _pool(workers: int) -> Any:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if workers == 1:
        return _InProcess()
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_quiet_worker)


def _quiet_worker() -> None:
    import logging
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _proxy_job(args: tuple) -> tuple[tuple[int, int], str]:
    preset, cache, sft_dir, prefs_dir, prefs_key, heads, seed = args
    return (heads, seed), stage_proxy(preset, cache, sft_dir, prefs_dir, prefs_key, heads, seed)


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
    _quiet_worker()
    preset_obj = PRESETS[preset] if isinstance(preset, str) else preset
    task_ref = task if isinstance(task, str) else f"{type(task).__module__}:{type(task).__name__}"
    task_obj = load_task(task)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    cache = os.path.join(out_dir, "cache")
    os.makedirs(cache, exist_ok=True)
    jobs = build_jobs(preset_obj)
    preset_dict = {k: v for k, v in asdict(preset_obj).items() if k != "jobs"}

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
        with _pool(workers) as pool:
            for need, path in pool.map(_proxy_job, [(preset_obj, cache, sft_dir, prefs_dir, prefs_key, h, s) for h, s in needs]):
                proxies[need] = path
                bar.advance(stage)

        # 4. PPO runs, cached one by one.
        eval_prompts = task_obj.sample_prompts(preset_obj.n_eval_prompts, np.random.default_rng(12345))
        todo, results = [], []
        for job in jobs:
            proxy_dirs = [proxies[n] for n in _proxy_needs(job, preset_obj)]
            key = content_hash("run", asdict(job), preset_dict, task_obj.describe(), sft_key, proxy_dirs, eval_prompts)
            run_dir = os.path.join(out_dir, "runs", f"{job.group}-{job.strategy}-s{job.seed}".replace(" ", "_").replace("/", "_") + f"-{key[:8]}")
            result_path = os.path.join(run_dir, "result.json")
            if os.path.exists(result_path):
                with open(result_path, encoding="utf-8") as f:
                    results.append(json.load(f))
            else:
                todo.append(({"job": asdict(job), "preset": preset_dict, "task_ref": task_ref, "out_dir": run_dir,
                              "sft_dir": sft_dir, "proxy_dirs": proxy_dirs, "eval_prompts": eval_prompts}, result_path))
        stage = bar.add_task(f"PPO runs ({len(results)} cached)", total=len(jobs), completed=len(results))
        with _pool(workers) as pool:
            futures = {pool.submit(run_job, args): path for args, path in todo}
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                res = fut.result()
                path = futures[fut]
                tmp = f"{path}.tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(res, f)
                os.replace(tmp, path)
                results.append(res)
                bar.advance(stage)

    # 5. The SFT baseline on the evaluation prompts, then the analysis and the report.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.reward.scoring import RewardModel

    tok = AutoTokenizer.from_pretrained(sft_dir)
    sft = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()
    first_proxy = proxies.get((1, preset_obj.seeds[0]))
    sft_eval = evaluate_policy(sft, sft, tok, task_obj, eval_prompts,
                               RewardModel.from_pretrained(first_proxy, semantics="bradley_terry") if first_proxy else None,
                               max_new_tokens=task_obj.max_response_tokens, seed=0)
    order = {j.key: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: (order.get(r["key"], 1 << 30), r["job"]["seed"]))
    summary = summarise(
        results, preset=preset_obj, task=task_obj, eval_prompts=eval_prompts, sft_eval=sft_eval,
        proxies={f"{h}-head seed {s}": p for (h, s), p in proxies.items()}, prefs_dir=prefs_dir,
        wall_seconds=time.perf_counter() - t_start,
    )
    write_outputs(summary, out_dir)
    return summary
