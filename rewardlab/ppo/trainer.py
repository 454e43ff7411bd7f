"""The PPO trainer: one numbered loop over updates (see DESIGN.md, "One PPO iteration").

Each update: 1 prompts → 2 rollout (generate) → 3 forward passes (π_old, π_ref, V_old) →
4–5 reward (the reward side: reward models and rule terms, pipeline, penalties) → 6 shaping (score
at the last token, −β·KL) → 7 advantages → 8 PPO epochs × minibatches → 9 control (β, metrics,
checkpoint). The maths lives in `rewardlab.ops`; the reward calculation in `rewardlab.reward`
(`RewardSide`); this file only orchestrates. Runs on one process (CPU or GPU, bf16 on GPU) or under ``accelerate launch`` (DDP, or
FSDP2 through `rewardlab.ppo.sharding`).

Example::

    from rewardlab.ppo import PPOTrainer, load_config
    trainer = PPOTrainer(load_config("examples/ppo_tiny.yaml"))
    history = trainer.train()          # one metrics dict per update; also in <output_dir>/metrics.jsonl
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from accelerate.utils import set_seed

from rewardlab.devices import make_accelerator, resolve_device
from rewardlab.errors import RewardlabError, RunInterrupted
from rewardlab.ops import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k3,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    pad_rows,
    shape_rewards,
)
from rewardlab.ppo.alarm import OveroptimisationAlarm, alarm_signals, report_early_stop
from rewardlab.ppo.api import trl_models
from rewardlab.ppo.checkpoint import (
    PREFIX,
    STATE_FILE,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    save_final_models,
    write_run_files,
)
from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.engine import RolloutEngine, check_backend, make_engine
from rewardlab.ppo.evaluation import eval_metrics, evaluates_after
from rewardlab.ppo.memory import accelerator_mixed_precision, model_precisions
from rewardlab.ppo.models import build_models, build_reward_side, critic_from_model, load_tokenizer, need_path
from rewardlab.ppo.prompts import PromptSet, eval_prompt_rows, load_prompt_rows, prompt_rows
from rewardlab.ppo.rollout import episode_seeds, response_logits, stop_token_ids, truncate_after_stop
from rewardlab.ppo.samples import (
    SAMPLES_STREAM,
    SamplesFile,
    ScoredSamples,
    print_samples,
    proxy_reading,
    resolve_sample_steps,
    sample_prompt_indices,
    sample_rows,
    table_rows,
)
from rewardlab.ppo.sharding import ShardedModel, configure_sharding, prepare_sharded
from rewardlab.ppo.update import PPOUpdate, build_optimizer
from rewardlab.reward.baselines import ReferenceRewards, prompt_key
from rewardlab.reward.scoring import use_eos_as_pad
from rewardlab.reward.side import PolicyTokens, RewardOutput, Samples
from rewardlab.runfolder import PPO_RESUMABLE, RunPlan, check_output_dir, interrupts, plan_run, resume_config
from rewardlab.tracking import PPO_LINE, MetricsLogger, ProgressBar, check_trackers
from rewardlab.types import Rollout, ScoredRollout


class PPOTrainer:
    """PPO against reward models and rule functions, with an explicit reward pipeline.

    Takes TRL 1.10's ``PPOTrainer`` arguments (each model an object or a name; docs/coming-from-trl.md)::

        trainer = PPOTrainer(args=PPOConfig(output_dir="runs/x", learning_rate=3e-6), processing_class=tokenizer,
                             model="Qwen/Qwen2.5-0.5B-Instruct", reward_model=rm, train_dataset=dataset)
        trainer.train()
        trainer.save_model()

    Args:
        args: a validated `PPOConfig` (``config=`` is the same).
        processing_class: the policy's tokenizer (loaded from the policy's folder when None).
        model: the policy: a causal LM object, or a folder / Hub name (``models.sft_model_path``).
        ref_model: the frozen reference policy, object or name; None: a frozen copy of the policy's
            starting weights (``models.ref_model_path``, else the policy's), or the policy's base with its
            adapter disabled under LoRA.
        reward_model: a rewardlab `RewardModel` (or any object with its ``score_policy_ids``, ``num_heads`` and
            ``semantics``), a ``transformers`` sequence-classification model (read with
            ``reward.reward_semantics`` or its rewardlab metadata), a folder / Hub name, or a list of these
            (``rm0``, ``rm1`` … of the reward spec); None: ``reward_model_path(s)``.
        train_dataset: the prompts: a `datasets.Dataset`, rows (dicts with ``data.prompt_column`` and any
            columns the rule terms read), or prompt texts / chat conversations; None: ``data.dataset_name``.
        value_model: the critic, object or name; None: the default critic (``value_model_path``, else the
            reward model's backbone, else the policy's, with a new value head).
        eval_dataset: the evaluation prompts (anything ``train_dataset`` takes); wins over ``data.dataset_test_split``
            and ``data.eval_fraction``. The trainer evaluates on them every ``run.eval_steps`` updates and at the end.
        peft_config: a peft ``LoraConfig``: train LoRA adapters (``models.use_peft``, its r, α and targets).
        reward_fn: a rule function (TRL's ``reward_funcs`` signature, or the older ``fn(prompts, responses)``);
            replaces ``reward.reward_fn``. Beside a reward model it is a term of weight 1; alone, the reward.
        reward_funcs: rule functions by name (or a list, named by ``__name__``), read by the spec's
            ``fn:NAME`` terms; one the spec does not read becomes a term of weight 1 (TRL's ``reward_funcs``).
        resume: continue the run in ``run.output_dir`` from its newest checkpoint (True: one must exist;
            ``"auto"``: start fresh when there is none). The checkpoint's config is the run's config:
            only `rewardlab.runfolder.PPO_RESUMABLE` fields may differ (docs/runs.md).
        policy, ref_policy, critic, tokenizer, prompts: earlier names of model, ref_model, value_model,
            processing_class and train_dataset.

    The output folder is checked (and the resume rule applied) here, then the prompts are read and the
    reward side's terms checked against their columns, all before any model loads.
    """

    def __init__(
        self, args: PPOConfig | None = None, processing_class=None, model=None, ref_model=None, reward_model=None,
        train_dataset: Any = None, value_model=None, *, eval_dataset: Any = None, peft_config: Any = None,
        config: PPOConfig | None = None, reward_fn: Callable | None = None,
        reward_funcs: Mapping[str, Callable] | Sequence[Callable] | None = None, resume: bool | str = False,
        policy=None, ref_policy=None, critic=None, tokenizer=None, prompts: Any = None,
    ) -> None:
        if (args is None) == (config is None):
            raise RewardlabError("pass the run's PPOConfig once, as args= (TRL's name) or config=")
        config, given = trl_models(args or config, model=_one(model, policy, "model", "policy"),
                                   ref_model=_one(ref_model, ref_policy, "ref_model", "ref_policy"),
                                   reward_model=reward_model, value_model=_one(value_model, critic, "value_model", "critic"),
                                   processing_class=_one(processing_class, tokenizer, "processing_class", "tokenizer"),
                                   peft_config=peft_config)
        check_trackers(config.run.report_to)  # a missing tracker package: refused before the run folder is touched
        policy, ref_policy, critic, tokenizer = given.policy, given.ref_policy, given.critic, given.tokenizer
        prompts = _one(train_dataset, prompts, "train_dataset", "prompts")
        self.cfg = config
        on_cpu = resolve_device(config.run.device, "run.device").type == "cpu"
        # Several processes without CUDA: accelerate only forms a CPU (gloo) group when told cpu=True.
        multi_cpu = on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = make_accelerator(cpu=multi_cpu or (on_cpu and torch.cuda.is_available()),
                                            mixed_precision=accelerator_mixed_precision(config, cuda=not on_cpu))
        self.run_folder = self._plan_run(resume)  # may replace self.cfg by the checkpoint's config
        cfg = self.cfg
        self.sizes = cfg.sizes(self.accelerator.num_processes)  # raises before any model loads
        sharded = configure_sharding(self.accelerator, cfg)  # FSDP2 (rewardlab.ppo.sharding); on CPU too
        check_backend(cfg.generation.backend, sharded)  # vllm absent, or with FSDP: refused before any model loads
        estimator = ADVANTAGE_ESTIMATORS[cfg.ppo.advantage_estimator]
        self.use_critic, self.advantage_estimator = estimator.needs_critic, estimator
        self.kl_estimator = KL_ESTIMATORS[cfg.kl.kl_estimator]
        set_seed(cfg.run.seed)
        m = cfg.models
        if tokenizer is None or policy is None:
            need_path(m.sft_model_path, "models.sft_model_path (or model=)")
        device = self.accelerator.device
        # The data and the reward side first: rule terms are checked against the data's columns, and a pipeline
        # that does not fit the reward models fails, before the policy loads.
        rows = load_prompt_rows(cfg.data) if prompts is None else prompt_rows(prompts, cfg.data.prompt_column,
                                                                               "train_dataset")
        rows, eval_rows = eval_prompt_rows(cfg.data, rows, eval_dataset, seed=cfg.run.seed)  # None: no evaluation
        precisions = model_precisions(cfg, cuda=device.type == "cuda")
        self.reward = build_reward_side(m, cfg.reward, given.reward_model, reward_fn, reward_funcs, columns=list(rows[1]),
                                        device=device, dtype=precisions["reward"].dtype,
                                        max_length=cfg.generation.response_length)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(m.sft_model_path, m.trust_remote_code)
        if self.tokenizer.pad_token is None:
            use_eos_as_pad(self.tokenizer, "the policy's tokenizer")
        if critic is None and self.use_critic and m.critic == "model" and policy is not None and not (
                m.value_model_path or m.reward_model_path or m.reward_model_paths or m.sft_model_path):
            critic = critic_from_model(_critic_source(policy, self.reward.reward_models))  # nothing to load it from
        if ref_policy is None and policy is not None and not (m.ref_model_path or m.sft_model_path or m.use_peft):
            ref_policy = copy.deepcopy(policy).requires_grad_(False)  # the frozen copy of the starting policy
        self.model, self.ref_policy = build_models(cfg, policy=policy, ref_policy=ref_policy, critic=critic,
                                                   reward_models=self.reward.reward_models, use_critic=self.use_critic,
                                                   device=device)
        self.reference_rewards = ReferenceRewards()
        self.prompts = PromptSet.build(self.tokenizer, *rows, max_prompt_length=cfg.data.max_prompt_length)
        self.eval_prompts: PromptSet | None = None
        if eval_rows is not None:
            self.reward.reward_spec.check_columns(list(eval_rows[1]))
            self.eval_prompts = PromptSet.build(self.tokenizer, *eval_rows, max_prompt_length=cfg.data.max_prompt_length)
        self._eval_references = ReferenceRewards()  # samples' and evaluation's reference rewards: not checkpointed
        self._eval_reference: ScoredSamples | None = None  # the reference policy's evaluation samples (frozen)
        max_positions = getattr(self.model.policy.config.get_text_config(), "max_position_embeddings", None)
        longest = self._longest_prompt()
        if max_positions is not None and longest + cfg.generation.response_length > max_positions:
            raise RewardlabError(
                f"the longest prompt ({longest} tokens) + response_length={cfg.generation.response_length} exceeds the "
                f"policy's {max_positions} positions; set data.max_prompt_length ≤ {max_positions - cfg.generation.response_length} "
                "or a smaller response_length")
        self.stop_ids = stop_token_ids(cfg.generation, self.tokenizer, self.model.policy)  # tokens that end a response
        self.pad_id = self.tokenizer.pad_token_id

        optimizer, self.scheduler, policy_params = build_optimizer(cfg, self.model, self.sizes.num_updates)
        # The scheduler is deliberately not prepared: accelerate would step it once per process per
        # optimiser step, tying the LR schedule to the number of processes.
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self._shards = None  # under FSDP: gathers full state dicts for checkpoints and outputs
        if sharded:
            prepare_sharded(self.model)
            self._shards = ShardedModel(self.model, self.optimizer)
        self.ppo_update = PPOUpdate(cfg, self.accelerator, self.model, self.optimizer, self.scheduler, self.sizes,
                                    policy_params, self.kl_estimator, sharded=sharded)
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

    def _plan_run(self, resume: bool | str) -> RunPlan:
        """Output-folder checks and the resume rule (`rewardlab.runfolder`), before any model loads."""
        cfg = self.cfg
        m, out = cfg.models, cfg.run.output_dir
        inputs = {"models.sft_model_path": m.sft_model_path, "models.ref_model_path": m.ref_model_path,
                  "models.value_model_path": m.value_model_path, "models.reward_model_path": m.reward_model_path,
                  **{f"models.reward_model_paths[{i}]": p for i, p in enumerate(m.reward_model_paths)},
                  "data.dataset_name": cfg.data.dataset_name if cfg.data.dataset_name and os.path.exists(cfg.data.dataset_name) else None}
        check_output_dir(out, inputs, name="run.output_dir")
        if resume not in (False, True, "auto"):
            raise RewardlabError(f"resume={resume!r} is invalid; use True, False or 'auto'")
        plan = plan_run(out, command="ppo", resume=resume, overwrite=cfg.run.overwrite_output_dir, prefix=PREFIX,
                        state_file=STATE_FILE, legacy_config="config", what="run.output_dir")
        if plan.checkpoint is not None and plan.saved_config is not None:
            # A checkpoint written before a field existed (or under its earlier name) reads with today's names and
            # that field's default, so only real differences count as changes.
            saved = PPOConfig.from_dict(plan.saved_config).to_dict()
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
                               resume_step=self.update if resuming else None, run_config=cfg.to_dict(),
                               project=cfg.run.project, run_name=cfg.run.run_name, log_line=PPO_LINE,
                               total_steps=sizes.num_updates, progress_bar=cfg.run.progress_bar)
        history: list[dict[str, float]] = []
        samples_file = SamplesFile(out_dir, resume_update=self.update if resuming else None, enabled=acc.is_main_process)
        try:
            with interrupts(), ProgressBar(acc.is_main_process and cfg.run.progress_bar, sizes.num_updates,
                                           self.update) as advance:
                if cfg.run.eval_before_train and self.eval_prompts is not None and not resuming:
                    logger.log(self._evaluate(logger, samples_file), step=0)  # the starting policy
                while self.update < sizes.num_updates:
                    metrics = self.step()
                    history.append(metrics)
                    if self.stopped_early:  # no optimiser update on this rollout: keep the policy that made it
                        logger.log(metrics, step=self.update + 1)
                        if acc.is_main_process:
                            report_early_stop(out_dir, self.update, metrics, cfg.alarm)
                        self.save_checkpoint(metrics)
                        break
                    self.update += 1
                    evaluated = self._watch(metrics, logger, samples_file)  # samples table; eval/ metrics join these
                    if evaluated or self.update % cfg.run.logging_steps == 0 or self.update == sizes.num_updates:
                        logger.log(metrics, step=self.update)
                    if (cfg.run.save_steps and self.update % cfg.run.save_steps == 0) or self.update == sizes.num_updates:
                        self.save_checkpoint(metrics)
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
        cfg, acc = self.cfg, self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        t_start = time.perf_counter()

        # 1. Prompts: this process's share of the update's global batch, K samples per prompt, with their rows.
        query_ids, query_mask, rows, first_episode = self._prompt_batch(self.update)
        keys = [prompt_key(ids[mask.bool()]) for ids, mask in zip(query_ids, query_mask, strict=True)]

        # 2. Rollout: the engine (hf or vllm) samples responses from the current policy; truncate after the stop token.
        self._sync_engine(unwrapped.policy)
        t0 = time.perf_counter()
        seeds = episode_seeds(cfg.run.seed, self.update, first_episode, query_ids.shape[0])
        raw = self.engine.generate(query_ids, query_mask, seeds)
        engine_logprobs = self.engine.last_logprobs  # vLLM's view of the sampled tokens: a check, never π_old
        response_ids, response_mask, contains_stop = truncate_after_stop(raw, self.stop_ids, self.pad_id)
        t_generate = time.perf_counter() - t0

        # 3. Forward passes: log π_old, log π_ref and V_old of every response token.
        t0 = time.perf_counter()
        logprobs, ref_logprobs, values, entropy = self._rollout_forwards(query_ids, query_mask, response_ids, response_mask)
        rollout = Rollout(query_ids, query_mask, response_ids, response_mask, contains_stop,
                          logprobs, ref_logprobs, values, keys)
        t_forward = time.perf_counter() - t0

        # 4–5. Reward: the reward side scores this process's rows (reward models, rule terms, reference rewards
        #      for centred terms); its pipeline and penalties run on the global batch.
        t0 = time.perf_counter()
        reward, all_raw, all_ref = self._reward(rollout, rows)
        b = query_ids.shape[0]
        local = slice(acc.process_index * b, (acc.process_index + 1) * b)
        scores, scorable = reward.scores[local].to(acc.device), reward.scorable[local].to(acc.device)
        t_score = time.perf_counter() - t0

        # 6. Shaping: −β·KL_t on every token (k1, k2 or k3), plus the score at the last real token.
        mask = response_mask.float()
        k1, k3 = kl_k1(logprobs, ref_logprobs) * mask, kl_k3(logprobs, ref_logprobs) * mask  # both logged
        kl = {kl_k1: k1, kl_k3: k3}.get(self.kl_estimator)  # the configured estimator
        if kl is None:
            kl = self.kl_estimator(logprobs, ref_logprobs) * mask
        beta = self.kl_controller.value
        rewards, non_score_rewards = shape_rewards(scores, kl, mask, beta=beta, kl_in_reward=cfg.kl.kl_penalty == "reward")
        if cfg.ppo.whiten_rewards:
            rewards = self._global_whiten(rewards, mask, shift_mean=False)

        # 6b. Over-optimisation alarm on this rollout's proxy-side signals, before optimising on it.
        seq = acc.gather(torch.stack([k1.sum(1), response_mask.sum(1).to(k1.dtype)], 1).to(acc.device)).double()
        alarm = self.alarm.update(alarm_signals(self.reward.proxy(all_raw), reward.diagnostics, seq[:, 0], seq[:, 1],
                                                **self._alarm_heads(all_raw, all_ref)))
        self.stopped_early = cfg.alarm.early_stop and alarm["alarm/triggered"] >= 1.0

        # 7. Advantages: GAE with the critic, or a per-prompt baseline (RLOO / group) broadcast over tokens. A row no
        #    reward term applied to carries no policy-gradient signal (advantage 0; TRL 1.16 does the same).
        p = cfg.ppo
        advantages, returns = self.advantage_estimator(rewards, values, mask, gamma=p.gamma, lam=p.lam,
                                                       group_size=p.num_samples_per_prompt)
        keep = scorable.float().unsqueeze(1)
        if cfg.ppo.whiten_advantages:
            advantages = self._global_whiten(advantages, mask * keep, shift_mean=True)
        advantages, returns = advantages * keep, torch.where(keep.bool(), returns, values)
        scored = ScoredRollout(all_raw[local].to(acc.device), scores, k1, k3, non_score_rewards, rewards, advantages,
                               returns)

        # 8. PPO epochs × minibatches × micro-batches; one optimiser step per minibatch (none when stopping).
        t0 = time.perf_counter()
        if self.stopped_early:
            self.ppo_update.kept = None  # the kept graph of the first micro-batch is not used
        stats = {} if self.stopped_early else self.ppo_update(rollout, scored, update=self.update, kl_coef=beta)
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
        metrics = self._metrics(rollout, scored, stats, entropy, beta, reward.diagnostics)
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
            longest = self._longest_prompt()
            self.engine = make_engine(self.cfg, policy, pad_id=self.pad_id, stop_ids=self.stop_ids,
                                      max_model_len=longest + self.cfg.generation.response_length)
        if not self._engine_holds_policy:
            self._sync_seconds += self.engine.sync(policy)
            self._engine_holds_policy = True

    def _prompt_batch(self, update: int) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
        """Left-padded prompt ids of this process, each repeated K times; each row's prompt index; and its
        first global episode index (`PromptSet.batch`: any update can be rebuilt from its number alone)."""
        s, k = self.sizes, self.cfg.ppo.num_samples_per_prompt
        first = update * (s.batch_size // k) + self.accelerator.process_index * s.local_prompts_per_update
        ids, mask, rows = self.prompts.batch(first_prompt=first, num_prompts=s.local_prompts_per_update,
                                             samples_per_prompt=k, seed=self.cfg.run.seed, pad_id=self.pad_id)
        device = self.accelerator.device
        return ids.to(device), mask.to(device), rows, first * k

    def _rollout_forwards(self, q, qm, r, rm):
        """log π_old, log π_ref, V_old and the entropy per token, in micro-batches, padding zeroed.

        The rows of the first update micro-batch (epoch 0) go through the training model *with*
        gradients, and that graph is kept for their loss: no optimiser step happens in between, so
        π_θ = π_old there and a second forward would only repeat this one. TRL took π_old from
        `generate`'s scores instead; this keeps sampling and training logprobs from one forward form.
        """
        acc, temp = self.accelerator, self.cfg.generation.temperature
        unwrapped = acc.unwrap_model(self.model)
        first, logits, values = self.ppo_update.forward_first(q, qm, r, rm, self.update)
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

    def _reward(self, ro: Rollout, rows: list[int]) -> tuple[RewardOutput, torch.Tensor, torch.Tensor | None]:
        """Steps 4–5: the reward side's raw outputs of this process's rows (and the reference rewards of
        centred terms), then its pipeline and penalties on the batch of all processes, so batch statistics
        and running state agree everywhere. Returns the global `RewardOutput`, the global raw outputs and the
        global reference rewards (None when no term is centred)."""
        acc = self.accelerator
        samples = self._samples(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask, ro.contains_stop, rows)
        raw = self.reward.score(samples)
        ref = self._reference_rewards(ro.query_ids, ro.query_mask, ro.prompt_keys, rows) \
            if self.reward.needs_references else None

        def gather(x: torch.Tensor) -> torch.Tensor:
            return acc.gather(x.to(acc.device)).cpu()

        all_raw, all_ref = gather(raw).float(), None if ref is None else gather(ref).float()
        out = self.reward.reward(all_raw, ref=all_ref, finished=gather(ro.contains_stop.long()).bool(),
                                 lengths=gather(ro.response_mask.sum(1)))
        return out, all_raw, all_ref

    def _samples(self, q, qm, r, rm, finished, rows: list[int], prompt_set: PromptSet | None = None) -> Samples:
        """Rows of the rollout as the reward side reads them: the prompts and columns of their data rows
        (of ``prompt_set``, default the training prompts), the policy's ids (responses are decoded from them
        only if a term needs text)."""
        prompts, columns = (prompt_set or self.prompts).rows(rows)
        return Samples(prompts, columns=columns, finished=finished.cpu(), tokens=PolicyTokens(q, qm, r, rm, self.tokenizer))

    def _reference_rewards(self, q, qm, keys: list[str], rows: list[int], prompt_set: PromptSet | None = None,
                           cache: ReferenceRewards | None = None) -> torch.Tensor:
        """(B, K, R) raw outputs of K reference-policy samples per prompt, for the centred terms
        (`RewardSide.reference_view`); computed once per prompt and cached (in ``cache``, default the
        checkpointed training cache; rows of ``prompt_set``, default the training prompts)."""
        cache = self.reference_rewards if cache is None else cache
        missing = cache.missing(keys)
        if missing:
            kref = self.cfg.reward.num_reference_samples
            first_row = {key: keys.index(key) for key in missing}
            sel = [first_row[key] for key in missing for _ in range(kref)]
            rq, rqm = q[sel], qm[sel]
            # Seeds depend on the prompt only, so every process and every resume draws the same references.
            seeds = [episode_seeds(self.cfg.run.seed, -1, int(key[:12], 16) * kref + j, 1)[0]
                     for key in missing for j in range(kref)]
            # The same engine on the frozen reference weights; step 8b gives it the policy back.
            self._sync_seconds += self.engine.sync(self.ref_policy)
            self._engine_holds_policy = False
            raw = self.engine.generate(rq, rqm, seeds)
            rr, rrm, stop = truncate_after_stop(raw, self.stop_ids, self.pad_id)
            scored = self.reward.reference_scores(self._samples(rq, rqm, rr, rrm, stop, [rows[i] for i in sel],
                                                                prompt_set))
            cache.add([key for key in missing for _ in range(kref)], scored)
        return cache.gather(keys)

    def _alarm_heads(self, all_raw: torch.Tensor, all_ref: torch.Tensor | None) -> dict[str, Any]:
        """The alarm's uncertainty inputs besides the heads (`alarm_signals`): the heads on the reference
        samples of the update's prompts, all processes (B, K, H; ``all_ref`` as `_reward` gathered them), when a
        centred pipeline keeps every head; the first rollout's head means otherwise; whether the proxy columns
        are reward-model heads at all."""
        cols = torch.arange(all_raw.shape[1])[None]
        heads, ref = self.reward.proxy(cols)[0].tolist(), None
        if all_ref is not None and self.reward.reward_models and len(heads) > 1 and self.reward.needs_references:
            ref_cols = self.reward.reference_view(cols)[0].tolist()
            if set(heads) <= set(ref_cols):  # the references were scored on every head (rewardlab.ppo.alarm)
                ref = all_ref[..., [ref_cols.index(c) for c in heads]]
        return {"ref_proxy": ref, "head_offsets": self.alarm.head_offsets, "from_models": bool(self.reward.reward_models)}

    def _global_whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool) -> torch.Tensor:
        """`masked_whiten` with statistics over the batch of all processes."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return masked_whiten(x, mask, shift_mean=shift_mean)
        gx, gm = acc.gather(x), acc.gather(mask)
        mean, var = masked_mean(gx, gm), masked_var(gx, gm)
        out = (x - mean) * torch.rsqrt(var + 1e-8)
        return (out if shift_mean else out + mean) * mask

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

    # ------------------------------------------------------------------ samples and evaluation (docs/ppo.md)
    def _longest_prompt(self) -> int:
        """Tokens of the longest training or evaluation prompt (the policy's and the engine's length limit)."""
        sets = [self.prompts] + ([self.eval_prompts] if self.eval_prompts is not None else [])
        return max(len(p) for ps in sets for p in ps.ids)

    def _watch(self, metrics: dict[str, float], logger: MetricsLogger, samples_file: SamplesFile) -> bool:
        """After update ``self.update``: the samples table every ``run.sample_steps`` updates and after the last;
        evaluation every ``run.eval_steps`` and after the last, its ``eval/`` metrics added to ``metrics``.
        Returns whether it evaluated. Neither draws from training's seeds or the global RNG, nor updates state."""
        run, u, n = self.cfg.run, self.update, self.sizes.num_updates
        every = resolve_sample_steps(run.sample_steps, n)
        if every and (u % every == 0 or u == n):
            prompt_set = self.eval_prompts if self.eval_prompts is not None else self.prompts
            idx = sample_prompt_indices(len(prompt_set.ids), run.num_sample_prompts, seed=run.seed,
                                        first=self.eval_prompts is not None)
            self._write_samples(sample_rows(self._sample_and_score(prompt_set, idx), update=u, split="samples"),
                                "samples", logger, samples_file)
        if self.eval_prompts is None or not evaluates_after(u, eval_steps=run.eval_steps, num_updates=n):
            return False
        metrics.update(self._evaluate(logger, samples_file))
        return True

    def _evaluate(self, logger: MetricsLogger, samples_file: SamplesFile) -> dict[str, float]:
        """`eval_metrics` of the policy's samples of every evaluation prompt against the reference policy's (drawn
        once: the reference is frozen); the first ``run.num_sample_prompts`` rows become the ``eval/samples`` table."""
        t0 = time.perf_counter()
        idx = list(range(len(self.eval_prompts.ids)))
        policy = self._sample_and_score(self.eval_prompts, idx)
        if self._eval_reference is None:
            self._eval_reference = self._sample_and_score(self.eval_prompts, idx, reference=True)
        rows = sample_rows(policy, update=self.update, split="eval", reference=self._eval_reference,
                           limit=self.cfg.run.num_sample_prompts)
        self._write_samples(rows, "eval/samples", logger, samples_file)
        return {**eval_metrics(policy, self._eval_reference), "time/eval": time.perf_counter() - t0}

    def _write_samples(self, rows: list[dict[str, Any]], key: str, logger: MetricsLogger,
                       samples_file: SamplesFile) -> None:
        """A samples table to samples.jsonl and the terminal (main process) and to every tracker."""
        samples_file.append(rows)
        if self.accelerator.is_main_process:
            print_samples(rows, title=f"rewardlab: {key} after update {self.update}")
        logger.log_table(key, table_rows(rows), step=self.update)  # wandb Table, tensorboard text, trackio, mlflow

    @torch.no_grad()
    def _sample_and_score(self, prompt_set: PromptSet, idx: list[int], *, reference: bool = False) -> ScoredSamples:
        """One response to each prompt ``idx`` of ``prompt_set`` from the policy (``reference``: the reference
        policy), seeded per prompt (`SAMPLES_STREAM`), scored by the reward side with its state frozen, and for the
        policy's samples Σ_t log π − log π_ref (k1). Every process runs it on all the prompts (a sharded policy
        must generate on every process); only the main process writes."""
        cfg, acc, temp = self.cfg, self.accelerator, self.cfg.generation.temperature
        unwrapped = acc.unwrap_model(self.model)
        self._sync_engine(unwrapped.policy)  # starts the engine when this comes before the first rollout
        if reference:
            self._sync_seconds += self.engine.sync(self.ref_policy)
            self._engine_holds_policy = False
        chunks, size = [], cfg.optim.local_rollout_forward_batch_size
        for start in range(0, len(idx), size):  # every generation first: reference rewards move the engine
            rows = idx[start:start + size]
            q, qm = (x.to(acc.device) for x in pad_rows([prompt_set.ids[i] for i in rows], self.pad_id, side="left"))
            seeds = [episode_seeds(cfg.run.seed, SAMPLES_STREAM, i, 1)[0] for i in rows]
            chunks.append((rows, q, qm, *truncate_after_stop(self.engine.generate(q, qm, seeds), self.stop_ids,
                                                             self.pad_id)))
        raws, refs, kls, responses = [], [], [], []
        for rows, q, qm, r, rm, stop in chunks:
            samples = self._samples(q, qm, r, rm, stop, rows, prompt_set)
            raws.append(self.reward.score(samples))
            responses += samples.response_list()
            if self.reward.needs_references:
                keys = [prompt_key(ids[m.bool()]) for ids, m in zip(q, qm, strict=True)]
                refs.append(self._reference_rewards(q, qm, keys, rows, prompt_set, self._eval_references))
            if not reference:
                with acc.autocast():
                    logits, ref_logits = (response_logits(m, q, qm, r, rm) for m in (unwrapped.policy, self.ref_policy))
                k1 = logprobs_from_logits(logits, r, temp) - logprobs_from_logits(ref_logits, r, temp)
                kls.append((k1.float() * rm).sum(1).cpu())
        raw = torch.cat(raws).float()
        finished = torch.cat([c[5] for c in chunks]).cpu()
        lengths = torch.cat([c[4].sum(1) for c in chunks]).cpu()
        out = self._frozen_reward(raw, torch.cat(refs).float() if refs else None, finished, lengths)
        return ScoredSamples([prompt_set.prompts[i] for i in idx], responses, out.scores, out.terms, out.raw,
                             proxy_reading(self.reward.proxy(raw)), torch.cat(kls) if kls else None, lengths, finished)

    def _frozen_reward(self, raw: torch.Tensor, ref: torch.Tensor | None, finished: torch.Tensor,
                       lengths: torch.Tensor) -> RewardOutput:
        """The reward side's pipeline and penalties with its state read, not updated. Before the first update a
        running_norm has no statistics yet: these rows' own serve, and the state is put back."""
        kw = {"ref": ref, "finished": finished, "lengths": lengths}
        try:
            return self.reward.reward(raw, update=False, **kw)
        except RewardlabError:
            state = self.reward.state_dict()
            try:
                return self.reward.reward(raw, update=True, **kw)
            finally:
                self.reward.load_state_dict(state)

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
                             self.kl_controller, self.reward, self.reference_rewards, self.alarm, self._shards,
                             tokenizer=self.tokenizer)

    def save_checkpoint(self, metrics: Mapping[str, float] | None = None) -> None:
        """Checkpoint the current update (main process writes; everyone waits), keeping ``run.save_total_limit``
        of them and the one the alarm points back to. ``metrics``: the update's metrics, whose headline values
        and ``alarm/score`` ``run.json`` lists with the checkpoint (docs/runs.md)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        full = self._shards.full_state() if self._shards is not None else None  # collective under FSDP
        if acc.is_main_process:
            save_checkpoint(self.cfg.run.output_dir, self.update, self._state(),
                            {"episodes": self.update * self.sizes.batch_size, "world_size": acc.num_processes,
                             "sharded": self._shards is not None, "config": self.cfg.to_dict()},
                            keep=self.cfg.run.save_total_limit, run_id=self.run_folder.run_id, full=full,
                            metrics=metrics)
            self.run_folder.output_complete()  # a replaced run's files go once this run has a checkpoint
        acc.wait_for_everyone()

    def _write_run_files(self) -> None:
        """Resolved config, pipeline spec and library versions, written at the start of every run."""
        if self.accelerator.is_main_process:
            write_run_files(self.cfg.run.output_dir, self.cfg, self.reward.spec)

    def save_outputs(self) -> None:
        """The trained policy (and critic) as HF ``save_pretrained`` folders, with the tokenizer; the run is complete."""
        self.save_model()
        if self.accelerator.is_main_process:
            self.run_folder.output_complete()

    def save_model(self, output_dir: str | os.PathLike[str] | None = None) -> str:
        """Write the policy and critic as ``train`` does at its end, under ``output_dir`` (default:
        ``run.output_dir``): ``policy/`` (``save_pretrained`` + tokenizer; the adapter under LoRA), ``critic/``
        (docs/runs.md). TRL's ``save_model``; call it on every process. Returns the policy's folder."""
        acc = self.accelerator
        folder = os.fspath(output_dir) if output_dir is not None else self.cfg.run.output_dir
        acc.wait_for_everyone()
        full = self._shards.full_state(optimizer=False) if self._shards is not None else None  # collective
        if acc.is_main_process:
            save_final_models(folder, acc.unwrap_model(self.model), self.tokenizer, full=full,
                              save_dtype=self.cfg.run.save_dtype, merge_adapter=self.cfg.run.merge_adapter)
        acc.wait_for_everyone()
        return os.path.join(folder, "policy")


def _one(new: Any, old: Any, new_name: str, old_name: str) -> Any:
    """The value of an argument that has a TRL name and an earlier rewardlab name; both given is refused."""
    if new is not None and old is not None:
        raise RewardlabError(f"{new_name}= and {old_name}= are the same argument; pass one")
    return new if new is not None else old


def _critic_source(policy: torch.nn.Module, reward_models: Sequence[Any]) -> torch.nn.Module:
    """The in-memory model the default critic copies: the (first) reward model when it reads the policy's
    vocabulary, as a config's default critic starts from the reward model, else the policy."""
    vocab = getattr(policy.config.get_text_config(), "vocab_size", None)
    rm = getattr(reward_models[0], "model", None) if reward_models else None
    if isinstance(rm, torch.nn.Module) and hasattr(rm, "config") and \
            getattr(rm.config.get_text_config(), "vocab_size", None) == vocab:
        return rm
    return policy
