"""engine.slim_activations: a decoder layer that is not recomputed keeps the inputs of its norms and
SwiGLU product and recomputes their outputs in backward, with the same kernels: the loss and the
gradients are the same bits. What it saves on a GPU is measured by the benchmark (BENCHMARKS.md);
the CUDA test below checks the saved bytes of one forward, not speed."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import assert_same_bits, built, step

from harness.config.engine import EngineConfig
from harness.engine import slim
from harness.engine.kernels import RMSNorm, SwiGLU
from harness.engine.layers import decoder_layers
from harness.errors import ConfigError


def _count_recomputes(monkeypatch) -> list:
    made, value = [], slim.Recipe.value

    def counting(self):
        if self.out is None:
            made.append(self.fn)
        return value(self)

    monkeypatch.setattr(slim.Recipe, "value", counting)
    return made


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_slim_layers_give_the_same_loss_and_gradients(monkeypatch, dropout):
    ids = torch.randint(0, 1000, (2, 24))
    model, _ = built(dropout, lora_kernel="fused")
    ref = step(model, ids)
    model, levers = built(dropout, lora_kernel="fused", slim_activations=True)
    assert levers["slim_layers"] == 2
    made = _count_recomputes(monkeypatch)
    assert_same_bits(step(model, ids), ref)
    # per layer: the two norm outputs (q/k/v and gate/up read them) and the product, once each
    assert len(made) == 2 * 3


def test_slim_layers_are_owned_norms_and_mlps_sharing_one_table_per_layer():
    model, _ = built(lora_kernel="fused", slim_activations=True)
    for layer in decoder_layers(model):
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        assert all(isinstance(n, RMSNorm) for n in norms) and isinstance(layer.mlp, SwiGLU)
        tables = {id(m.recipes) for m in [*norms, layer.mlp, layer.self_attn.q_proj,
                                          layer.mlp.down_proj]}  # fmt: skip
        assert len(tables) == 1 and layer.mlp.recipes.table is None  # live only in a forward
        assert layer._gradient_checkpointing_func.how == layer.mlp.recipes.run


def test_slim_acts_on_the_kept_layers_only(monkeypatch):
    ids = torch.randint(0, 1000, (2, 16))
    ckpt = {"checkpointing": "selective", "checkpoint_fraction": 0.5, "lora_kernel": "fused"}
    model, _ = built(0.1, **ckpt)
    ref = step(model, ids, seed=5)
    model, levers = built(0.1, **ckpt, slim_activations=True)
    assert levers["checkpointed_layers"] == 1 and levers["slim_layers"] == 1
    kept = decoder_layers(model)[1]
    assert isinstance(kept.mlp, SwiGLU) and not isinstance(decoder_layers(model)[0].mlp, SwiGLU)
    made = _count_recomputes(monkeypatch)
    assert_same_bits(step(model, ids, seed=5), ref)
    assert len(made) == 3
    with torch.no_grad():  # eval and generation: nothing is saved, nothing remembered
        model(input_ids=ids)
    assert len(made) == 3


def test_a_recipe_is_matched_by_identity_not_by_address():
    """A tensor allocated where a remembered (and freed) output was is not that output."""
    x = torch.randn(4, 8)
    recipes = slim.Recipes()

    def forward():
        y = recipes.remember((x * 2).view(2, 16).view(4, 8), torch.mul, x, 2)  # a view, as Liger's
        recipe = recipes.find(y.reshape(2, 16))  # any view of it finds the recipe
        assert recipe is not None and torch.equal(recipe.value(), y)
        assert recipes.find(x) is None
        del y, recipe
        assert recipes.find(torch.randn(4, 8)) is None  # the output is gone: no match

    recipes.run(forward)
    assert recipes.table is None and recipes.find(x * 2) is None  # outside the layer's forward


def test_slim_needs_the_fused_op():
    with pytest.raises(ConfigError, match="engine.slim_activations"):
        EngineConfig(slim_activations=True, lora_kernel="peft")


def test_offload_and_selective_take_the_fraction_and_their_defaults():
    for mode, fraction, recomputed in [("offload", None, 2), ("offload", 0.5, 1),
                                       ("selective", None, 1), ("full", 0.5, 2)]:  # fmt: skip
        _, levers = built(checkpointing=mode, checkpoint_fraction=fraction)
        assert levers["checkpointed_layers"] == recomputed, (mode, fraction)


@requires_cuda
@pytest.mark.gpu
def test_slim_layers_keep_fewer_bytes_and_the_same_math_on_cuda():
    """Liger's kernels and the fused op (the fast presets' path): the same loss and gradients, and
    one forward keeps 2 norm outputs + 1 product fewer per layer."""
    ids = torch.randint(0, 1000, (4, 256), device="cuda")
    held, results = {}, {}
    for on in (False, True):
        model = built(0.1, kernels="liger", lora_kernel="fused", slim_activations=on)[0].cuda()
        torch.manual_seed(9)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        held[on] = torch.cuda.memory_allocated() - before
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[on] = (loss.detach(), grads)
    assert_same_bits(results[True], results[False])
    tokens, hidden, ffn = 4 * 256, 64, 128
    expected = 2 * tokens * (2 * hidden + ffn) * 4  # fp32 tiny model, 2 layers
    assert held[False] - held[True] >= 0.9 * expected


def test_no_recomputed_output_outlives_its_ops_while_the_graph_lives():
    """Backward frees each recomputed output once the ops that read it are done, though the graph
    (and every op's context) lives until the loss is dropped."""
    import gc

    model, _ = built(0.1, lora_kernel="fused", slim_activations=True)
    ids = torch.randint(0, 1000, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # `loss` keeps the graph alive
    held = [o for o in gc.get_objects() if isinstance(o, slim.Recipe) and o.out is not None]
    assert not held
    del loss
