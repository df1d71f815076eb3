"""engine.causal_padding: a right-padded batch runs without its padding mask, with the same loss
and gradients (the causal mask already hides trailing padding from every real token)."""

import torch
from conftest import compose_cfg
from engine_models import tiny_4bit

from harness.config.schema import to_trial_config
from harness.trial.train import CountingCollator


def _batch(pad_side: str, *, loss_on_pad: bool = False) -> dict:
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (2, 24))
    mask = torch.ones_like(ids)
    pad = slice(16, None) if pad_side == "right" else slice(0, 8)
    mask[1, pad], ids[1, pad] = 0, 0
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    if not loss_on_pad:
        labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _collate(batch: dict, on: bool = True) -> tuple[dict, int]:
    collator = CountingCollator(lambda features: {k: v.clone() for k, v in batch.items()},
                                causal_padding=on)  # fmt: skip
    out = collator([0, 1])
    assert collator.take() == (int((batch["labels"][:, 1:] != -100).sum()), 48, 2)  # counted as is
    return out, collator.unmasked_batches


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_causal_padding_is_composed_off_and_on_in_the_fast_presets():
    assert to_trial_config(compose_cfg([])).engine.causal_padding is False
    assert to_trial_config(compose_cfg(["engine=plain"])).engine.causal_padding is False
    for engine in ("fast", "lean", "exact", "max"):
        assert to_trial_config(compose_cfg([f"engine={engine}"])).engine.causal_padding is True


def test_only_trailing_padding_without_loss_runs_unmasked():
    right = _batch("right")
    out, n = _collate(right)
    assert n == 1 and bool(out["attention_mask"].all())
    for batch in (_batch("left"), _batch("right", loss_on_pad=True)):
        out, n = _collate(batch)
        assert n == 0 and torch.equal(out["attention_mask"], batch["attention_mask"])
    out, n = _collate(right, on=False)
    assert n == 0 and torch.equal(out["attention_mask"], right["attention_mask"])
    full = {k: v[:1] for k, v in right.items()}  # no padding: nothing to change
    collator = CountingCollator(lambda features: dict(full), causal_padding=True)
    assert collator([0])["attention_mask"] is full["attention_mask"]
    assert collator.unmasked_batches == 0


def test_causal_padding_keeps_loss_and_gradients_of_the_4bit_model():
    model = tiny_4bit()
    right = _batch("right")
    loss_ref, grads_ref = _loss_and_grads(model, right)
    unmasked, n = _collate(right)
    assert n == 1
    loss, grads = _loss_and_grads(model, unmasked)
    assert torch.allclose(loss, loss_ref, rtol=1e-5, atol=1e-6), (loss, loss_ref)
    for name, g in grads.items():
        assert torch.allclose(g, grads_ref[name], rtol=1e-4, atol=1e-6), name
    # the same tolerance tells masks apart: an all-ones mask on LEFT padding lets real tokens
    # attend to the padding before them (a tiny random model: a small but real change)
    left = _batch("left")
    loss_left, _ = _loss_and_grads(model, left)
    wrong, _ = _loss_and_grads(model, {**left, "attention_mask": torch.ones_like(left["labels"])})
    assert not torch.allclose(wrong, loss_left, rtol=1e-5, atol=1e-6), (wrong, loss_left)


def test_the_unmasked_batch_reaches_attention_without_a_mask(monkeypatch):
    """Why the lever pays: HF skips an all-ones padding mask, and attention runs its causal kernel
    (no explicit mask); the padded batch's mask would reach every attention call."""
    seen: list[bool] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask") is None and bool(kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_4bit()
    right = _batch("right")
    with torch.no_grad():
        model(**right)
        masked, seen[:] = list(seen), []
        model(**_collate(right)[0])
    assert masked and not any(masked)
    assert seen and all(seen)
