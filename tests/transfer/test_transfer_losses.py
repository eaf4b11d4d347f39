import numpy as np
import pytest
import torch

from pkt_core.transfer import losses


def _relation_reference(a: np.ndarray, b: np.ndarray) -> float:
    """1 - linear CKA between two token blocks, written out in float64."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    ka, kb = a @ a.T, b @ b.T
    return 1 - (ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb))


def test_each_loss_is_zero_at_its_supervision():
    states = torch.randn(10, 8, dtype=torch.float64)
    head = torch.randn(30, 8, dtype=torch.float64)
    assert float(losses.layer_cosine_loss(states, states)) == pytest.approx(0, abs=1e-12)
    assert float(losses.relation_geometry_loss([states], [states])) == pytest.approx(0, abs=1e-12)
    assert float(losses.fisher_logit_loss(states, states, head)) == pytest.approx(0, abs=1e-12)
    log_probs = torch.randn(10, 30, dtype=torch.float64).log_softmax(-1)
    assert float(losses.output_kl_loss(log_probs, log_probs)) == pytest.approx(0, abs=1e-12)
    answers = torch.arange(10) % 30
    one_hot = torch.nn.functional.one_hot(answers, 30).double()
    assert float(losses.output_cosine_loss(one_hot, answers)) == pytest.approx(0, abs=1e-12)


def test_relation_loss_matches_a_float64_cka_formula():
    a, b = np.random.default_rng(0).normal(size=(2, 12, 5))
    value = losses.relation_geometry_loss([torch.from_numpy(a)], [torch.from_numpy(b)])
    assert float(value) == pytest.approx(_relation_reference(a, b), abs=1e-12)


def test_fisher_loss_is_the_second_order_kl():
    torch.manual_seed(0)
    head = torch.randn(40, 6, dtype=torch.float64)
    supervision = torch.randn(5, 6, dtype=torch.float64)
    states = supervision + 1e-3 * torch.randn(5, 6, dtype=torch.float64)
    surrogate = float(losses.fisher_logit_loss(states, supervision, head))
    p = (supervision @ head.T).log_softmax(-1)
    q = (states @ head.T).log_softmax(-1)
    exact_kl = float((p.exp() * (p - q)).sum(-1).mean())  # KL(p_sup || p_state)
    assert surrogate == pytest.approx(exact_kl, rel=1e-2)


@pytest.mark.parametrize("name", ["layer_cosine", "relation", "fisher_logit", "output_kl", "output_cosine"])
def test_each_loss_decreases_under_gradient_steps(name):
    torch.manual_seed(1)
    supervision = torch.randn(12, 8)
    head = torch.randn(20, 8)
    state = torch.randn(12, 8, requires_grad=True)
    answers = torch.randint(0, 20, (12,))
    source_log_probs = torch.randn(12, 20).log_softmax(-1)

    def value():
        if name == "layer_cosine":
            return losses.layer_cosine_loss(state, supervision)
        if name == "relation":
            return losses.relation_geometry_loss([state], [supervision])
        if name == "fisher_logit":
            return losses.fisher_logit_loss(state, supervision, head)
        if name == "output_kl":
            return losses.output_kl_loss(state @ head.T, source_log_probs)
        return losses.output_cosine_loss(state @ head.T, answers)

    optimizer = torch.optim.SGD([state], lr=0.05)
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = value()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < history[0]
    assert all(b <= a + 1e-9 for a, b in zip(history, history[1:]))
