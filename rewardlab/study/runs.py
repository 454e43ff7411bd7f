"""The study's PPO runs: one job per (strategy, seed), run in worker processes and cached.

A job trains PPO with one reward pipeline against a proxy reward model and evaluates the policy
at a geometric schedule of updates: gold (from the task), the raw proxy (its principled reading)
and KL(π‖π_SFT), on fixed evaluation prompts. The study's own loop calls `PPOTrainer.step` so
that it can evaluate between updates; the trainer's maths is untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rewardlab.atomic import write_jsonl, write_text
from rewardlab.study.tasks.base import Task, TaskHandle, task_identity


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
    monitors: int = 0  # extra single-head proxies stacked beside the proxy: the alarm reads them, the reward does not

    @property
    def key(self) -> str:
        return f"{self.group}/{self.strategy}" + ("" if self.kl_coef is None else f"@β={self.kl_coef:g}")


# --------------------------------------------------------------------------------------------
# Reward models as PPO sees them in the study
# --------------------------------------------------------------------------------------------
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
    The proxy is a `RewardSide` reading the proxy model(s) by their principled reading (`proxy_side`),
    with no offsets.
    Prompts are left-padded and responses decoded by `rewardlab.study.text`, as in labelling.
    """
    from rewardlab.ops import logprobs_from_logits
    from rewardlab.ppo.rollout import episode_seeds, generate_responses, response_logits, truncate_after_stop
    from rewardlab.ppo.samples import SAMPLES_STREAM
    from rewardlab.study.text import decode_responses, encode_prompts

    device = next(policy.parameters()).device
    q, qm = (x.to(device) for x in encode_prompts(tokenizer, prompts))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    raw = generate_responses(policy, q, qm, seeds=episode_seeds(seed, SAMPLES_STREAM, 0, len(prompts)), pad_id=pad, stop_ids=eos,
                             micro_batch=256, response_length=max_new_tokens, temperature=1.0, top_k=0, top_p=1.0)
    r, rm, finished = truncate_after_stop(raw, eos, pad)
    lp = logprobs_from_logits(response_logits(policy, q, qm, r, rm), r, 1.0)
    ref_lp = logprobs_from_logits(response_logits(ref_policy, q, qm, r, rm), r, 1.0)
    kl = ((lp - ref_lp) * rm).sum(1)
    responses, _ = decode_responses(tokenizer, r.cpu())
    gold = task.gold(prompts, responses, finished.tolist())
    out = {"gold": gold, "kl": kl.double().cpu().numpy(), "responses": responses, "finished": finished.tolist()}
    if proxy is not None:
        from rewardlab.reward.side import PolicyTokens, Samples

        samples = Samples(prompts, tokens=PolicyTokens(q, qm, r, rm, tokenizer))
        out["proxy"] = proxy(samples, update=False).scores.double().cpu().numpy()
    return out


def proxy_side(members: Sequence[Any]) -> Any:
    """The proxy as evaluation reads it: the reward side over the member(s), through the principled
    reading of their semantics (`rewardlab.reward.readings.principal_reading`: the mean of BT heads,
    a classifier's log-odds or log-probability of its last class)."""
    from rewardlab.reward.readings import principal_reading
    from rewardlab.reward.side import RewardSide

    semantics = members[0].semantics
    spec = principal_reading(semantics, sum(m.num_heads for m in members))
    return RewardSide(spec, members, semantics=semantics, what="the proxy reading")


def monitored_spec(spec: str) -> str:
    """``spec`` on the first column of a proxy stacked with its monitors: ``head(k=0)`` then the same chain.

    The reward is the proxy's alone (equal up to float rounding: a batch statistic over a column slice may sum in
    another order); the monitors' columns feed only the alarm.
    """
    return "head(k=0)" if spec == "raw" else f"head(k=0)|{spec}"


