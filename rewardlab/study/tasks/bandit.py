"""A closed-form companion task: a contextual bandit with enumerable responses.

Each prompt x has N candidate responses with features φ(x, y) = (q, v): q is "quality", v is
"verbosity". The reference (SFT) policy prefers short responses, π₀(y|x) ∝ exp(−a·v + b·q). The
gold reward rewards quality and *some* verbosity, then penalises too much::

    u(x, y) = q + v − κ·v²          (peak at v = 1/(2κ))

A proxy reward is fitted by Bradley-Terry logistic regression, linear in (q, v), on preference
pairs sampled from π₀ and labelled by BT sampling from u at temperature τ. Under π₀ most responses
are short, so "more verbose is better" holds in distribution and the proxy learns it; pushing v
far beyond the data then lowers the gold — over-optimisation with no LM in the loop.

The KL-regularised optimum against any reward f is exact (Rafailov et al. 2023, eq. 4)::

    π*_β(y|x) ∝ π₀(y|x) · exp(f(x, y) / β)

so gold, proxy and KL(π*‖π₀) are computed exactly along a β grid in milliseconds: an exact
frontier per reward calculation. f is the proxy passed through a `RewardPipeline`, with reference
rewards drawn from π₀, so the same specs run here and in PPO. Batch-dependent transforms
(whiten, running_norm) are affine on a fixed batch, i.e. a reparametrisation of β: their
frontier is the raw one, which this task shows exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class BanditTask:
    """Parameters of the bandit world (see the module docstring)."""

    n_prompts: int = 32
    n_responses: int = 64
    verbosity_cost: float = 0.6  # κ
    short_preference: float = 2.0  # a
    quality_preference: float = 0.3  # b
    max_verbosity: float = 4.0
    name: str = "bandit"

    def build(self, seed: int) -> BanditWorld:
        """Draw a world: features, π₀ and gold, from `seed`."""
        rng = np.random.default_rng(seed)
        q = rng.normal(size=(self.n_prompts, self.n_responses))
        v = rng.uniform(0.0, self.max_verbosity, size=(self.n_prompts, self.n_responses))
        logits = -self.short_preference * v + self.quality_preference * q
        pi0 = np.exp(logits - logits.max(axis=1, keepdims=True))
        pi0 /= pi0.sum(axis=1, keepdims=True)
        gold = q + v - self.verbosity_cost * v**2
        return BanditWorld(features=np.stack([q, v], axis=-1), pi0=pi0, gold=gold)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BanditWorld:
    """One drawn world.

    Attributes:
        features: (P, N, 2) φ(x, y) = (q, v).
        pi0: (P, N) reference policy, rows sum to 1.
        gold: (P, N) gold reward u(x, y).
    """

    features: np.ndarray
    pi0: np.ndarray
    gold: np.ndarray

    def sample_preferences(
        self, n_pairs: int, rng: np.random.Generator, tau: float = 1.0, flip: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (x, y_chosen, y_rejected) from π₀, labelled by BT sampling from gold.

        P(y1 ≻ y2) = σ((u1 − u2)/τ); each label is then flipped with probability `flip`.
        Returns index arrays (x, chosen, rejected), each (n_pairs,).
        """
        p, n = self.pi0.shape
        x = rng.integers(0, p, size=n_pairs)
        y1 = np.array([rng.choice(n, p=self.pi0[i]) for i in x])
        y2 = np.array([rng.choice(n, p=self.pi0[i]) for i in x])
        prob = 1.0 / (1.0 + np.exp(-(self.gold[x, y1] - self.gold[x, y2]) / tau))
        first_wins = rng.random(n_pairs) < prob
        first_wins ^= rng.random(n_pairs) < flip
        chosen = np.where(first_wins, y1, y2)
        rejected = np.where(first_wins, y2, y1)
        return x, chosen, rejected

    def fit_proxy(self, x: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, l2: float = 1e-3, steps: int = 300) -> np.ndarray:
        """Bradley-Terry logistic regression, linear in the features; returns the proxy table (P, N)."""
        phi = torch.as_tensor(self.features, dtype=torch.float64)
        diff = phi[x, chosen] - phi[x, rejected]  # (M, 2)
        w = torch.zeros(phi.shape[-1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -torch.nn.functional.logsigmoid(diff @ w).mean() + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return (phi @ w.detach()).numpy()

    def reference_samples(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of k responses per prompt drawn from π₀: (P, k)."""
        return np.stack([rng.choice(self.pi0.shape[1], size=k, p=row) for row in self.pi0])

    def optimal_policy(self, reward: np.ndarray, beta: float) -> np.ndarray:
        """π*_β ∝ π₀ · exp(reward / β), row-normalised. Shapes: reward (P, N) -> (P, N)."""
        logits = np.log(self.pi0) + reward / beta
        logits -= logits.max(axis=1, keepdims=True)
        pi = np.exp(logits)
        return pi / pi.sum(axis=1, keepdims=True)

    def kl(self, pi: np.ndarray) -> float:
        """Mean over prompts of KL(π(·|x) ‖ π₀(·|x))."""
        mask = pi > 0
        terms = np.where(mask, pi * (np.log(np.where(mask, pi, 1.0)) - np.log(self.pi0)), 0.0)
        return float(terms.sum(axis=1).mean())

    @staticmethod
    def expected(pi: np.ndarray, table: np.ndarray) -> float:
        """Mean over prompts of E_{y∼π(·|x)} table(x, y)."""
        return float((pi * table).sum(axis=1).mean())

    def frontier(self, reward: np.ndarray, betas: np.ndarray, proxy: np.ndarray | None = None) -> list[dict[str, float]]:
        """Exact (√KL, gold, proxy) of π*_β for each β, for the transformed reward `reward` (P, N)."""
        out = []
        for beta in betas:
            pi = self.optimal_policy(reward, float(beta))
            kl = self.kl(pi)
            row = {"beta": float(beta), "kl": kl, "sqrt_kl": float(np.sqrt(max(kl, 0.0))), "gold": self.expected(pi, self.gold)}
            if proxy is not None:
                row["proxy"] = self.expected(pi, proxy)
            out.append(row)
        return out


def transformed_reward(world: BanditWorld, proxy: np.ndarray, spec: str, *, k: int = 64, seed: int = 0, offsets: np.ndarray | None = None) -> np.ndarray:
    """The proxy table passed through a reward pipeline, one prompt per batch row group.

    Reference rewards for centred transforms are the proxy rewards of k responses per prompt
    drawn from π₀. `offsets` (P,) adds a per-prompt constant c(x) to the proxy (invisible to BT).

    Shapes: proxy (P, N) -> (P, N)
    """
    from rewardlab.reward.pipeline import RewardPipeline

    p, n = proxy.shape
    table = proxy + (0.0 if offsets is None else offsets[:, None])
    refs_idx = world.reference_samples(k, np.random.default_rng(seed))
    ref = np.take_along_axis(table, refs_idx, axis=1)  # (P, k)
    logits = torch.as_tensor(table.reshape(-1, 1), dtype=torch.float64)
    ref_t = torch.as_tensor(np.repeat(ref, n, axis=0)[:, :, None], dtype=torch.float64)
    pipe = RewardPipeline.from_spec(spec, semantics="bradley_terry")
    return pipe(logits, ref=ref_t if pipe.needs_references else None).scores.double().numpy().reshape(p, n)
