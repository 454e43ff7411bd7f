"""Study tasks: gold rewards on hand-made cases, preference sampling, the closed-form bandit."""

from __future__ import annotations

import numpy as np
import pytest

from rewardlab.errors import RewardlabError
from rewardlab.study.tasks.bandit import BanditTask, transformed_reward
from rewardlab.study.tasks.base import Task, TaskHandle, check_lengths, load_task, task_identity
from rewardlab.study.tasks.brackets import BracketTask
from rewardlab.study.tasks.digits import DigitSumTask


def test_digit_gold_on_hand_made_cases():
    t = DigitSumTask()
    prompts = ["T10 =", "T10 =", "T10 =", "T20 =", "T10 =", "T10 ="]
    responses = ["9 1", "5 5", "9 9", "5 5", "1 2 3 4 0 0", "5 = 5"]
    finished = [True, False, True, True, True, True]
    g = t.gold(prompts, responses, finished)
    expected = [
        0.0 + 0.1,  # exact sum, EOS
        0.0,  # exact sum, no EOS
        -8 / 10 + 0.1,  # overshoot by 8
        -10 / 20 + 0.1,  # undershoot a larger target: same gap, smaller normalised error
        -0.0 - 0.15 * 2 + 0.1,  # 6 tokens: 2 beyond the free length
        -0.2 + 0.1,  # one non-digit token
    ]
    np.testing.assert_allclose(g, expected)


def test_digit_demonstrations_undershoot_with_2_to_4_digits():
    t = DigitSumTask()
    rng = np.random.default_rng(0)
    prompts = t.sample_prompts(400, rng)
    demos = t.demonstrations(prompts, rng)
    lengths = [len(d.split()) for d in demos]
    assert min(lengths) == 2 and max(lengths) == 4
    ratio = np.mean([sum(map(int, d.split())) / t.target_of(p) for p, d in zip(prompts, demos)])
    assert 0.6 < ratio < 0.8
    tok = t.build_tokenizer()
    ids = tok(prompts[0] + " " + demos[0], add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids


def test_load_task():
    task = load_task("rewardlab.study.tasks.digits:DigitSumTask")
    assert isinstance(task, Task) and task.name == "digits"
    with pytest.raises(RewardlabError, match="module:object"):
        load_task("digits")
    assert load_task("rewardlab.study.tasks.brackets:BracketTask").name == "brackets"
    with pytest.raises(RewardlabError, match="no attribute"):
        load_task("rewardlab.study.tasks.digits:Nope")
    with pytest.raises(RewardlabError, match="does not follow the Task protocol"):
        load_task("rewardlab.study.tasks.bandit:BanditTask")


def test_bandit_preferences_follow_bradley_terry_sampling():
    world = BanditTask(n_prompts=2, n_responses=2).build(0)
    # Force a known gold gap between the two responses of prompt 0 and sample many pairs.
    world.gold[:] = np.array([[0.0, 1.0], [0.0, 1.0]])
    rng = np.random.default_rng(0)
    tau = 0.7
    x, chosen, rejected = world.sample_preferences(20000, rng, tau=tau)
    mixed = chosen != rejected
    freq = np.mean(chosen[mixed] == 1)
    expected = 1 / (1 + np.exp(-1.0 / tau))
    se = np.sqrt(expected * (1 - expected) / mixed.sum())
    assert abs(freq - expected) < 4 * se
    # Label flips move the frequency toward 1/2 exactly as mixing says.
    x, chosen, rejected = world.sample_preferences(20000, np.random.default_rng(1), tau=tau, flip=0.2)
    mixed = chosen != rejected
    flipped = 0.8 * expected + 0.2 * (1 - expected)
    assert abs(np.mean(chosen[mixed] == 1) - flipped) < 4 * np.sqrt(flipped * (1 - flipped) / mixed.sum())


def test_bandit_optimal_policy_and_over_optimisation():
    world = BanditTask().build(0)
    x, c, r = world.sample_preferences(2000, np.random.default_rng(1), tau=0.5)
    proxy = world.fit_proxy(x, c, r)
    # π* maximises E[f] − β KL: check against random perturbations of it.
    beta = 0.5
    pi = world.optimal_policy(proxy, beta)
    objective = world.expected(pi, proxy) - beta * world.kl(pi)
    rng = np.random.default_rng(2)
    for _ in range(5):
        other = pi * np.exp(0.3 * rng.normal(size=pi.shape))
        other /= other.sum(axis=1, keepdims=True)
        assert world.expected(other, proxy) - beta * world.kl(other) < objective
    betas = np.geomspace(3, 0.02, 12)
    front = world.frontier(transformed_reward(world, proxy, "raw"), betas, proxy)
    gold = [row["gold"] for row in front]
    proxies = [row["proxy"] for row in front]
    assert np.argmax(gold) < len(gold) - 1 and gold[-1] < max(gold) - 0.1  # gold rises then falls
    assert proxies[-1] == pytest.approx(max(proxies), abs=1e-6)  # proxy keeps rising


def test_bandit_centred_transforms_ignore_prompt_offsets():
    world = BanditTask(n_prompts=8, n_responses=16).build(0)
    proxy = world.gold * 0.5
    offsets = np.random.default_rng(3).normal(0, 5, size=8)
    for spec in ("lsc(q=0.5)", "par", "center"):
        np.testing.assert_allclose(
            transformed_reward(world, proxy, spec, offsets=offsets), transformed_reward(world, proxy, spec), atol=1e-5
        )
    assert np.abs(
        transformed_reward(world, proxy, "logsigmoid", offsets=offsets) - transformed_reward(world, proxy, "logsigmoid")
    ).max() > 0.01


def test_bt_labels_match_sigmoid_frequencies():
    from rewardlab.study.preferences import bt_labels

    rng = np.random.default_rng(0)
    g1, g2 = np.full(40000, 0.3), np.full(40000, -0.2)
    for tau in (0.25, 1.0):
        p = 1 / (1 + np.exp(-0.5 / tau))
        freq = bt_labels(g1, g2, rng, tau).mean()
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 40000)
    with pytest.raises(ValueError, match="tau"):
        bt_labels(g1, g2, rng, 0.0)


