"""The answer-only LM-head projection and online DPO's pair loss, against brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.losses import answer_logits, project_labelled_positions

N, L, H, V = 2, 6, 4, 11


def brute_force(full_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position projected; keep position t of row n when labels[n, t+1] is a target."""
    rows, targets = [], []
    for n in range(labels.size(0)):
        for t in range(labels.size(1) - 1):
            if labels[n, t + 1] != -100:
                rows.append(full_logits[n, t])
                targets.append(labels[n, t + 1])
    return torch.stack(rows).float(), torch.stack(targets)


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, L, H, generator=g)
    labels = torch.full((N, L), -100)
    labels[0, 3:] = torch.tensor([5, 1, 9])  # a 3-token answer at the end
    labels[1, 2:4] = torch.tensor([7, 0])  # a 2-token answer followed by padding
    return hidden, labels


def test_projection_equals_the_full_vocab_projection_on_labelled_positions():
    hidden, labels = make_inputs()
    head = torch.nn.Linear(H, V, bias=False)
    seen: list[int] = []

    def counting_head(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.size(0))
        return head(x)

    logits, target, mask = project_labelled_positions(hidden, labels, counting_head)
    want_logits, want_target = brute_force(head(hidden), labels)
    assert seen == [5]  # only the 5 answer positions went through the head, not N * (L-1) = 10
    assert logits.shape == (5, V) and logits.dtype == torch.float32
    assert torch.allclose(logits, want_logits, atol=1e-6)
    assert target.tolist() == want_target.tolist() == [5, 1, 9, 7, 0]
    assert mask.tolist() == [[False, False, True, True, True], [False, True, True, False, False]]
    full_loss = F.cross_entropy(head(hidden)[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(F.cross_entropy(logits, target), full_loss, atol=1e-6)


def test_half_precision_head_gives_float32_logits():
    hidden, labels = make_inputs()
    head = torch.nn.Linear(H, V).to(torch.bfloat16)
    logits, _, _ = project_labelled_positions(hidden.to(torch.bfloat16), labels, head)
    assert logits.dtype == torch.float32


def test_answer_logits_on_a_tiny_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )
    model.eval()
    input_ids = torch.randint(0, V, (N, L), generator=torch.Generator().manual_seed(1))
    _, labels = make_inputs()
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        logits, target, mask = answer_logits(model, input_ids, labels, attention_mask=attention_mask)
        full = model(input_ids=input_ids, attention_mask=attention_mask).logits
    want_logits, want_target = brute_force(full, labels)
    assert torch.allclose(logits, want_logits, atol=1e-5)
    assert torch.equal(target, want_target) and int(mask.sum()) == 5


# --------------------------------------------------------------------------- online DPO


def _brute_dpo(policy, ref, pairs, beta):
    terms = []
    for w, l_ in pairs:
        m = beta * ((policy[w] - ref[w]) - (policy[l_] - ref[l_]))
        terms.append(-torch.log(torch.sigmoid(m)))
    return torch.stack(terms).mean()


def test_online_dpo_pairs_each_groups_best_and_worst_and_skips_ties():
    from finetune.losses import online_dpo_loss

    policy = torch.tensor([-3.0, -5.0, -2.0, -7.0, -1.0, -1.5, -4.0, -6.0], requires_grad=True)
    ref = torch.tensor([-3.5, -4.0, -2.5, -6.0, -1.0, -2.0, -4.0, -5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    # group 0: best row 2 (0.9), worst row 3 (0.0); group 1: a tie (no pair); group 2: best 7, worst 6
    scores = torch.tensor([0.5, 0.1, 0.9, 0.0, 0.3, 0.3, -1.0, 1.0])
    loss, stats = online_dpo_loss(policy, ref, groups, scores, beta=0.1)
    expected = _brute_dpo(policy, ref, [(2, 3), (7, 6)], 0.1)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert stats["pairs"] == 2.0
    m = [0.1 * ((-2.0 + 2.5) - (-7.0 + 6.0)), 0.1 * ((-6.0 + 5.0) - (-4.0 + 4.0))]
    assert stats["margin"] == pytest.approx(sum(m) / 2, rel=1e-5)
    assert stats["accuracy"] == pytest.approx(0.5)
    loss.backward()
    assert policy.grad is not None and float(policy.grad[4].abs() + policy.grad[5].abs()) == 0.0  # the tied group


def test_online_dpo_without_a_pair_is_a_zero_that_keeps_the_graph():
    from finetune.losses import online_dpo_loss

    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, stats = online_dpo_loss(policy, torch.zeros(2), torch.tensor([0, 0]), torch.tensor([0.4, 0.4]), beta=0.1)
    assert float(loss) == 0.0 and stats["pairs"] == 0.0
    loss.backward()
    assert policy.grad is not None


def test_group_ids_groups_rows_by_their_left_padded_prompt():
    from finetune.losses import group_ids

    ids = torch.tensor([[0, 5, 6], [7, 5, 6], [9, 9, 8], [0, 5, 6], [3, 9, 8]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]])
    g = group_ids(ids, mask).tolist()
    assert g[0] == g[1] == g[3]  # the same prompt whatever the padding token
    assert len({g[0], g[2], g[4]}) == 3
