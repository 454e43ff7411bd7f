"""The PPO trainer: one numbered loop over updates (see DESIGN.md, "One PPO iteration").

Each update: 1 prompts → 2 rollout (generate) → 3 forward passes (π_old, π_ref, V_old) →
4 score (reward model or rule) → 5 reward pipeline → 6 shaping (score at the last token, EOS
penalty, −β·KL) → 7 advantages → 8 PPO epochs × minibatches → 9 control (β, metrics, checkpoint).
The maths lives in `rewardlab.ops`; the reward calculation in `rewardlab.reward`; this file only
orchestrates. Runs on one process (CPU or GPU, bf16 on GPU) or under ``accelerate launch`` (DDP, or
FSDP2 through `rewardlab.ppo.sharding`).

Example::

    from rewardlab.ppo import PPOTrainer, load_config
    trainer = PPOTrainer(load_config("examples/ppo_tiny.yaml"))
    history = trainer.train()          # one metrics dict per update; also in <output_dir>/metrics.jsonl
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError, RunInterrupted
from rewardlab.ops import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k3,
    last_true_index,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    overlong_penalty,
    pad_rows,
    policy_loss,
    value_loss,
)
from rewardlab.ppo.alarm import SIGNALS, AlarmSignals, OveroptimisationAlarm
from rewardlab.ppo.checkpoint import (
    PREFIX,
    STATE_FILE,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    save_final_models,
    write_run_files,
)
from rewardlab.ppo.config import AlarmConfig, PPOConfig
from rewardlab.ppo.engine import RolloutEngine, check_backend, make_engine
from rewardlab.ppo.models import (
    SlicedLMHead,
    build_models,
    checked_reward_fn,
    load_tokenizer,
    need_path,
    reward_side,
)
from rewardlab.ppo.rollout import (
    episode_seeds,
    load_prompts,
    load_reward_fn,
    response_logits,
    tokenize_prompts,
    truncate_after_stop,
)
from rewardlab.ppo.sharding import ShardedModel, configure_sharding, prepare_sharded
from rewardlab.reward.baselines import ReferenceRewards, prompt_key
from rewardlab.runfolder import PPO_RESUMABLE, RunPlan, check_output_dir, interrupts, plan_run, resume_config
from rewardlab.tracking import MetricsLogger, ProgressBar
from rewardlab.types import Rollout, ScoredRollout


class PPOTrainer:
    """PPO against a reward model (or a rule-based reward) with an explicit reward pipeline.

    Args:
        config: a validated `PPOConfig`.
        policy, ref_policy, critic, tokenizer: in-memory models; loaded from the config's paths when None.
        reward_model: a `rewardlab.reward.scoring.RewardModel` (or any object with its ``score_policy_ids``,
            ``num_heads`` and ``semantics``); loaded from ``reward_model_path`` when None.
        reward_fn: rule-based reward ``fn(prompts, responses) -> scores`` (replaces the reward model).
        prompts: prompt texts or chat conversations; loaded from ``data.dataset`` when None.
        resume: continue the run in ``run.output_dir`` from its newest checkpoint (True: one must exist;
            ``"auto"``: start fresh when there is none). The checkpoint's config is the run's config:
            only `rewardlab.runfolder.PPO_RESUMABLE` fields may differ (docs/runs.md).

    The output folder is checked (and the resume rule applied) here, before any model loads.
    """

    def __init__(
        self, config: PPOConfig, *, policy=None, ref_policy=None, critic=None, tokenizer=None, reward_model=None,
        reward_fn: Callable | None = None, prompts: Sequence[str] | Sequence[list[dict]] | None = None,
        resume: bool | str = False,
    ) -> None:
        self.cfg = config
        mixed = config.run.mixed_precision
        # Several processes without CUDA: accelerate only forms a CPU (gloo) group when told cpu=True.
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            cpu=multi_cpu, mixed_precision=("bf16" if torch.cuda.is_available() else "no") if mixed == "auto" else mixed)
        self.run_folder = self._plan_run(resume)  # may replace self.cfg by the checkpoint's config
        cfg = self.cfg
        self.sizes = cfg.sizes(self.accelerator.num_processes)  # raises before any model loads
        sharded = configure_sharding(self.accelerator, cfg)  # FSDP2 (rewardlab.ppo.sharding); on CPU too
        check_backend(cfg.generation.backend, sharded)  # vllm absent, or with FSDP: refused before any model loads
        self.use_critic = cfg.ppo.advantage_estimator == "gae"  # the only estimator that reads values
        self.kl_estimator = KL_ESTIMATORS[cfg.kl.kl_estimator]
        self.advantage_estimator = ADVANTAGE_ESTIMATORS[cfg.ppo.advantage_estimator]
        set_seed(cfg.run.seed)
        if reward_fn is None and cfg.reward.reward_fn is not None:
            reward_fn = load_reward_fn(cfg.reward.reward_fn)
        m = cfg.models
        if tokenizer is None or policy is None:
            need_path(m.sft_model_path, "models.sft_model_path")
        device = self.accelerator.device
        # Reward side first: a pipeline that does not fit the reward model fails before the policy loads.
        self.reward_fn = None if reward_fn is None else checked_reward_fn(reward_fn, cfg.reward.reward_fn)
        self.reward_model, self.pipeline, self._term_heads = reward_side(cfg, reward_model, reward_fn, device)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(m.sft_model_path, m.trust_remote_code)
        self.model, self.ref_policy = build_models(cfg, policy=policy, ref_policy=ref_policy, critic=critic,
                                                   reward_model=self.reward_model, use_critic=self.use_critic,
                                                   device=device)
        self.reference_rewards = ReferenceRewards()
        self.prompt_ids = tokenize_prompts(self.tokenizer, prompts if prompts is not None else load_prompts(cfg.data), cfg.data.max_prompt_length)
        max_positions = getattr(self.model.policy.config.get_text_config(), "max_position_embeddings", None)
        longest = max(len(p) for p in self.prompt_ids)
        if max_positions is not None and longest + cfg.generation.response_length > max_positions:
            raise RewardlabError(
                f"the longest prompt ({longest} tokens) + response_length={cfg.generation.response_length} exceeds the "
                f"policy's {max_positions} positions; set data.max_prompt_length ≤ {max_positions - cfg.generation.response_length} "
                "or a smaller response_length")
        g = cfg.generation
        self.stop_id = g.stop_token_id if g.stop_token_id is not None else (
            self.tokenizer.eos_token_id if g.stop_token == "eos" else None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

        o = cfg.optim
        steps_per_update = cfg.ppo.num_ppo_epochs * cfg.ppo.num_mini_batches
        num_steps = self.sizes.num_updates * steps_per_update
        # Two parameter groups: the policy at learning_rate, the critic (or value head) at critic_learning_rate.
        self._policy_params, critic_params = self.model.parameter_groups()
        groups = [{"params": self._policy_params, "lr": o.learning_rate}]
        if critic_params:
            groups.append({"params": critic_params, "lr": o.critic_learning_rate or o.learning_rate})
        # The fused kernel (one op for all parameters) is what transformers' Trainer picks too; ~8x faster steps on CPU.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                                      eps=o.adam_epsilon, weight_decay=o.weight_decay, fused=fused)
        from transformers import get_scheduler

        scheduler = get_scheduler(o.lr_scheduler_type, optimizer, num_warmup_steps=o.warmup_steps * steps_per_update,  # warmup_steps counts updates, as in TRL
                                  num_training_steps=num_steps)
        # The scheduler is deliberately not prepared: accelerate would step it once per process per
        # optimiser step, tying the LR schedule to the number of processes.
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self._shards = None  # under FSDP: gathers full state dicts for checkpoints and outputs
        if sharded:
            prepare_sharded(self.model)
            self._shards = ShardedModel(self.model, self.optimizer)
        # Trainable embeddings take sparse gradients in the forwards with gradients (`_sparse_embedding_grads`);
        # FSDP's DTensor parameters take dense ones only.
        self._embeddings = [] if sharded else [m for m in self.model.modules()
                                               if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad]
        # and a sliced LM head tied to one of them adds its gradient into that weight's .grad in place.
        tied = {id(m.weight) for m in self._embeddings}
        self._tied_heads = [m for m in self.model.modules() if isinstance(m, SlicedLMHead) and id(m.weight) in tied]
        self.scheduler = scheduler
        k = cfg.kl
        self.kl_controller = (AdaptiveKLController(k.kl_coef, k.target_kl, k.kl_horizon) if k.adaptive_kl
                              else FixedKLController(k.kl_coef))
        self.alarm = OveroptimisationAlarm(cfg.alarm)
        self.stopped_early = False  # set by step() when alarm.early_stop stops the run
        self.update = 0
        # The rollout engine starts at the first rollout (after the run folder is set up) and must be synced
        # with the policy whenever it holds other weights: at the start, after a resume, after reference samples.
        self.engine: RolloutEngine | None = None
        self._engine_holds_policy = False
        self._sync_seconds = 0.0  # weight-sync time of the current update (time/weight_sync)
        self._kept: tuple | None = None  # (rows, logits, values) of the first update micro-batch, graph kept

    def _plan_run(self, resume: bool | str) -> RunPlan:
        """Output-folder checks and the resume rule (`rewardlab.runfolder`), before any model loads."""
        cfg = self.cfg
        m, out = cfg.models, cfg.run.output_dir
        inputs = {"models.sft_model_path": m.sft_model_path, "models.ref_model_path": m.ref_model_path,
                  "models.value_model_path": m.value_model_path, "models.reward_model_path": m.reward_model_path,
                  **{f"models.reward_model_paths[{i}]": p for i, p in enumerate(m.reward_model_paths)},
                  "data.dataset": cfg.data.dataset if cfg.data.dataset and os.path.exists(cfg.data.dataset) else None}
        check_output_dir(out, inputs, name="run.output_dir")
        if resume not in (False, True, "auto"):
            raise RewardlabError(f"resume={resume!r} is invalid; use True, False or 'auto'")
        plan = plan_run(out, command="ppo", resume=resume, overwrite=cfg.run.overwrite_output_dir, prefix=PREFIX,
                        state_file=STATE_FILE, legacy_config="config", what="run.output_dir")
        if plan.checkpoint is not None and plan.saved_config is not None:
            saved = {"alarm": dataclasses.asdict(AlarmConfig()), **plan.saved_config}  # checkpoints from before the alarm
            merged, plan.changes = resume_config(saved, cfg.to_dict(), PPO_RESUMABLE, command="ppo",
                                                 output_dir=out)
            self.cfg = PPOConfig.from_dict(merged)
        return plan

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict[str, float]]:
        """Run all updates (from the planned checkpoint when resuming); returns the metrics per update.

        Ctrl-C, SIGTERM or SIGHUP stop the run with `RunInterrupted` (checkpoints intact; the message
        names the last one). Under ``accelerate launch`` with several processes a finished run ends
        with the process group destroyed (``accelerator.end_training()``).
        """
        cfg, acc, sizes = self.cfg, self.accelerator, self.sizes
        out_dir = cfg.run.output_dir
        if acc.is_main_process:
            self.run_folder.start(cfg.to_dict())
        acc.wait_for_everyone()
        resuming = self.run_folder.checkpoint is not None
        if resuming:
            self.update = load_checkpoint(self.run_folder.checkpoint, self._state())["update"]
        self._write_run_files()
        logger = MetricsLogger(out_dir, cfg.run.report_to, enabled=acc.is_main_process,
                               resume_step=self.update if resuming else None, run_config=cfg.to_dict())
        history: list[dict[str, float]] = []
        try:
            with interrupts(), ProgressBar(acc.is_main_process and cfg.run.progress_bar, sizes.num_updates,
                                           self.update) as advance:
                while self.update < sizes.num_updates:
                    metrics = self.step()
                    history.append(metrics)
                    if self.stopped_early:  # no optimiser update on this rollout: keep the policy that made it
                        logger.log(metrics, step=self.update + 1)
                        self._report_early_stop(metrics)
                        self.save_checkpoint()
                        break
                    self.update += 1
                    if self.update % cfg.run.logging_steps == 0 or self.update == sizes.num_updates:
                        logger.log(metrics, step=self.update)
                    if (cfg.run.save_steps and self.update % cfg.run.save_steps == 0) or self.update == sizes.num_updates:
                        self.save_checkpoint()
                    advance(metrics)
            logger.close()
            with interrupts():
                self.save_outputs()
            self.close()
            # A finished multi-process run leaves no process group behind: Gloo's worker threads can abort
            # the process at interpreter exit otherwise (SIGABRT after every file is written; pytorch#190489).
            # Only on success (destroying it while another rank is in a collective can hang), and not in one
            # process, where the group is vLLM's own (its engine, started again by a later run, needs it).
            if acc.num_processes > 1:
                acc.wait_for_everyone()
                acc.end_training()
        except KeyboardInterrupt:
            logger.close()
            at = min(self.update + 1, sizes.num_updates)
            raise RunInterrupted(self.run_folder.interrupted("update", at)) from None
        return history

    def step(self) -> dict[str, float]:
        """One PPO update: rollout, scoring, shaping, advantages, optimisation. Returns its metrics."""
        cfg, acc, g = self.cfg, self.accelerator, self.cfg.generation
        unwrapped = acc.unwrap_model(self.model)
        t_start = time.perf_counter()

        # 1. Prompts: this process's share of the update's global batch, K samples per prompt.
        query_ids, query_mask, first_episode = self._prompt_batch(self.update)
        keys = [prompt_key(ids[mask.bool()]) for ids, mask in zip(query_ids, query_mask, strict=True)]

        # 2. Rollout: the engine (hf or vllm) samples responses from the current policy; truncate after the stop token.
        self._sync_engine(unwrapped.policy)
        t0 = time.perf_counter()
        seeds = episode_seeds(cfg.run.seed, self.update, first_episode, query_ids.shape[0])
        raw = self.engine.generate(query_ids, query_mask, seeds)
        engine_logprobs = self.engine.last_logprobs  # vLLM's view of the sampled tokens: a check, never π_old
        response_ids, response_mask, contains_stop = truncate_after_stop(raw, self.stop_id, self.pad_id)
        t_generate = time.perf_counter() - t0

        # 3. Forward passes: log π_old, log π_ref and V_old of every response token.
        t0 = time.perf_counter()
        logprobs, ref_logprobs, values, entropy = self._rollout_forwards(query_ids, query_mask, response_ids, response_mask)
        rollout = Rollout(query_ids, query_mask, response_ids, response_mask, contains_stop,
                          logprobs, ref_logprobs, values, keys)
        t_forward = time.perf_counter() - t0

        # 4. Score: raw reward-model outputs (B, H); reference rewards for centred pipelines.
        t0 = time.perf_counter()
        raw_logits = self._score(query_ids, query_mask, response_ids, response_mask, contains_stop)
        ref = self._reference_rewards(query_ids, query_mask, keys) if self.pipeline.needs_references else None
        t_score = time.perf_counter() - t0

        # 5. Reward pipeline on the global batch (batch statistics and running state agree on every process).
        all_logits = acc.gather(raw_logits.to(acc.device)).float().cpu()
        global_logits = all_logits
        global_ref = None if ref is None else acc.gather(ref.to(acc.device)).float().cpu()
        if self._term_heads is not None:  # a combined pipeline: each term gets its reward model's columns
            global_logits = list(all_logits.split(self._term_heads, dim=-1))
            global_ref = None if global_ref is None else list(global_ref.split(self._term_heads, dim=-1))
        out = self.pipeline(global_logits, ref=global_ref)
        b = query_ids.shape[0]
        scores = out.scores[acc.process_index * b:(acc.process_index + 1) * b].to(acc.device)
        if cfg.reward.missing_eos_penalty is not None:
            scores = scores - cfg.reward.missing_eos_penalty * (~contains_stop).float()
        if cfg.reward.overlong_buffer_len is not None:  # DAPO's soft overlong penalty
            scores = scores + overlong_penalty(response_mask.sum(1), g.response_length, cfg.reward.overlong_buffer_len,
                                               cfg.reward.overlong_penalty_factor)

        # 6. Shaping: −β·KL_t on every token (k1 or k3), plus the score at the last real token.
        mask = response_mask.float()
        k1, k3 = kl_k1(logprobs, ref_logprobs) * mask, kl_k3(logprobs, ref_logprobs) * mask  # both logged
        kl = {kl_k1: k1, kl_k3: k3}.get(self.kl_estimator)  # the configured estimator
        if kl is None:
            kl = self.kl_estimator(logprobs, ref_logprobs) * mask
        beta = self.kl_controller.value
        rewards = -beta * kl if cfg.kl.kl_penalty == "reward" else torch.zeros_like(kl)
        non_score_rewards = rewards.sum(1)
        last = last_true_index(response_mask).clamp(min=0)
        rewards[torch.arange(b, device=rewards.device), last] += scores
        if cfg.ppo.whiten_rewards:
            rewards = self._global_whiten(rewards, mask, shift_mean=False)

        # 6b. Over-optimisation alarm on this rollout's proxy-side signals, before optimising on it.
        alarm = self.alarm.update(self._alarm_signals(all_logits, out.diagnostics, k1, response_mask))
        self.stopped_early = cfg.alarm.early_stop and alarm["alarm/triggered"] >= 1.0

        # 7. Advantages: GAE with the critic, or a per-prompt baseline (RLOO / group) broadcast over tokens.
        p = cfg.ppo
        advantages, returns = self.advantage_estimator(rewards, values, mask, gamma=p.gamma, lam=p.lam,
                                                       group_size=p.num_samples_per_prompt)
        if cfg.ppo.whiten_advantages:
            advantages = self._global_whiten(advantages, mask, shift_mean=True)
        scored = ScoredRollout(raw_logits, scores, k1, k3, non_score_rewards, rewards, advantages, returns)

        # 8. PPO epochs × minibatches × micro-batches; one optimiser step per minibatch (none when stopping).
        t0 = time.perf_counter()
        if self.stopped_early:
            self._kept = None  # the kept graph of the first micro-batch is not used
        stats = {} if self.stopped_early else self._optimise(rollout, scored)
        t_update = time.perf_counter() - t0

        # 8b. Weight sync: the engine gets the updated weights (LoRA: merged); vLLM's logprobs vs π_old.
        if not self.stopped_early:  # the optimiser moved the policy
            self._engine_holds_policy = False
        self._sync_engine(unwrapped.policy)
        engine_metrics = {"time/weight_sync": self._sync_seconds}
        self._sync_seconds = 0.0
        if engine_logprobs is not None:
            gap = masked_mean((engine_logprobs.to(logprobs.device) - logprobs).abs(), mask)
            engine_metrics["rollout/logprob_gap"] = float(acc.reduce(gap.float().to(acc.device), reduction="mean"))

        # 9. Control: adapt β on the global mean sequence KL (the configured estimator); collect metrics.
        seq_kl = acc.gather(kl.sum(1)).float()
        if not self.stopped_early:
            self.kl_controller.update(seq_kl.mean().item(), self.sizes.batch_size)
        metrics = self._metrics(rollout, scored, stats, entropy, beta, out.diagnostics)
        metrics.update(alarm)
        if self.stopped_early:
            metrics["alarm/stopped"] = 1.0
        metrics.update({"time/generate": t_generate, "time/forward": t_forward, "time/score": t_score,
                        "time/update": t_update, "time/total": time.perf_counter() - t_start, **engine_metrics})
        return metrics

    # ------------------------------------------------------------------ steps, grouped
    def _sync_engine(self, policy) -> None:
        """Start the rollout engine on first use; load the policy's current weights into it unless it holds them."""
        if self.engine is None:
            longest = max(len(p) for p in self.prompt_ids)
            self.engine = make_engine(self.cfg, policy, pad_id=self.pad_id, stop_id=self.stop_id,
                                      max_model_len=longest + self.cfg.generation.response_length)
        if not self._engine_holds_policy:
            self._sync_seconds += self.engine.sync(policy)
            self._engine_holds_policy = True

    def _alarm_signals(self, logits: torch.Tensor, diagnostics: dict[str, float], k1: torch.Tensor,
                       response_mask: torch.Tensor) -> AlarmSignals:
        """The alarm's inputs, global over processes: raw reward outputs, sequence KL (k1), length, diagnostics."""
        acc = self.accelerator
        x = logits.double()
        seq = acc.gather(torch.stack([k1.sum(1), response_mask.sum(1).to(k1.dtype)], 1).to(acc.device)).double()
        saturated = [v for k, v in diagnostics.items() if k.endswith("saturated_frac")]
        corr = [v for k, v in diagnostics.items() if k.endswith("head_corr")]
        return AlarmSignals(proxy=x.mean().item(), kl=seq[:, 0].mean().item(), reward_std=x.std(correction=0).item(),
                            length=seq[:, 1].mean().item(), saturated_frac=max(saturated, default=0.0),
                            head_corr=min(corr) if corr else None)

    def _report_early_stop(self, metrics: dict[str, float]) -> None:
        """Say why the run stopped and record it in ``alarm_stop.json`` (main process)."""
        if not self.accelerator.is_main_process:
            return
        signals = {k: v for k, v in metrics.items() if k.startswith("alarm/")}
        record = {"stopped_before_update": self.update + 1, "policy_after_updates": self.update, **signals}
        write_text(os.path.join(self.cfg.run.output_dir, "alarm_stop.json"), json.dumps(record, indent=1) + "\n")
        top = max(SIGNALS, key=lambda k: signals[f"alarm/{k}"] / (getattr(self.cfg.alarm, f"{k}_threshold") or float("inf")))
        print(f"rewardlab: over-optimisation alarm on the rollout of update {self.update + 1} (score "
              f"{signals['alarm/score']:.2f}, largest signal {top}); stopped before optimising on it and "
              f"kept the policy after {self.update} updates (alarm.early_stop; details in alarm_stop.json)",
              file=sys.stderr)

    def _prompt_batch(self, update: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Left-padded prompt ids of this process, each repeated K times; and its first global episode index.

        The order is a seeded permutation per pass over the data, indexed by update, so any update
        can be rebuilt from its number alone (resume) and process layouts share one global order.
        """
        s, k, n = self.sizes, self.cfg.ppo.num_samples_per_prompt, len(self.prompt_ids)
        global_prompts = s.batch_size // k
        first = update * global_prompts + self.accelerator.process_index * s.local_prompts_per_update
        rows, perms = [], {}
        for j in range(first, first + s.local_prompts_per_update):
            epoch, pos = divmod(j, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.run.seed + epoch))
            rows.extend([self.prompt_ids[int(perms[epoch][pos])]] * k)
        ids, mask = pad_rows(rows, self.pad_id, side="left")
        device = self.accelerator.device
        return ids.to(device), mask.to(device), first * k

    def _rollout_forwards(self, q, qm, r, rm):
        """log π_old, log π_ref, V_old and the entropy per token, in micro-batches, padding zeroed.

        The rows of the first update micro-batch (epoch 0) go through the training model *with*
        gradients, and that graph is kept for their loss: no optimiser step happens in between, so
        π_θ = π_old there and a second forward would only repeat this one. TRL took π_old from
        `generate`'s scores instead; this keeps sampling and training logprobs from one forward form.
        """
        acc, temp = self.accelerator, self.cfg.generation.temperature
        unwrapped = acc.unwrap_model(self.model)
        first = self._epoch_order(0)[: self.cfg.optim.per_device_train_batch_size]
        # The first micro-batch is not the minibatch's last (sync) one when there is accumulation.
        sync_ctx = acc.no_sync(self.model) if self.sizes.gradient_accumulation_steps > 1 else contextlib.nullcontext()
        with sync_ctx, acc.autocast(), _sparse_embedding_grads(self._embeddings, self._tied_heads):
            logits, values = self.model(q[first], qm[first], r[first], rm[first])
        self._kept = (first, logits, values)
        with torch.no_grad():
            rest = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
            rest[first] = False
            rows = [first] + [c for c in rest.nonzero().flatten().split(self.cfg.optim.local_rollout_forward_batch_size) if len(c)]
            out = [torch.zeros(r.shape, device=q.device) for _ in range(4)]
            for i, idx in enumerate(rows):
                sl = (q[idx], qm[idx], r[idx], rm[idx])
                with acc.autocast():
                    lg, v = (logits.detach(), None if values is None else values.detach()) if i == 0 else unwrapped(*sl)
                    ref_logits = response_logits(self.ref_policy, *sl)
                logprobs, entropy = logprobs_and_entropy(lg, sl[2], temp)
                parts = (logprobs, logprobs_from_logits(ref_logits, sl[2], temp),
                         torch.zeros(sl[2].shape, device=q.device) if v is None else v.float(), entropy)
                for dst, part in zip(out, parts, strict=True):
                    dst[idx] = part.float()
        m = rm.float()
        return tuple(x * m for x in out)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's row order in PPO epoch `epoch` of the current update (seeded; rebuildable)."""
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + self.update * 1009 + epoch)
        return torch.randperm(self.sizes.local_batch_size, generator=gen).to(self.accelerator.device)

    def _score(self, q, qm, r, rm, finished) -> torch.Tensor:
        """Raw reward outputs (B, H): reward model at the last real token, or the rule-based reward.

        A rule-based reward sees decoded texts (special tokens removed); if it takes a ``finished``
        argument it also gets whether each response ended with the stop token.
        """
        if self.reward_fn is not None:
            prompts = [self.tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(q, qm, strict=True)]
            responses = [self.tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(r, rm, strict=True)]
            extra = {"finished": finished.tolist()} if "finished" in inspect.signature(self.reward_fn).parameters else {}
            out = torch.as_tensor(self.reward_fn(prompts, responses, **extra), dtype=torch.float32)
            return out.view(len(prompts), -1)
        return self.reward_model.score_policy_ids(torch.cat([q, r], 1), torch.cat([qm, rm], 1), self.tokenizer,
                                                  prompt_lengths=qm.sum(1))

    def _reference_rewards(self, q, qm, keys: list[str]) -> torch.Tensor:
        """(B, K, H) raw rewards of K reference-policy samples per prompt, computed once per prompt and cached."""
        missing = self.reference_rewards.missing(keys)
        if missing:
            kref = self.cfg.reward.num_reference_samples
            first_row = {key: keys.index(key) for key in missing}
            rows = [first_row[key] for key in missing for _ in range(kref)]
            rq, rqm = q[rows], qm[rows]
            # Seeds depend on the prompt only, so every process and every resume draws the same references.
            seeds = [episode_seeds(self.cfg.run.seed, -1, int(key[:12], 16) * kref + j, 1)[0]
                     for key in missing for j in range(kref)]
            # The same engine on the frozen reference weights; step 8b gives it the policy back.
            self._sync_seconds += self.engine.sync(self.ref_policy)
            self._engine_holds_policy = False
            raw = self.engine.generate(rq, rqm, seeds)
            rr, rrm, stop = truncate_after_stop(raw, self.stop_id, self.pad_id)
            self.reference_rewards.add([key for key in missing for _ in range(kref)], self._score(rq, rqm, rr, rrm, stop))
        return self.reference_rewards.gather(keys)

    def _global_whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool) -> torch.Tensor:
        """`masked_whiten` with statistics over the batch of all processes."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return masked_whiten(x, mask, shift_mean=shift_mean)
        gx, gm = acc.gather(x), acc.gather(mask)
        mean, var = masked_mean(gx, gm), masked_var(gx, gm)
        out = (x - mean) * torch.rsqrt(var + 1e-8)
        return (out if shift_mean else out + mean) * mask

    def _optimise(self, ro: Rollout, sc: ScoredRollout) -> dict[str, list[float]]:
        cfg, acc, s = self.cfg, self.accelerator, self.sizes
        p, temp = cfg.ppo, cfg.generation.temperature
        micro, accum = cfg.optim.per_device_train_batch_size, s.gradient_accumulation_steps
        stats: dict[str, list[float]] = {}
        self.model.train(False)  # eval mode: dropout off (see __init__)
        embeddings = [m.weight for m in self._embeddings]
        for epoch in range(p.num_ppo_epochs):
            order = self._epoch_order(epoch)
            for mb_start in range(0, s.local_batch_size, s.local_mini_batch_size):
                mb = order[mb_start:mb_start + s.local_mini_batch_size]
                for w in embeddings:  # the sparse embedding gradients accumulate into a dense buffer kept across steps
                    if w.grad is None:
                        w.grad = torch.zeros_like(w)
                for i, start in enumerate(range(0, len(mb), micro)):
                    idx = mb[start:start + micro]
                    sync = i == accum - 1
                    with acc.no_sync(self.model) if not sync else contextlib.nullcontext():
                        with _sparse_embedding_grads(self._embeddings, self._tied_heads):
                            loss, mstats = self._micro_loss(ro, sc, idx, temp)
                        acc.backward(loss / accum)
                    for k, v in mstats.items():
                        stats.setdefault(k, []).append(v)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm or float("inf"))
                stats.setdefault("ppo/grad_norm", []).append(float(grad_norm))
                if self.update < p.critic_warmup_updates:  # critic warm-up: the policy does not move
                    for prm in self._policy_params:
                        prm.grad = None
                self.optimizer.step()
                self.scheduler.step()
                kept = [(w, w.grad) for w in embeddings if w.grad is not None]
                self.optimizer.zero_grad()
                for w, grad in kept:
                    w.grad = grad.zero_()
        return stats

    def _micro_loss(self, ro: Rollout, sc: ScoredRollout, idx: torch.Tensor, temp: float):
        cfg = self.cfg
        mask = ro.response_mask[idx].float()
        kept, self._kept = self._kept, None
        if kept is not None and torch.equal(kept[0], idx):
            logits, values = kept[1], kept[2]  # the rollout's forward of these rows, with its graph
        else:
            with self.accelerator.autocast():
                logits, values = self.model(ro.query_ids[idx], ro.query_mask[idx], ro.response_ids[idx], ro.response_mask[idx])
        if cfg.ppo.entropy_coef > 0:
            logprobs, entropy_t = logprobs_and_entropy(logits, ro.response_ids[idx], temp)
        else:
            logprobs = logprobs_from_logits(logits, ro.response_ids[idx], temp)
        pg_loss, pg = policy_loss(logprobs, ro.logprobs[idx], sc.advantages[idx], mask, cfg.ppo.cliprange,
                                  dual_clip=cfg.ppo.dual_clip)
        loss = pg_loss
        out = {"ppo/loss/policy": pg_loss.item(), "ppo/policy/clipfrac": pg["clipfrac"].item(),
               "ppo/policy/approxkl": pg["approxkl"].item(), "ppo/val/ratio": pg["ratio"].item()}
        if "dual_clipfrac" in pg:
            out["ppo/policy/dual_clipfrac"] = pg["dual_clipfrac"].item()
        if values is not None:
            vf_loss, vf = value_loss(values, ro.values[idx], sc.returns[idx], mask, cfg.ppo.cliprange_value)
            loss = loss + cfg.ppo.vf_coef * vf_loss
            out.update({"ppo/loss/value": vf_loss.item(), "ppo/val/clipfrac": vf["clipfrac"].item()})
        if cfg.ppo.entropy_coef > 0:
            entropy = masked_mean(entropy_t, mask)
            loss = loss - cfg.ppo.entropy_coef * entropy
            out["ppo/policy/entropy"] = entropy.item()
        if cfg.kl.kl_penalty == "loss":
            kl_loss = masked_mean(self.kl_estimator(logprobs, ro.ref_logprobs[idx]), mask)
            loss = loss + self.kl_controller.value * kl_loss
            out["ppo/loss/kl"] = kl_loss.item()
        out["ppo/loss/total"] = loss.item()
        return loss, out

    def _metrics(self, ro: Rollout, sc: ScoredRollout, stats, entropy, beta, diagnostics) -> dict[str, float]:
        acc = self.accelerator
        mask = ro.response_mask.float()
        ev = 1.0 - masked_var(sc.returns - ro.values, mask) / masked_var(sc.returns, mask).clamp(min=1e-8)
        local = {
            "objective/kl": sc.kl_k1.sum(1).mean(), "objective/kl_k3": sc.kl_k3.sum(1).mean(),
            "objective/entropy": masked_mean(entropy, mask), "objective/scores": sc.scores.mean(),
            "objective/non_score_reward": sc.non_score_rewards.mean(),
            "objective/rlhf_reward": (sc.scores + sc.non_score_rewards).mean(),
            "objective/response_length": mask.sum(1).mean(), "objective/stop_frac": ro.contains_stop.float().mean(),
            "ppo/val/explained_variance": ev if self.use_critic else torch.tensor(0.0),
            "ppo/val/mean": masked_mean(ro.values, mask), "ppo/returns/mean": masked_mean(sc.returns, mask),
            "ppo/advantages/mean": masked_mean(sc.advantages, mask),
        }
        local.update({k: torch.tensor(sum(v) / len(v)) for k, v in stats.items()})
        keys = sorted(local)
        reduced = acc.reduce(torch.stack([local[k].float().to(acc.device) for k in keys]), reduction="mean")
        metrics = {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}
        if not self.use_critic:
            metrics.pop("ppo/val/explained_variance")
        metrics.update(diagnostics)
        if self.cfg.optim.critic_learning_rate is not None and len(self.scheduler.get_last_lr()) > 1:
            metrics["ppo/lr_critic"] = self.scheduler.get_last_lr()[1]
        if self.cfg.ppo.critic_warmup_updates:
            metrics["ppo/critic_warmup"] = float(self.update < self.cfg.ppo.critic_warmup_updates)
        metrics.update({"objective/kl_coef": beta, "ppo/lr": self.scheduler.get_last_lr()[0],
                        "episodes": float(self.update + 1) * self.sizes.batch_size})
        return metrics

    def close(self) -> None:
        """Shut the rollout engine down (a vLLM engine holds memory until then); `train` calls it at the end."""
        if self.engine is not None:
            self.engine.close()
            self.engine, self._engine_holds_policy = None, False

    # ------------------------------------------------------------------ persistence
    def _state(self) -> TrainingState:
        unwrapped = self.accelerator.unwrap_model(self.model)
        critic = unwrapped.critic if unwrapped.critic is not None else unwrapped.value_head
        return TrainingState(unwrapped.policy, critic, self.optimizer, self.scheduler,
                             self.kl_controller, self.pipeline, self.reference_rewards, self.alarm, self._shards)

    def save_checkpoint(self) -> None:
        """Checkpoint the current update (main process writes; everyone waits)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        full = self._shards.full_state() if self._shards is not None else None  # collective under FSDP
        if acc.is_main_process:
            save_checkpoint(self.cfg.run.output_dir, self.update, self._state(),
                            {"episodes": self.update * self.sizes.batch_size, "world_size": acc.num_processes,
                             "sharded": self._shards is not None, "config": self.cfg.to_dict()},
                            run_id=self.run_folder.run_id, full=full)
            self.run_folder.output_complete()  # a replaced run's files go once this run has a checkpoint
        acc.wait_for_everyone()

    def _write_run_files(self) -> None:
        """Resolved config, pipeline spec and library versions, written at the start of every run."""
        if self.accelerator.is_main_process:
            write_run_files(self.cfg.run.output_dir, self.cfg, self.pipeline.spec)

    def save_outputs(self) -> None:
        """The trained policy (and critic) as HF ``save_pretrained`` folders, with the tokenizer."""
        acc = self.accelerator
        acc.wait_for_everyone()
        full = self._shards.full_state(optimizer=False) if self._shards is not None else None  # collective
        if acc.is_main_process:
            save_final_models(self.cfg.run.output_dir, acc.unwrap_model(self.model), self.tokenizer, full=full)
            self.run_folder.output_complete()


@contextlib.contextmanager
def _sparse_embedding_grads(embeddings: list[torch.nn.Embedding], tied_heads: list[SlicedLMHead] = ()):
    """The (trainable) ``embeddings`` return sparse gradients (one row per token) inside the block.

    A dense embedding gradient is a fresh (V, D) tensor of zeros with the B·T token rows added, and a
    tied LM head's (V, D) gradient is then added to it: at the GPT-2-small size two 154 MB
    allocations, a fill and an add per backward. Sparse, the rows are added into the dense ``.grad``
    buffer that `_optimise` keeps across steps, and the ``tied_heads`` (`SlicedLMHead`s sharing an
    embedding's weight) add their gradient into the same buffer in place (autograd would sum dense
    and sparse out of place). Same sums, possibly in another order (float rounding only). Under
    FSDP the trainer passes none.
    """
    layers = [m for m in embeddings if not m.sparse]
    for m in layers:
        m.sparse = True
    for h in tied_heads:
        h.accumulate_grad = True
    try:
        yield
    finally:
        for m in layers:
            m.sparse = False
        for h in tied_heads:
            h.accumulate_grad = False
