"""SASRec forward: shapes, causality, padding invariance, config validation."""
import pytest
import torch
from torch import nn

from qat import SASRec, SASRecConfig


def tiny(**kw):
    torch.manual_seed(0)
    cfg = SASRecConfig(num_items=30, max_len=8, hidden=16, blocks=2, heads=2, dropout=0.0, **kw)
    return SASRec(cfg).eval()


def test_shapes_and_tied_scores():
    model = tiny()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9]])
    hidden = model(seq)
    assert hidden.shape == (2, 8, 16)
    scores = model.score_last(seq)
    assert scores.shape == (2, 31)
    torch.testing.assert_close(scores, hidden[:, -1] @ model.item_emb.weight.t())


def test_no_multihead_attention_module():
    # nn.MultiheadAttention breaks prepare_qat (docs/design.md, section 2): the model must use
    # explicit Linears
    assert not any(isinstance(m, nn.MultiheadAttention) for m in tiny().modules())
    names = {n for n, m in tiny().named_modules() if isinstance(m, nn.Linear)}
    assert {"blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj",
            "blocks.0.attn.out_proj", "blocks.0.ffn.fc1", "blocks.0.ffn.fc2"} <= names


def test_causal_future_items_do_not_change_the_past():
    model = tiny()
    a = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 5:] = torch.tensor([20, 21, 22])
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :5], model(b)[:, :5])
        assert not torch.allclose(model(a)[:, 5:], model(b)[:, 5:])


def test_left_padding_amount_does_not_change_outputs():
    model = tiny()
    full = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(full)[:, -1], model(full[:, 4:])[:, -1],
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model(full)[:, -1], model(full[:, 2:])[:, -1],
                                   atol=1e-6, rtol=1e-6)


def test_padding_rows_of_embeddings_start_at_zero():
    model = tiny()
    assert model.item_emb.weight[0].abs().sum() == 0
    assert model.pos_emb.weight[0].abs().sum() == 0


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        tiny()(torch.ones(1, 9, dtype=torch.long))


@pytest.mark.parametrize("kw, match", [
    (dict(hidden=10, heads=3), "divisible by heads"),
    (dict(max_len=0), r"max_len \(--max-len\) must be a positive integer, got 0"),
    (dict(num_items=0), r"SASRecConfig.num_items must be a positive integer"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_config(kw, match):
    base = dict(num_items=10, hidden=16, heads=1)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        SASRecConfig(**base)
