"""`rewardlab compare`: its numbers against direct computations on results.json's paired rows, its files,
the CLI, and bad inputs refused with one line.

Policy B is the tiny policy of ``rewardlab ppo --make-tiny``; policy A is that policy with seeded noise
on its weights (a stand-in for a trained policy that moved away from it).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rewardlab import cli


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.ppo.commands import make_tiny
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    r = str(tmp_path_factory.mktemp("compare"))
    make_tiny(os.path.join(r, "tiny"), num_prompts=24)
    tiny = os.path.join(r, "tiny")
    # A: B with noise on every weight (seeded)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(tiny, "policy"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(os.path.join(r, "moved"), safe_serialization=True)
    AutoTokenizer.from_pretrained(os.path.join(tiny, "policy")).save_pretrained(os.path.join(r, "moved"))
    # a 2-head reward model without metadata (semantics undeclared)
    tok = build_tokenizer(64)
    rm = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=32, layers=2, num_labels=2), seed=3)
    rm.save_pretrained(os.path.join(r, "rm_undeclared"), safe_serialization=True)
    tok.save_pretrained(os.path.join(r, "rm_undeclared"))
    # a policy with another vocabulary
    tok80 = build_tokenizer(80)
    other = build_model("causal_lm", tiny_config("gpt2", tok80, hidden=32, layers=2), seed=4)
    other.save_pretrained(os.path.join(r, "other_vocab"), safe_serialization=True)
    tok80.save_pretrained(os.path.join(r, "other_vocab"))
    with open(os.path.join(r, "no_prompt.jsonl"), "w", encoding="utf-8") as f:
        f.write('{"question": "t1 t2"}\n{"question": "t3"}\n')
    with open(os.path.join(r, "gold.py"), "w", encoding="utf-8") as f:
        f.write("def gold(prompts, responses):\n"
                "    return [sum(w in p.split() for w in r.split()) / max(len(r.split()), 1)\n"
                "            for p, r in zip(prompts, responses)]\n")
    return r


@pytest.fixture(scope="module")
def results(work) -> dict:
    """One comparison through the Python API (a centred pipeline, with gold), read back from results.json."""
    from rewardlab.compare import compare_policies

    out = os.path.join(work, "out")
    returned = compare_policies(os.path.join(work, "moved"), os.path.join(work, "tiny", "policy"),
                                reward_model=os.path.join(work, "tiny", "reward"), pipeline="mean|lsc(q=0.5)",
                                prompts=os.path.join(work, "tiny", "prompts.jsonl"), gold=os.path.join(work, "gold.py") + ":gold",
                                num_prompts=20, response_length=12, seed=1, device="cpu", out_dir=out)
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written == returned
    return written


def _direct_win_rate(pairs: list[dict], field: str) -> tuple[float, int, int, int]:
    wins = ties = losses = 0
    for p in pairs:
        a, b = p["a"][field], p["b"][field]
        if a is None or b is None:
            continue
        wins += a > b
        ties += a == b
        losses += a < b
    n = wins + ties + losses
    return (wins + 0.5 * ties) / n, wins, ties, losses


@pytest.mark.parametrize("field", ["score", "gold"])
def test_the_win_rate_equals_a_direct_count(results, field):
    rate, wins, ties, losses = _direct_win_rate(results["pairs"], field)
    w = results["win_rate"][field]
    assert w["win_rate"] == pytest.approx(rate, abs=1e-12)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (wins, ties, losses, len(results["pairs"]))
    assert 0.0 <= w["low"] <= w["win_rate"] <= w["high"] <= 1.0


def test_the_wilson_interval_matches_its_formula():
    from rewardlab.compare.stats import wilson_interval

    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.40383, abs=1e-5), pytest.approx(0.59617, abs=1e-5))
    assert wilson_interval(1.0, 10) == (pytest.approx(0.72246, abs=1e-5), pytest.approx(1.0))  # stays below 1


def test_the_wilson_interval_holds_its_proportion_exactly():
    """At p = 0 or 1 the formula's bound is p, but rounding put it a hair inside (0 wins of 3: low 1e-17 > 0),
    and the report's error bar then had a negative length, which matplotlib refuses (the CLI crashed)."""
    from rewardlab.compare.stats import wilson_interval

    for n in range(1, 300):
        for k in range(n + 1):
            low, high = wilson_interval(k / n, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)
    assert wilson_interval(0.0, 3)[0] == 0.0 and wilson_interval(1.0, 10)[1] == 1.0


def test_summaries_equal_direct_computations_on_the_rows(results):
    pairs = results["pairs"]
    for key in ("a", "b"):
        pol = results["policies"][key]
        for field in ("score", "kl", "length", "gold"):
            values = [p[key][field] for p in pairs]
            assert pol[field]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-9)
        assert pol["eos_rate"] == pytest.approx(sum(p[key]["eos"] for p in pairs) / len(pairs))
    # B is the reference: its KL is exactly 0; A moved: its KL is not
    assert all(p["b"]["kl"] == 0.0 for p in pairs)
    assert results["policies"]["a"]["kl"]["mean"] != 0.0
    assert results["settings"]["num_reference_samples"] == 4  # the centred pipeline centred on reference samples
    assert results["settings"]["device"] == "cpu"


