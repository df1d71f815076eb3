"""train.slim_activations: a decoder layer that is not recomputed keeps the inputs of its norms and
SwiGLU product and recomputes their outputs in backward, with the same kernels: the loss and the
gradients are the same bits. What it saves on a GPU is measured by the benchmark (BENCHMARKS.md);
the CUDA test below checks the saved bytes of one forward, not speed."""

import pytest
import torch
from conftest import loss_and_grads, requires_cuda
from test_levers import _apply, _tiny_peft

from harness.config.schema import TrainConfig
from harness.engine import build as levers
from harness.engine import slim
from harness.errors import ConfigError


def _count_recomputes(monkeypatch) -> list:
    made, value = [], slim._Recipe.value

    def counting(self):
        if self.out is None:
            made.append(self.fn)
        return value(self)

    monkeypatch.setattr(slim._Recipe, "value", counting)
    return made


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_slim_layers_give_the_same_loss_and_gradients(monkeypatch, dropout):
    lora_kernel = "fused"
    model = _tiny_peft(dropout=dropout)
    ids = torch.randint(0, 1000, (2, 24))
    _apply(model, lora_kernel=lora_kernel, checkpointing="none")
    torch.manual_seed(3)
    loss_ref, grads_ref = loss_and_grads(model, ids)
    applied = _apply(model, lora_kernel=lora_kernel, checkpointing="none", slim_activations=True)
    assert applied["slim_layers"] == 2
    made = _count_recomputes(monkeypatch)
    torch.manual_seed(3)
    loss, grads = loss_and_grads(model, ids)
    assert torch.equal(loss, loss_ref)
    for name, grad in grads_ref.items():
        assert torch.equal(grads[name], grad), name
    # per layer: the two norm outputs (q/k/v and gate/up read them) and the product, once each
    assert len(made) == 2 * 3
    made.clear()
    _apply(model, lora_kernel=lora_kernel, checkpointing="none")  # undone on the same instance
    marks = [vars(m).get(levers._MARK) == "slim" or slim._HOOK in vars(m) for m in model.modules()]
    assert not any(marks)
    torch.manual_seed(3)
    assert torch.equal(loss_and_grads(model, ids)[0], loss_ref) and not made


def test_slim_acts_on_the_kept_layers_only(monkeypatch):
    model = _tiny_peft(dropout=0.1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 1000, (2, 16))
    ckpt = {"checkpointing": "selective", "checkpoint_fraction": 0.5, "lora_kernel": "fused"}
    _apply(model, **ckpt)
    torch.manual_seed(5)
    loss_ref, grads_ref = loss_and_grads(model, ids)
    applied = _apply(model, **ckpt, slim_activations=True)
    assert applied["checkpointed_layers"] == 1 and applied["slim_layers"] == 1
    made = _count_recomputes(monkeypatch)
    torch.manual_seed(5)
    loss, grads = loss_and_grads(model, ids)
    assert torch.equal(loss, loss_ref) and len(made) == 3
    for name, grad in grads_ref.items():
        assert torch.equal(grads[name], grad), name
    with torch.no_grad():  # eval and generation: nothing is saved, nothing remembered
        model(input_ids=ids)
    assert len(made) == 3


def test_a_recipe_is_matched_by_identity_not_by_address():
    """A tensor allocated where a remembered (and freed) output was is not that output."""
    x = torch.randn(4, 8)
    slim._TABLES.append({})
    try:
        y = slim.remember((x * 2).view(2, 16).view(4, 8), torch.mul, x, 2)  # a view, as Liger's
        recipe = slim.recipe_for(y.reshape(2, 16))  # any view of it finds the recipe
        assert recipe is not None and torch.equal(recipe.value(), y)
        assert slim.recipe_for(x) is None
        del y, recipe
        assert slim.recipe_for(torch.randn(4, 8)) is None  # the output is gone: no match
    finally:
        slim._TABLES.pop()
    assert slim.recipe_for(x * 2) is None  # outside a slim layer's forward: nothing


def test_slim_needs_the_fused_op():
    with pytest.raises(ConfigError, match="train.slim_activations"):
        TrainConfig(slim_activations=True, lora_kernel="peft")


def test_offload_and_selective_take_the_fraction_and_their_defaults():
    model = _tiny_peft()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for mode, fraction, recomputed in [("offload", None, 2), ("offload", 0.5, 1),
                                       ("selective", None, 1), ("full", 0.5, 2)]:  # fmt: skip
        applied = _apply(model, checkpointing=mode, checkpoint_fraction=fraction)
        assert applied["checkpointed_layers"] == recomputed, (mode, fraction)


@requires_cuda
def test_slim_layers_keep_fewer_bytes_and_the_same_math_on_cuda():
    """Liger's kernels and the fused op (the fast presets' path): the same loss and gradients, and
    one forward keeps 2 norm outputs + 1 product fewer per layer."""
    model = _tiny_peft(dropout=0.1).cuda()
    ids = torch.randint(0, 1000, (4, 256), device="cuda")
    kw = {"kernels": "liger", "lora_kernel": "fused", "checkpointing": "none"}
    held = {}
    for on in (False, True):
        _apply(model, **kw, slim_activations=on)
        torch.manual_seed(9)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        held[on] = torch.cuda.memory_allocated() - before
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        if not on:
            loss_ref, grads_ref = loss.detach(), grads
    assert torch.equal(loss.detach(), loss_ref)
    for name, grad in grads_ref.items():
        assert torch.equal(grads[name], grad), name
    tokens, hidden, ffn = 4 * 256, 64, 128
    expected = 2 * tokens * (2 * hidden + ffn) * 4  # fp32 tiny model, 2 layers
    assert held[False] - held[True] >= 0.9 * expected


def test_no_recomputed_output_outlives_its_ops_while_the_graph_lives():
    """Backward frees each recomputed output once the ops that read it are done, though the graph
    (and every op's context) lives until the loss is dropped."""
    import gc

    model = _tiny_peft(dropout=0.1)
    _apply(model, lora_kernel="fused", checkpointing="none", slim_activations=True)
    ids = torch.randint(0, 1000, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # `loss` keeps the graph alive
    held = [o for o in gc.get_objects() if isinstance(o, slim._Recipe) and o.out is not None]
    assert not held
    del loss