def test_bracket_gold_depends_on_structure():
    t = BracketTask(error_penalty=0.15)
    prompts = ["( [ =", "( [ =", "( [ =", "( [ =", "( [ =", "{ ="]
    responses = ["] )", ") ]", "]", "] ) )", "] ) ", "] )"]
    finished = [True, True, True, True, False, True]
    expected = [
        1.0 + 0.1,  # both closed in order
        0.0 - 0.15 * 2 + 0.1,  # the same closers in the wrong order: nothing matched, two errors
        0.5 + 0.1,  # the inner one closed
        1.0 - 0.15 + 0.1,  # one closer beyond the depth
        1.0,  # no EOS
        0.0 - 0.15 * 2 + 0.1,  # wrong kind
    ]
    np.testing.assert_allclose(t.gold(prompts, responses, finished), expected)


def test_bracket_prompts_vary_in_length_and_demonstrations_undershoot():
    t = BracketTask()
    rng = np.random.default_rng(0)
    prompts = t.sample_prompts(400, rng)
    assert {len(p.split()) - 1 for p in prompts} == set(range(t.min_depth, t.max_depth + 1))
    demos = t.demonstrations(prompts, rng)
    gold = t.gold(prompts, demos, [True] * len(demos))
    assert 0.3 < gold.mean() < 0.8 and gold.max() <= 1.1
    tok = t.build_tokenizer()
    check_lengths(t, tok, prompts, demos)  # within the declared lengths
    assert max(len(tok(p)["input_ids"]) for p in prompts) == t.max_prompt_tokens


def test_check_lengths_refuses_what_does_not_fit():
    t = BracketTask(max_response_tokens=3)
    tok = t.build_tokenizer()
    with pytest.raises(RewardlabError, match="max_response_tokens=3"):
        check_lengths(t, tok, ["( ="], [") ) ) )"])
    tok.model_max_length = 8
    with pytest.raises(RewardlabError, match="model_max_length=8"):
        check_lengths(BracketTask(), tok, ["( ="])


TASK_FILE = """
from dataclasses import dataclass
from rewardlab.study.tasks.digits import DigitSumTask


@dataclass
class FileTask(DigitSumTask):
    name: str = "from-a-file"
"""


def test_load_task_from_a_file_path_or_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "file_task_mod.py"
    path.write_text(TASK_FILE)
    monkeypatch.chdir(tmp_path)
    assert load_task("sub/file_task_mod.py:FileTask").name == "from-a-file"  # a path, relative to the current folder
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path / "sub"))])
    assert load_task("file_task_mod:FileTask").name == "from-a-file"  # a module in the current folder
    with pytest.raises(RewardlabError, match="does not exist"):
        load_task("nope/missing.py:FileTask")