def test_kl_and_length_equal_a_direct_forward_pass(work, results):
    """Each row's KL, recomputed with one unpadded forward pass per row: Σ_t log π_A(y_t) − log π_B(y_t).

    The tiny tokenizer maps words to ids one to one, so a response re-tokenises to its own ids unless the
    policy sampled a special token (removed in decoding); those rows are recognised by their length.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(work, "moved"))
    pol_a = AutoModelForCausalLM.from_pretrained(os.path.join(work, "moved")).eval()
    pol_b = AutoModelForCausalLM.from_pretrained(os.path.join(work, "tiny", "policy")).eval()
    checked = 0
    for p in results["pairs"]:
        a = p["a"]
        response = tok(a["response"], add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if a["eos"] else [])
        if len(response) != a["length"]:
            continue  # a special token was sampled and dropped from the text
        prompt = tok(p["prompt"], add_special_tokens=True)["input_ids"]
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            lp = [torch.log_softmax(m(ids).logits[0, len(prompt) - 1:-1].float(), -1)
                  .gather(-1, ids[0, len(prompt):, None]).sum().item() for m in (pol_a, pol_b)]
        assert a["kl"] == pytest.approx(lp[0] - lp[1], abs=1e-3)
        checked += 1
    assert checked >= len(results["pairs"]) // 4


def test_a_policy_against_itself_ties_everywhere(work):
    from rewardlab.compare import compare_policies

    policy = os.path.join(work, "tiny", "policy")
    r = compare_policies(policy, policy, reward_model=os.path.join(work, "tiny", "reward"),
                         prompts=os.path.join(work, "tiny", "prompts.jsonl"), num_prompts=8, response_length=8,
                         device="cpu", out_dir=None)
    assert r["win_rate"]["score"]["win_rate"] == 0.5 and r["win_rate"]["score"]["ties"] == 8
    assert r["settings"]["pipeline"] == "mean"  # the Bradley-Terry model's principal reading
    assert all(p["a"]["response"] == p["b"]["response"] and p["a"]["kl"] == 0.0 for p in r["pairs"])


def test_the_report_is_written_self_contained(work, results):
    with open(os.path.join(work, "out", "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert page.count("data:image/png;base64,") >= 6  # scores, paired, length/KL, win rate, gold ×2
    assert "src=\"http" not in page and "<script" not in page
    w = results["win_rate"]["score"]
    assert f"{100 * w['win_rate']:.1f} %" in page
    assert results["pairs"][0]["a"]["response"].split()[0] in page if results["pairs"][0]["a"]["response"] else True


def test_the_cli_compares_on_cpu(work):
    out = os.path.join(work, "cli_out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "compare", "--policy-a", "moved", "--policy-b", "tiny/policy",
         "--reward-model", "tiny/reward", "--prompts", "tiny/prompts.jsonl", "--num-prompts", "6",
         "--response-length", "6", "--gold", "gold.py:gold", "--label-a", "final", "--label-b", "SFT",
         "--device", "cpu", "--out", out],
        cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final beats SFT on" in proc.stdout
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        r = json.load(f)
    assert r["settings"]["device"] == "cpu" and len(r["pairs"]) == 6 and "gold" in r["win_rate"]
    assert os.path.getsize(os.path.join(out, "report.html")) > 10_000


@pytest.mark.parametrize("args, message", [
    (["--policy-a", "missing"], "--policy-a='missing'"),
    (["--prompts", "no_prompt.jsonl"], "no 'prompt' column"),
    (["--reward-model", "rm_undeclared"], "head semantics are not declared"),
    (["--policy-a", "other_vocab"], "different tokenizers"),
    (["--gold", "gold.py:nope"], "has no function 'nope'"),
    (["--device", "nodevice"], "is not a device"),
])
def test_bad_inputs_get_one_line(work, capsys, monkeypatch, args, message):
    monkeypatch.chdir(work)
    base = {"--policy-a": "moved", "--policy-b": "tiny/policy", "--reward-model": "tiny/reward",
            "--prompts": "tiny/prompts.jsonl"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["compare", *[x for kv in base.items() for x in kv], "--num-prompts", "4", "--response-length", "4",
            "--out", "bad_out"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rewardlab compare: error:") and message in err[0], err
    assert not os.path.exists(os.path.join(work, "bad_out", "results.json"))


def test_nan_scores_become_null_and_leave_the_win_rate(tmp_path):
    from rewardlab.compare.stats import summary, win_summary

    w = win_summary([1.0, math.nan, 0.0, 2.0], [0.0, 1.0, 0.0, 3.0])
    assert (w["n"], w["wins"], w["ties"], w["losses"], w["win_rate"]) == (3, 1, 1, 1, 0.5)
    assert summary([math.nan])["n"] == 0
