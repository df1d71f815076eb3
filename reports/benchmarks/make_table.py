"""The benchmark table and plot from the records of the speed sweeps (reports/benchmarks/results/).

    .venv/bin/python reports/benchmarks/make_table.py   # -> table.md, speed_memory.png

Ratios are taken against the plain stack of the SAME sweep process (same GPU, data, seed), the
mean of its plain rows where it ran twice (h200_v3_a, h200_v5_c); h200_v3_b, h200_v4_b and
h200_v4_d, which have no plain row, ran right after h200_v3_a, h200_v4_a and h200_v4_c in the same
device call on the same machine and take their reference from there (REFERENCE); so do h200_v5_a
and h200_v5_b (h200_v5_c, the same call) and the fifth round's final sweeps, one process per
configuration (h200_v5_plain), as are the sixth and seventh rounds' (h200_v6_*, h200_v7_*: each
against its own call's plain process) and the ninth, tenth, twelfth to sixteenth, eighteenth to
twentieth and twenty-first to twenty-third (h200_v9_*, h200_v10_*, h200_v12_* to h200_v16_*,
h200_v18_* to h200_v23_*; h200_v23's other shapes against the plain row of their own process);
h200_v11's one process ran in the next call of the same session and takes h200_v10_plain's. Any
other sweep without a plain row gets no ratio.
"offload 19/32": 19 of the 32 layers recomputed; "slim 12": 12 slim layers (h200_v5_a/b: the
recomputed layers were slim too, code since dropped: BENCHMARKS.md).
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
FINAL = ("h200_v5_plain", "h200_v5_hybrid", "h200_v5_lean", "h200_v5_fast")  # one process each
V16 = ("h200_v16_plain", "h200_v16_fast_gc", "h200_v16_fast_top", "h200_v16_lean_top_k3",
       "h200_v16_fast_top_075", "h200_v16_lean_top_k4_slim",
       "h200_v16_lean_top_k5_slim")  # fmt: skip  # k5: OOM under its cap (a result, no row)
V19 = ("h200_v19_plain", "h200_v19_fast", "h200_v19_fast_host6", "h200_v19_lean4_host6",
       "h200_v19_fast_host12", "h200_v19_lean4_host10")  # fmt: skip
V18 = ("h200_v18_plain", "h200_v18_exact_lean")
V20 = ("h200_v20_plain", "h200_v20_fast_host6", "h200_v20_fast_host6_cap142", "h200_v20_fast_host4",
       "h200_v20_lean4_host2")  # fmt: skip
V21 = ("h200_v21_plain", "h200_v21_lean4_trim", "h200_v21_fast_trim", "h200_v21_lean4_notrim",
       "h200_v21_fast_notrim", "h200_v21_fast_host6_cap142_trim")  # fmt: skip
V22 = ("h200_v22_plain", "h200_v22_lean4_cap82", "h200_v22_lean4_cap827", "h200_v22_fast",
       "h200_v22_lean_cap64", "h200_v22_fast_host6_cap142")  # fmt: skip
V23 = ("h200_v23_plain", "h200_v23_lean4_cap82")
V23_SHAPES = ("h200_v23_qwen_b4", "h200_v23_b1", "h200_v23_smollm2_b4")  # plain in each process
V17 = ("h200_v17_fp4", "h200_v17_b1", "h200_v17_qwen_b4", "h200_v17_qwen_b1", "h200_v17_smollm2_b4")
V15 = ("h200_v15_plain", "h200_v15_fast", "h200_v15_exact", "h200_v15_lean_gpuhead_cap82",
       "h200_v15_exact_lean", "h200_v15_lean_gpuhead_k1_cap82")  # fmt: skip
V14 = ("h200_v14_plain", "h200_v14_fast_head_075", "h200_v14_lean_cap64", "h200_v14_fast",
       "h200_v14_fast_head_072")  # fmt: skip
V13 = ("h200_v13_plain", "h200_v13_fast_head_075", "h200_v13_lean_cap64")
V12 = ("h200_v12_plain", "h200_v12_fast_off_072", "h200_v12_fast_off_069", "h200_v12_lean",
       "h200_v12_lean_cap64")  # fmt: skip
V10 = ("h200_v10_plain", "h200_v10_fast_slim_069", "h200_v10_fast_slim_066",
       "h200_v10_lean_head", "h200_v11_lean_head_noexp")  # fmt: skip
V9 = ("h200_v9_plain", "h200_v9_fast_head_075", "h200_v9_fast_head_072", "h200_v9_lean_head",
      "h200_v9_fast_r32_p32")  # fmt: skip
V7 = ("h200_v7_plain", "h200_v7_fast", "h200_v7_fast_r32", "h200_v7_lean")  # one process each
V6 = ("h200_v6_plain", "h200_v6_fast", "h200_v6_fast_r32", "h200_v6_hybrid_r32",
      "h200_v6_lean_r32")  # fmt: skip
SWEEPS = (*V23, *V22, *V21, *V20, *V19, *V18, *V16, *V15, *V14, *V13, *V12, *V10, *V9, *V7, *V6,
          *FINAL, "h200_v5_c", "h200_v5_a", "h200_v5_b", "h200_v4_c", "h200_v4_d", "h200_v4_a",
          "h200_v4_b", *V23_SHAPES, "h200_v18_qwen_b4", *V17, "h200_v3_a", "h200_v3_b",
          "h200_v3_b1", "h200_v3_fp4", "h200_v3_qwen_b4", "h200_v3_qwen_b1", "h200_v3_smollm2_b4",
          "h200_v2", "h200_b4", "h200_fresh",
          "b4_presets", "b4_factorial", "b4_fraction", "b4_fp4", "b1_presets", "qwen_b4",
          "qwen_b1", "smollm2_b4")  # fmt: skip
LEVERS = {"kernels": "liger", "lora_kernel": "fused", "frozen_dtype": "bf16"}
FLAGS = {"flat_optimizer": "flat", "embeddings_on_cpu": "emb cpu", "slim_activations": "slim",
         "head_on_cpu": "head cpu", "gc_freeze": "gc freeze",
         "trim_recompute": "trim"}  # fmt: skip
VALUED = {"residual_dtype": ("fp32", "fp32 residual"),
          "projection_dtype": ("fp32", "fp32 projections"),
          "kept_layers": ("top", "kept top")}  # fmt: skip  # key: (value, label)
REFERENCE = {
    "h200_v3_b": "h200_v3_a",
    "h200_v4_b": "h200_v4_a",
    "h200_v4_d": "h200_v4_c",
    "h200_v5_a": "h200_v5_c",
    "h200_v5_b": "h200_v5_c",
    **{sweep: "h200_v5_plain" for sweep in FINAL[1:]},
    **{sweep: "h200_v6_plain" for sweep in V6[1:]},
    **{sweep: "h200_v7_plain" for sweep in V7[1:]},
    **{sweep: "h200_v9_plain" for sweep in V9[1:]},
    **{sweep: "h200_v10_plain" for sweep in V10[1:]},
    **{sweep: "h200_v12_plain" for sweep in V12[1:]},
    **{sweep: "h200_v13_plain" for sweep in V13[1:]},
    **{sweep: "h200_v14_plain" for sweep in V14[1:]},
    **{sweep: "h200_v15_plain" for sweep in V15[1:]},
    **{sweep: "h200_v16_plain" for sweep in V16[1:]},
    **{sweep: "h200_v18_plain" for sweep in V18[1:]},
    **{sweep: "h200_v19_plain" for sweep in V19[1:]},
    **{sweep: "h200_v20_plain" for sweep in V20[1:]},
    **{sweep: "h200_v21_plain" for sweep in V21[1:]},
    **{sweep: "h200_v22_plain" for sweep in V22[1:]},
    **{sweep: "h200_v23_plain" for sweep in V23[1:]},
}  # sweep -> the sweep whose plain rows it is compared with


def setting(rec: dict) -> str:
    from harness.config.schema import recompute_fraction

    """A short name of the levers a record ran with: 'plain' or e.g. 'liger+bf16, sel 0.875'."""
    t, lora = rec["config"]["train"], rec["config"]["lora"]
    on = [v for k, v in LEVERS.items() if t[k] == v] or ["plain"]
    on += [v for k, v in FLAGS.items() if t.get(k)]
    on += [label for k, (v, label) in VALUED.items() if t.get(k) == v]
    slim_n = (rec.get("levers") or {}).get("slim_layers")
    on = [f"slim {slim_n}" if v == "slim" and slim_n is not None else v for v in on]
    on += ["dq"] if (rec.get("levers") or {}).get("dequant_triton") else []  # Triton dequant
    lev = rec.get("levers") or {}
    on += [f"host {lev['host_layers']}"] if lev.get("host_layers") else []  # train.host_layers
    n, done = lev.get("num_layers"), lev.get("checkpointed_layers")
    part = f" {done}/{n}" if n and done is not None and done < n else ""  # recomputed of all
    frac = recompute_fraction("selective", t.get("checkpoint_fraction"))
    ckpt = {"full": "", "none": "no ckpt", "offload": f"offload{part}",
            "selective": f"sel {frac}"}[t["checkpointing"]]  # fmt: skip
    name = "+".join(on)
    name += f", {ckpt}" if ckpt else ""
    name += ", dropout 0" if lora["dropout"] == 0 else ""
    engine = (rec.get("choices") or {}).get("engine")
    return f"{name} (engine={engine})" if engine and engine != "plain" and _is_preset(rec) else name


def _is_preset(rec: dict) -> bool:
    over = " ".join(rec.get("overrides") or [])
    return not any(
        f"train.{k}=" in over
        for k in (*LEVERS, *FLAGS, *VALUED, "checkpoint_fraction", "host_layers")
    )


def _records(sweep: str) -> list[dict]:
    paths = sorted((HERE / "results" / sweep).glob("*.json"), key=lambda p: (len(p.name), p.name))
    return [json.loads(p.read_text()) for p in paths if p.name != "wall.json"]


def _plain(recs: list[dict]) -> dict[float, dict]:
    """dropout -> the plain reference: tokens/s and reserved GiB, the mean over its plain rows."""
    by: dict[float, list[dict]] = {}
    for r in recs:
        if setting(r).split(",")[0] == "plain":
            by.setdefault(r["config"]["lora"]["dropout"], []).append(r)
    return {d: {"throughput": {"padded_tokens_per_s": sum(r["throughput"]["padded_tokens_per_s"]
                                                         for r in rs) / len(rs)},
                "peak_vram_reserved_gib": sum(r["peak_vram_reserved_gib"] for r in rs) / len(rs)}
            for d, rs in by.items()}  # fmt: skip


def rows() -> list[dict]:
    out = []
    for sweep in SWEEPS:
        recs = _records(sweep)
        plain = _plain(_records(REFERENCE[sweep]) if sweep in REFERENCE else recs)
        for r in recs:
            if r["status"] != "success":  # an OOM is a result (its record), not a table row
                continue
            tp, c = r["throughput"], r["config"]
            ref = plain.get(c["lora"]["dropout"]) or plain.get(0.05)
            out.append({
                "sweep": sweep, "gpu": r["device"].get("name", "").replace("NVIDIA ", "")[:4],
                "setting": setting(r),
                "shape": c["model"]["shape"] or c["model"]["name"],
                "batch": c["train"]["batch_size"], "quant": c["quant"]["type"],
                "steps": tp["timed_steps"], "tokens_per_s": tp["padded_tokens_per_s"],
                "step_s": tp["step_time_median_s"], "mfu": tp["mfu"], "hfu": tp["hfu"],
                "reserved_gib": r["peak_vram_reserved_gib"],
                "speed_x": tp["padded_tokens_per_s"] / ref["throughput"]["padded_tokens_per_s"]
                if ref else None,
                "memory_x": r["peak_vram_reserved_gib"] / ref["peak_vram_reserved_gib"]
                if ref else None,
                "final_loss": r["loss"]["final_train"],
                "executed_util": _executed(r),
            })  # fmt: skip
    return out


def _executed(rec: dict) -> float:
    """Executed-FLOPs utilization (harness/flops.py), recomputed for records older than it."""
    from harness.trial.flops import utilization
    from harness.assets.shapes import shape_config

    tp, lev, c = rec["throughput"], rec["levers"], rec["config"]
    return utilization(
        shape_config(c["model"]["shape"] or "smollm2-135m"), tp["padded_tokens_per_s"],
        seq_len=c["data"]["max_seq_len"], lora_params=rec["params"]["trainable"],
        recompute_fraction=lev.get("checkpointed_layers", 0) / max(lev.get("num_layers", 1), 1),
        recompute_trimmed_layers=lev.get("recompute_trimmed", 0),
    )["executed_util"]  # fmt: skip


def markdown(table: list[dict]) -> str:
    head = (
        "| sweep | GPU | setting | shape | batch | quant | tokens/s | step s (median) | MFU "
        "| HFU | executed | peak reserved GiB | speed vs plain | memory vs plain |\n|" + "---|" * 14
    )
    lines = [head]
    for r in table:
        ratio = (f"{r['speed_x']:.2f}x", f"{r['memory_x']:.2f}x") if r["speed_x"] else ("-", "-")
        lines.append(
            f"| {r['sweep']} | {r['gpu']} | {r['setting']} | {r['shape']} | {r['batch']} "
            f"| {r['quant']} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {r['mfu']:.1%} "
            f"| {r['hfu']:.1%} | {r['executed_util']:.1%} "
            f"| {r['reserved_gib']:.2f} | {ratio[0]} | {ratio[1]} |"
        )
    return "\n".join(lines) + "\n"


NEWEST = {  # the twenty-second round, one process per configuration, labelled on the plot
    "h200_v22_plain": ("plain", "o"),
    "h200_v22_fast_host6_cap142": ("fast + 6 host layers, cap 14.2", ">"),
    "h200_v22_fast": ("fast preset", "P"),
    "h200_v22_lean4_cap82": ("lean, 4 slim kept, cap 8.2", "X"),
    "h200_v22_lean_cap64": ("lean, cap 6.4", "D"),
}


def plot(table: list[dict], path: Path) -> None:
    """The newest round labelled against its own plain reference (the issue's target lines);
    every earlier H200 llama3-8b b4 record as a grey point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    older = [r for r in table if r["gpu"] == "H200" and r["shape"] == "llama3-8b"
             and r["batch"] == 4 and r["quant"] == "nf4"
             and r["sweep"] not in NEWEST and not r["sweep"].startswith(("h200_v17", "h200_v23_"))
             or r["sweep"] in V23]  # fmt: skip
    ax.scatter([r["reserved_gib"] for r in older], [r["tokens_per_s"] for r in older], s=14,
               c="lightgrey", label="other H200 rounds (v2-v23)")  # fmt: skip
    for sweep, (label, marker) in NEWEST.items():
        pts = [r for r in table if r["sweep"] == sweep]
        for r in pts:
            ax.scatter(r["reserved_gib"], r["tokens_per_s"], marker=marker, s=90,
                       label=f"{label}: {r['speed_x']:.2f}x at {r['memory_x']:.2f}x")  # fmt: skip
    ref = next((r for r in table if r["sweep"] == "h200_v22_plain"), None)
    if ref:  # the targets against the same call's plain reference
        tok, gib = ref["tokens_per_s"], ref["reserved_gib"]
        ax.axhline(2 * tok, ls="--", lw=0.8, c="grey")
        ax.axvline(gib, ls="--", lw=0.8, c="grey")
        ax.axvline(0.4 * gib, ls=":", lw=0.8, c="grey")
        ax.axvline(0.5 * gib, ls=":", lw=0.8, c="grey")
        ax.annotate("2x plain", (45, 2 * tok), fontsize=7, color="grey", va="bottom", ha="right")
        for x, label in ((gib, "plain reserved"), (0.4 * gib, "0.4x"), (0.5 * gib, "0.5x")):
            ax.annotate(label, (x, 13600), fontsize=7, color="grey", rotation=90, ha="right")
    ax.set(xlabel="peak reserved VRAM, train phase (GiB)", ylabel="tokens/s (all tokens)",
           title="llama3-8b shape, nf4, seq 2048, batch 4, H200 (v22)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    table = rows()
    (HERE / "table.md").write_text(markdown(table))
    plot(table, HERE / "speed_memory.png")
    (HERE / "table.json").write_text(json.dumps(table, indent=1))
    print(markdown(table))