def run_job(args: dict[str, Any]) -> dict[str, Any]:
    """Run one PPO job (in a worker process) and return its result record; writes metrics.jsonl and config."""
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.ppo.alarm import first_trigger, scaled_signals
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer
    from rewardlab.reward.scoring import RewardModel

    job, preset = Job(**args["job"]), args["preset"]
    task = args["task"].load()  # the caller's task object, parameters included
    out_dir, sft_dir = args["out_dir"], args["sft_dir"]
    # A job runs only when its result is not cached, so anything in its folder is a killed attempt's: start clean
    # (the trainer refuses a folder holding another run's files).
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(sft_dir)

    def load_policy():
        return AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()

    # The proxy is loaded with its own semantics (metadata, or what the user declared) for evaluation;
    # the PPO pipeline reads it with the job's semantics (the 2-head logodds job declares a classifier).
    device = args.get("device", "cpu")
    members = [RewardModel.from_pretrained(p, semantics=args.get("rm_semantics"), device=device)
               for p in args["proxy_dirs"]]
    # `proxy_dirs` are the job's models: an ensemble's members, read side by side, or the proxy then its monitors,
    # stacked: the pipeline reads the proxy's column only (`monitored_spec`), the alarm's head signals every column.
    optimised = members[:1] if job.monitors else members
    proxy = proxy_side(optimised) if optimised else None
    reward_model = members
    spec = monitored_spec(job.spec) if job.monitors else job.spec
    if job.offsets:
        reward_model = [OffsetRewardModel(m, lambda p: prompt_offset(p, preset.offset_scale)) for m in members]

    def gold_fn(prompts: list[str], responses: list[str], finished: list[bool]) -> list[float]:
        return task.gold(prompts, responses, finished).tolist()

    n_prompts = preset.prompts_per_update
    cfg = PPOConfig.from_dict({
        "models": {"sft_model_path": sft_dir, "value_model_path": sft_dir},
        "generation": {"response_length": task.max_response_tokens, "temperature": 1.0, "stop_token": "eos"},
        "reward": {"reward_pipeline": "raw" if job.spec == "gold" else spec, "reward_semantics": job.semantics if job.spec != "gold" else None,
                   "num_reference_samples": preset.reference_samples,
                   "allow_semantics_mismatch": True},  # some groups read the heads wrongly on purpose
        "kl": {"kl_coef": preset.kl_coef if job.kl_coef is None else job.kl_coef},
        "ppo": {"num_ppo_epochs": preset.ppo_epochs, "num_mini_batches": preset.mini_batches},
        "optim": {"learning_rate": preset.learning_rate, "lr_scheduler_type": "constant",
                  "per_device_train_batch_size": n_prompts // preset.mini_batches, "batch_size": n_prompts,
                  "local_rollout_forward_batch_size": 256},
        # The synthetic study's runs are small and many, in parallel worker processes, on the CPU; a study of
        # your own models may ask for the GPU (rewardlab study --device cuda).
        "run": {"output_dir": out_dir, "total_episodes": n_prompts * preset.updates, "seed": job.seed, "progress_bar": False,
                "device": device},
    })
    train_prompts = task.sample_prompts(4096, np.random.default_rng(10_000 + job.seed))
    if hasattr(task, "max_prompt_tokens"):
        from rewardlab.study.tasks.base import check_lengths

        check_lengths(task, tok, train_prompts)
    trainer = PPOTrainer(cfg, policy=load_policy(), ref_policy=load_policy(), tokenizer=tok,
                         reward_model=None if job.spec == "gold" or not reward_model else reward_model,
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
    write_jsonl(os.path.join(out_dir, "metrics.jsonl"), metrics_rows, default=float)
    write_text(os.path.join(out_dir, "config.json"),
               json.dumps({"job": asdict(job), "ppo_config": cfg.to_dict()}, indent=1, default=str))
    return {
        "key": job.key, "job": asdict(job), "curve": curve,
        "alarm_stop": first_trigger(metrics_rows),  # updates done before the first rollout that raised the alarm
        "alarm_scaled": scaled_signals(metrics_rows, cfg.alarm),  # per signal, per update: over its threshold (replays)
        "final_gold_per_prompt": last_eval["gold"].tolist(), "final_kl_per_prompt": last_eval["kl"].tolist(),
        "final_responses": last_eval["responses"][:16], "seconds": time.perf_counter() - t_start,
        "time_split": {k: float(np.sum([r.get(f"time/{k}", 0.0) for r in metrics_rows])) for k in ("generate", "forward", "score", "update")},
    }


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------
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


def pool(workers: int) -> Any:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if workers == 1:
        return _InProcess()
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=quiet_worker)


def quiet_worker() -> None:
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


def run_jobs(
    jobs: Sequence[Job],
    *,
    preset: Any,
    task: Task,
    sft_dir: str,
    proxy_dirs: Callable[[Job], list[str]],
    eval_prompts: list[str],
    out_dir: str,
    workers: int,
    key_parts: Sequence[Any],
    bar: Any,
    rm_semantics: str | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Run every job not cached yet under ``<out_dir>/runs`` and return all results in job order.

    ``device``: where each job's models run (``cpu``, or ``cuda`` for a study of your own models).

    Each worker gets the task object itself (`TaskHandle`); a run's cache key includes the task's
    identity (class, parameters, source hash).
    """
    from concurrent.futures import as_completed

    preset_key = {k: v for k, v in asdict(preset).items() if k != "jobs"}
    handle, identity = TaskHandle.of(task), task_identity(task)
    todo, results = [], {}
    for i, job in enumerate(jobs):
        dirs = proxy_dirs(job)
        key = content_hash("run", asdict(job), preset_key, identity, list(key_parts), dirs, eval_prompts)
        slug = f"{job.group}-{job.strategy}-s{job.seed}".replace(" ", "_").replace("/", "_")
        run_dir = os.path.join(out_dir, "runs", f"{slug}-{key[:8]}")
        result_path = os.path.join(run_dir, "result.json")
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                results[i] = json.load(f)
        else:
            todo.append((i, {"job": asdict(job), "preset": preset, "task": handle,
                             "out_dir": run_dir, "sft_dir": sft_dir, "proxy_dirs": dirs, "eval_prompts": eval_prompts,
                             "rm_semantics": rm_semantics, "device": device},
                         result_path))
    stage = bar.add_task(f"PPO runs ({len(results)} cached)", total=len(jobs), completed=len(results))
    with pool(workers) as ex:
        futures = {ex.submit(run_job, args): (i, path) for i, args, path in todo}
        for fut in as_completed(futures):
            i, path = futures[fut]
            results[i] = fut.result()
            write_text(path, json.dumps(results[i]))
            bar.advance(stage)
    return [results[i] for i in range(len(jobs))]


def content_hash(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts and of rewardlab's own source code.

    Hashing the code means a cached stage is reused only when the code that would recompute it
    is unchanged.
    """
    text = json.dumps([_code_hash(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CODE_HASH: list[str] = []


def _code_hash() -> str:
    """sha256 over the package's .py files (computed once per process)."""
    if not _CODE_HASH:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        h = hashlib.sha256()
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
        _CODE_HASH.append(h.hexdigest())
    return _CODE_HASH[0]
