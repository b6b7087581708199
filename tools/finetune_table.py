"""The trainable parameters and optimiser-state memory of each `finetune.method`.

    .venv/bin/python tools/finetune_table.py                      # lightseg_small, swinunetr; 3D
    .venv/bin/python tools/finetune_table.py --dims 2 --models lightseg_tiny unetr

Everything is by shape (`jax.eval_shape`): the model a run would build
(`workdir.model_from_config`, LoRA and adapter layers included), the trainable mask the
run would use (`training.finetune.trainable_mask`, no `train.init_from`) and the bytes of
the optimiser state it would hold (`optax.multi_transform`: AdamW's two float32 moments for
trainable leaves only). The table in docs/training.md is this output.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxseg.defaults import base_config
from jaxseg.training import finetune
from jaxseg.workdir import RunInfo, model_from_config

METHODS = ("full", "lora", "adapter", "decoder_only")


def rows(name: str, dims: int, rank: int, adapter_dim: int, num_classes: int) -> list[dict]:
    info = RunInfo(dims, 1, num_classes, {i: str(i) for i in range(num_classes)}, ("MRI",), "")
    sample = jax.ShapeDtypeStruct((1, *(64,) * dims, 1), jnp.float32)
    out = []
    for method in METHODS:
        config = base_config()
        config.model.name = name
        config.finetune.method = method
        config.finetune.rank = rank
        config.finetune.adapter_dim = adapter_dim
        model = model_from_config(config, info)
        shapes = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x), sample)
        shapes = shapes["params"]
        mask = finetune.trainable_mask(shapes, config)
        out.append(
            {"model": name, "method": method, **finetune.summary(shapes, mask, config.train)}
        )
    return out


def render(table: list[dict], dims: int, rank: int, adapter_dim: int) -> str:
    mib = lambda b: f"{b / 2**20:.2f}"
    lines = [
        f"{dims}D; LoRA rank {rank}, alpha 16, default targets; adapter width {adapter_dim}.",
        "",
        "| model | method | trainable | total | trainable % | optimiser state MiB | vs full |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['trainable']:,} | {r['total']:,} "
            f"| {100 * r['fraction']:.2f} | {mib(r['opt_state_bytes'])} "
            f"| {r['opt_state_bytes'] / r['full_opt_state_bytes']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lightseg_small", "swinunetr"])
    parser.add_argument("--dims", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--adapter-dim", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=4)
    args = parser.parse_args()
    table = [
        r
        for name in args.models
        for r in rows(name, args.dims, args.rank, args.adapter_dim, args.num_classes)
    ]
    print(render(table, args.dims, args.rank, args.adapter_dim))


if __name__ == "__main__":
    main()
