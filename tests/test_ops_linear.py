"""sliced_linear: F.linear's numbers in slices of the weight's rows, and in-place gradient accumulation."""

import pytest
import torch

from rewardlab.ops.linear import sliced_linear


def _leaves(n_out: int, n_in: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(n_out, n_in, generator=g) * 0.1).requires_grad_()
    b = torch.randn(n_out, generator=g).requires_grad_() if bias else None
    hidden = torch.randn(3, 7, n_in, generator=g).requires_grad_()
    return hidden, weight, b


def _run(fn, hidden, weight, b):
    x = hidden[:, 2:, :]  # a non-contiguous slice, like the positions logits_to_keep selects
    out = fn(x, weight, b)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    grads = [t.grad.clone() for t in (hidden, weight, b) if t is not None]
    for t in (hidden, weight, b):
        if t is not None:
            t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("n_out", "n_in", "rows"), [(300, 16, 64), (5000, 64, 256), (1001, 24, 100), (50257, 32, 1024)])
def test_logits_and_gradients_are_bitwise_those_of_f_linear(n_out, n_in, rows, bias):
    leaves = _leaves(n_out, n_in, bias)
    ref_out, ref_grads = _run(torch.nn.functional.linear, *leaves)
    out, grads = _run(lambda x, w, b: sliced_linear(x, w, b, rows), *leaves)
    assert torch.equal(out, ref_out)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.equal(a, b)


def test_without_gradients_and_for_two_dimensional_input():
    _, weight, b = _leaves(400, 8, True)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(sliced_linear(x, weight, b, 64), torch.nn.functional.linear(x, weight, b))


def test_falls_back_to_f_linear_where_slicing_is_not_used():
    _, weight, _ = _leaves(300, 8, False)
    x = torch.randn(2, 8, requires_grad=True)

    def sliced(*args):
        return sliced_linear(*args).grad_fn.name() == "_SlicedLinearBackward"

    assert sliced(x, weight, None, 64)
    assert not sliced(x, weight, None, 75)  # 300 rows are not more than 4 slices of 75: one matmul
    assert not sliced(x, weight, None, 0)  # 0: off
    assert not sliced(x.double(), weight.double(), None, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sliced_linear(x, weight, None, 64).dtype == torch.bfloat16  # autocast's own F.linear
    with pytest.raises(ValueError, match="rows=16 must be 0 .off. or ≥ 64"):
        sliced_linear(x, weight, None, 16)


def test_slices_are_never_narrower_than_rows():
    from rewardlab.ops.linear import _slices

    assert _slices(300, 64) == [(0, 64), (64, 128), (128, 192), (192, 300)]
    assert _slices(256, 64) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert _slices(50, 64) == [(0, 50)]


def test_accumulate_grad_adds_into_an_existing_grad_buffer():
    hidden, weight, _ = _leaves(500, 16, False)
    ref_out, (ref_gx, ref_gw) = _run(torch.nn.functional.linear, hidden, weight, None)
    start = torch.randn(weight.shape)
    weight.grad = start.clone()
    out = sliced_linear(hidden[:, 2:, :], weight, None, 64, accumulate_grad=True)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(weight.grad, start + ref_gw, rtol=1e-6, atol=1e-6)
    assert torch.equal(hidden.grad, ref_gx)
    # No buffer: the gradient is returned as usual (autograd stores it).
    hidden.grad, weight.grad = None, None
    _, (gx, gw) = _run(lambda x, w, b: sliced_linear(x, w, b, 64, accumulate_grad=True), hidden, weight, None)
    assert torch.equal(gw, ref_gw) and torch.equal(gx, ref_gx)


def test_a_tied_embedding_gradient_is_added_in_place():
    # A weight used by a sparse embedding and by the head: autograd sums the head's dense gradient and
    # the embedding's sparse one out of place (a copy of the whole (V, D) gradient) unless the head adds
    # its part into .grad itself.
    from torch.profiler import profile

    def backward(accumulate):
        g = torch.Generator().manual_seed(0)
        weight = (torch.randn(4000, 16, generator=g) * 0.1).requires_grad_()
        weight.grad = torch.zeros_like(weight)
        ids = torch.randint(0, 4000, (4, 9), generator=g)
        ids[0, :3] = 5  # a repeated token
        with profile(record_shapes=True) as prof:
            h = torch.nn.functional.embedding(ids, weight, sparse=True)
            sliced_linear(torch.tanh(h), weight, None, 256, accumulate_grad=accumulate).logsumexp(-1).sum().backward()
        copies = [e for e in prof.events() if e.name == "aten::copy_" and e.input_shapes and e.input_shapes[0] == [4000, 16]]
        return weight.grad, len(copies)

    ref, ref_copies = backward(False)
    grad, copies = backward(True)
    assert ref_copies >= 1 and copies == 0
    assert torch.equal(grad, ref)
