"""``sgd_step`` is ``torch.optim.SGD``'s update (no dampening, no Nesterov): momentum, weight decay, both and neither,
over several steps whose gradients change, to float64 rounding."""

import pytest
import torch

from challenge_kit.optim import sgd_step

D = torch.float64


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 5e-4), (0.9, 5e-4)])
def test_sgd_step_is_torch_sgd(momentum, weight_decay):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(64, generator=g, dtype=D)
    q = start.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([q], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    p, buf = start.clone(), None
    for step in range(5):
        grad = torch.randn(64, generator=g, dtype=D)
        q.grad = grad.clone()
        optimizer.step()
        p, buf = sgd_step(p, grad, 0.1, momentum, weight_decay, buf)
        torch.testing.assert_close(p, q.detach(), rtol=1e-14, atol=1e-15, msg=lambda m, step=step: f"step {step}: {m}")
        if momentum:
            torch.testing.assert_close(buf, optimizer.state[q]["momentum_buffer"], rtol=1e-14, atol=1e-15)
        else:
            assert buf is None


def test_without_momentum_or_weight_decay_it_is_plain_gradient_descent():
    p, grad = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([0.5, 4.0], dtype=D)
    stepped, buf = sgd_step(p, grad, 0.1)
    assert stepped.tolist() == [1.0 - 0.1 * 0.5, -2.0 - 0.1 * 4.0] and buf is None
