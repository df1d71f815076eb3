"""engine.cuda_graphs (harness/engine/graphs.py): the decoder layers' training calls replayed as
CUDA graphs compute the eager layers' loss and gradients bit for bit, with the same device dropout
seeds, over steps whose adapter weights change in place; a call of another shape runs eagerly.
On the CPU: the device seed table (a new mask each forward, the forward's mask in the recompute),
the runner's eager path and the config's refusals. Its speed is measured by the benchmark
(benchmarks/shapes.yaml, BENCHMARKS.md), never asserted here."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import assert_same_bits, build, built, ecfg, step, tiny_peft

from harness.config.engine import EngineConfig
from harness.engine import build as engine
from harness.engine import graphs
from harness.engine.layers import decoder_layers
from harness.errors import ConfigError

FUSED = dict(lora_kernel="fused")


@pytest.mark.parametrize(
    "levers,names",
    [({}, "engine.lora_kernel=fused"),
     ({**FUSED, "checkpointing": "offload"}, "engine.checkpointing=none, full or selective"),
     ({**FUSED, "checkpointing": "selective", "host_layers": 1}, "engine.host_layers=0"),
     ({**FUSED, "slim_activations": True}, "engine.slim_activations=false")],
)  # fmt: skip
def test_cuda_graphs_refuse_what_a_replay_cannot_run(levers, names):
    with pytest.raises(ConfigError) as err:
        EngineConfig(cuda_graphs=True, **levers)
    assert "engine.cuda_graphs" in str(err.value) and names in str(err.value)


def test_cuda_graphs_need_cuda():
    cfg = EngineConfig(cuda_graphs=True, checkpointing="selective", **FUSED)
    with pytest.raises(ConfigError, match="engine.cuda_graphs.*needs CUDA"):
        engine.check(cfg, "cpu")


def test_the_seed_table_draws_new_masks_per_forward_and_the_forward_s_in_the_recompute():
    """Twins with the same generator state: recomputing every layer (checkpointing full) gives
    the loss and gradients of keeping them (none), bit for bit, as the recompute reads the seeds
    the forward read; the next forward redraws them; the CPU runs the layers eagerly."""
    ids = torch.randint(0, 1000, (2, 16))
    kept, levers = built(0.3, layers=3, cuda_graphs=True, **FUSED)
    recomputed, _ = built(0.3, layers=3, cuda_graphs=True, checkpointing="full", **FUSED)
    assert levers["cuda_graph_layers"] == 3
    table = decoder_layers(kept)[0].self_attn.q_proj.seed._base
    assert table.shape == (21,) and table.dtype == torch.int64  # 7 adapted Linear per layer
    first = step(kept, ids)
    seeds = table.clone()
    assert_same_bits(step(recomputed, ids), first)
    assert engine.run_counts(recomputed) == {"graph_replayed_calls": 0, "graph_eager_calls": 3}
    again = step(kept, ids, seed=None)  # the generator moved on: new seeds, new masks
    assert not torch.equal(table, seeds) and not torch.equal(again[0], first[0])


def test_without_dropout_the_graph_runners_change_nothing():
    ids = torch.randint(0, 1000, (2, 16))
    ref, _ = built(0.0, layers=2, checkpointing="selective", **FUSED)
    model, _ = built(0.0, layers=2, checkpointing="selective", cuda_graphs=True, **FUSED)
    assert_same_bits(step(model, ids), step(ref, ids))


def test_a_call_rebuilds_the_layer_s_arguments():
    """What a graph captures (_Call): the call's tensors in, the same arguments rebuilt around
    the fixed ones, the same output as the layer's own call."""
    from torch.utils import _pytree as pytree

    model, _ = built(0.0, layers=1, **FUSED)
    layer = decoder_layers(model)[0]
    hidden = torch.randn(2, 5, 64)
    cos, sin = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    kwargs = {"position_embeddings": (cos, sin), "attention_mask": None, "use_cache": False}
    leaves, spec = pytree.tree_flatten(((hidden,), kwargs))
    fixed = [graphs._TENSOR if isinstance(x, torch.Tensor) else x for x in leaves]
    call = graphs._Call(layer, lambda run, *args: run(*args), spec, fixed)
    assert torch.equal(call(hidden, cos, sin), layer(hidden, **kwargs))
    assert graphs._key(spec, leaves) == graphs._key(spec, [hidden, cos, sin, None, False])
    assert graphs._key(spec, leaves) != graphs._key(spec, [hidden[:1], cos, sin, None, False])
    assert graphs._key(spec, [hidden, cos, sin, object(), False]) is None  # not holdable


def _sgd(model, lr: float = 1e-2) -> None:
    """An update in place, as the optimizer's: the graphs read the parameters where they are."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["none", "selective"])
def test_graphed_layers_compute_the_eager_layers_bits_on_cuda(mode):
    """Twins built on CUDA with the same device seeds: one replays its layers' graphs, the other
    runs the same layers eagerly. Three steps with dropout and updates in place between them:
    the same loss and gradients bit for bit; then a shorter batch runs eagerly in the graphed
    model and still matches."""
    levers = dict(checkpointing=mode, checkpoint_fraction=0.5, trim_recompute=mode != "none",
                  **FUSED)  # fmt: skip
    twins = []
    for on in (True, False):
        cfg = ecfg(cuda_graphs=on, **levers)
        model = tiny_peft(cfg, dropout=0.1, layers=4, checkpointing=mode != "none").cuda()
        build(model, cfg)
        twins.append(model)
    graphed, eager = twins
    seeds = graphs.DropoutSeeds(eager, "cuda")  # redrawn where the graphed twin redraws its own
    eager.get_base_model().model.register_forward_pre_hook(lambda *_: seeds.refresh())
    for seq in (16, 16, 16, 9):
        ids = torch.randint(0, 1000, (2, seq), device="cuda")
        ours, ref = step(graphed, ids, seed=seq), step(eager, ids, seed=seq)
        assert_same_bits(ours, ref)
        _sgd(graphed), _sgd(eager)
    counts = engine.run_counts(graphed)
    assert counts == {"graph_replayed_calls": 3 * 4, "graph_eager_calls": 4}, counts
