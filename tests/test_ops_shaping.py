import torch

from rewardlab.ops.shaping import shape_rewards


def test_score_at_the_last_real_token_and_kl_on_every_token():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]])  # 0 on padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, non_score = shape_rewards(scores, kl, mask, beta=0.5, kl_in_reward=True)
    # row 0: −β·KL on each token, the score added at t = 2; row 1: one real token, score and KL at t = 0
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.2 - 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([-0.3, -0.2]))


def test_kl_as_a_loss_leaves_only_the_score():
    rewards, non_score = shape_rewards(torch.tensor([3.0]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 1]]),
                                       beta=1.0, kl_in_reward=False)
    assert rewards.tolist() == [[0.0, 3.0]] and non_score.tolist() == [0.0]


def test_inputs_are_not_changed():
    kl = torch.tensor([[0.1, 0.2]])
    before = kl.clone()
    shape_rewards(torch.tensor([1.0]), kl, torch.tensor([[1, 1]]), beta=0.0, kl_in_reward=True)
    assert torch.equal(kl, before)