def test_task_identity_and_handle(tmp_path):
    path = tmp_path / "ident_task.py"
    path.write_text(TASK_FILE)
    task = load_task(f"{path}:FileTask")
    before = task_identity(task)
    assert before["class"] == f"{path}:FileTask" and before["params"]["name"] == "from-a-file"
    assert task_identity(DigitSumTask(eos_bonus=2.0)) != task_identity(DigitSumTask())  # parameters
    path.write_text(TASK_FILE + "\n# edited\n")
    assert task_identity(task)["source_sha256"] != before["source_sha256"]  # source
    moved = TaskHandle.of(DigitSumTask(eos_bonus=2.0)).load()
    assert moved.eos_bonus == 2.0


def test_sort_gold_rewards_the_prompts_digits_in_global_order():
    from rewardlab.study.tasks.sorting import SortTask, lcs_length

    t = SortTask(error_penalty=0.15)
    prompts = ["7 2 9 4 ="] * 7 + ["3 1 2 ="]
    responses = ["2 4 7 9", "2 4 7 9", "2 7 4 9", "2 4 9", "1 2 3 4 5", "2 2 4 7 9", "9 7 4 2", "1 2 3"]
    finished = [True, False, True, True, True, True, True, True]
    expected = [
        1.0 + 0.1,  # sorted, EOS
        1.0,  # sorted, no EOS
        3 / 4 - 0.15 + 0.1,  # one adjacent swap: 3 of 4 in order, one error
        3 / 4 + 0.1,  # one digit left out
        2 / 4 - 0.15 * 3 + 0.1,  # ascending-looking, but only 2 and 4 are the prompt's: three errors
        1.0 - 0.15 + 0.1,  # a repeat is an error
        1 / 4 - 0.15 * 3 + 0.1,  # the prompt's digits in reverse: one in order
        1.0 + 0.1,  # another prompt, another size
    ]
    np.testing.assert_allclose(t.gold(prompts, responses, finished), expected)
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4  # the textbook case
    with pytest.raises(ValueError, match="sorting-task prompt"):
        t.gold(["7 2 a ="], ["2 7"], [True])


def test_sort_demonstrations_are_imperfect_but_valid():
    from rewardlab.study.tasks.sorting import SortTask

    t = SortTask()
    rng = np.random.default_rng(0)
    prompts = t.sample_prompts(600, rng)
    sizes = {len(p.split()) - 1 for p in prompts}
    assert sizes == set(range(t.min_items, t.max_items + 1))
    assert all(len(set(p.split()[:-1])) == len(p.split()) - 1 for p in prompts)  # distinct digits
    demos = t.demonstrations(prompts, rng)
    for p, d in zip(prompts, demos):  # only the prompt's digits, each at most once
        assert set(d.split()) <= set(p.split()[:-1]) and len(set(d.split())) == len(d.split())
    gold = t.gold(prompts, demos, [True] * len(demos))
    perfect = t.gold(prompts, [" ".join(t.sorted_items(p)) for p in prompts], [True] * len(prompts))
    assert np.all(perfect == pytest.approx(1.1)) and 0.6 < gold.mean() < 0.9  # room above the demonstrations
    assert np.mean(gold < 1.1 - 1e-9) > 0.5
    tok = t.build_tokenizer()
    check_lengths(t, tok, prompts, demos)
    assert max(len(tok(p)["input_ids"]) for p in prompts) == t.max_prompt_tokens
    assert tok.unk_token_id not in tok(prompts[0] + " " + demos[0], add_special_tokens=False)["input_ids"]


def test_sort_task_loads_has_its_identity_and_travels():
    from rewardlab.study.multi import BUILTIN_TASKS
    from rewardlab.study.tasks.sorting import SortTask

    task = load_task(BUILTIN_TASKS["sorting"])
    assert isinstance(task, Task) and task.name == "sorting" and task.max_response_tokens >= task.max_items
    assert task_identity(SortTask(error_penalty=0.3)) != task_identity(SortTask())
    assert task_identity(SortTask())["class"] == "rewardlab.study.tasks.sorting:SortTask"
    assert TaskHandle.of(SortTask(max_items=5)).load().max_items == 5
    # As cheap as the other built-in tasks: no longer prompts or responses.
    assert task.max_prompt_tokens <= BracketTask().max_prompt_tokens
    assert task.max_response_tokens <= BracketTask().max_response_tokens
    with pytest.raises(ValueError, match="max_response_tokens"):
        SortTask(max_items=9)
