"""Prune diffusers models (UNets, autoencoders, diffusion transformers, ControlNets, adapters),
built from small configs with random weights, and check the oracle.

    python scripts/sweep_diffusers.py [--workers 1] [--timeout 300] [--models a,b] [--out F]

diffusers is not a dependency of depgraph_ext: install it beside torch (``pip install --no-deps
diffusers``: it asks for no torch of its own) to run this sweep, which stops with a one-line
message where diffusers cannot be imported. depgraph_ext must be importable (installed, or
``PYTHONPATH=.`` from the repository root).

Every model class of :data:`RECIPES` (a diffusers class name: the config it is built from,
small versions of each family's own block layouts, and the inputs its forward takes) runs in its
own process (one thread; a crash or a timeout is recorded as such), built in float64 (float32
where the model does not run in it), and is pruned three times as scripts/sweep_torchvision.py
prunes (exact_only under the scatter-back oracle with bit-identical kept slices, default,
verify), with the same checks: the model unchanged after any error, the pruned model running
with the original's output shapes, the slowest ten beside a ResNet-50 prune of the same run
(transformers' ResNet-50, as the transformers sweep times it). The summary also counts the model
classes diffusers exports that no recipe builds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import sweep_torchvision as common


def _ids(*values):
    import torch

    return torch.tensor(values)


# name -> (config, inputs(randn, dtype)): ``randn(*shape)`` draws seeded values of the dtype
# the model is built in.
RECIPES = {
    "UNet2DModel": (
        dict(
            sample_size=16,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
        ),
        lambda randn, dtype: (randn(2, 3, 16, 16), _ids(10, 500)),
    ),
    "UNet2DConditionModel": (
        dict(
            sample_size=16,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 16, 16),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 7, 32),
        },
    ),
    "UNet3DConditionModel": (
        dict(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        ),
        lambda randn, dtype: {
            "sample": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(1, 7, 32),
        },
    ),
    "UNet1DModel": (
        dict(
            block_out_channels=(8, 8, 16, 16),
            in_channels=14,
            out_channels=14,
            time_embedding_type="positional",
            use_timestep_embedding=True,
            flip_sin_to_cos=False,
            freq_shift=1.0,
            out_block_type="OutConv1DBlock",
            mid_block_type="MidResTemporalBlock1D",
            down_block_types=("DownResnetBlock1D",) * 4,
            up_block_types=("UpResnetBlock1D",) * 3,
            act_fn="swish",
            norm_num_groups=8,
            layers_per_block=1,
        ),
        lambda randn, dtype: (randn(2, 14, 16), _ids(10, 500)),
    ),
    "ControlNetModel": (
        dict(
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            conditioning_embedding_out_channels=(8, 16),
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 16, 16),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 7, 32),
            "controlnet_cond": randn(2, 3, 32, 32),
        },
    ),
    "T2IAdapter": (
        dict(channels=(32, 64), num_res_blocks=1, downscale_factor=2),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderKL": (
        dict(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8,
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "VQModel": (
        dict(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8,
            num_vq_embeddings=16,
            vq_embed_dim=4,
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderTiny": (
        dict(
            encoder_block_out_channels=(16, 16),
            decoder_block_out_channels=(16, 16),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "DiTTransformer2DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=8,
            num_embeds_ada_norm=10,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": _ids(1, 5),
            "class_labels": _ids(1, 3),
        },
    ),
    "PixArtTransformer2DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=8,
            cross_attention_dim=16,
            caption_channels=12,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": _ids(1, 5),
            "encoder_hidden_states": randn(2, 5, 12),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        },
    ),
    "SD3Transformer2DModel": (
        dict(
            sample_size=8,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=12,
            out_channels=4,
            pos_embed_max_size=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 16),
            "pooled_projections": randn(2, 12),
            "timestep": _ids(1, 5),
        },
    ),
    "FluxTransformer2DModel": (
        dict(
            in_channels=8,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            pooled_projection_dim=12,
            axes_dims_rope=(2, 2, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 8),
            "encoder_hidden_states": randn(2, 5, 16),
            "pooled_projections": randn(2, 12),
            "timestep": randn(2).abs(),
            "img_ids": randn(16, 3).round(),
            "txt_ids": randn(5, 3).round(),
        },
    ),
    "SanaTransformer2DModel": (
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=12,
            sample_size=8,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 12),
            "timestep": _ids(1, 5),
        },
    ),
    "PriorTransformer": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            embedding_dim=16,
            num_embeddings=4,
            additional_embeddings=4,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16),
            "timestep": _ids(1, 5),
            "proj_embedding": randn(2, 16),
            "encoder_hidden_states": randn(2, 4, 16),
        },
    ),
    "WanTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(5),
            "encoder_hidden_states": randn(1, 5, 16),
        },
    ),
}


def model_classes() -> list[str]:
    """Every model class diffusers exports (a ModelMixin subclass), by name."""
    import inspect
    import warnings

    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(diffusers):
            try:
                cls = getattr(diffusers, name)
            except Exception:  # noqa: BLE001  (an optional backend missing)
                continue
            if inspect.isclass(cls) and issubclass(cls, ModelMixin) and cls is not ModelMixin:
                names.append(name)
    return sorted(names)


def reference_prune() -> dict:
    """transformers' ResNet-50 (default config) on 1 x 3 x 224 x 224, pruned as the default
    stage prunes, after one prune to warm up."""
    import warnings

    import torch
    import transformers

    import depgraph_ext as dx

    def model():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transformers.ResNetForImageClassification(transformers.ResNetConfig()).eval()

    inputs = torch.randn(1, 3, 224, 224)
    for _ in range(2):
        result = dx.prune(model(), inputs, ratio=0.5, progress=False)
    return {"reference": True, "seconds": round(result.timings["total"], 4)}


def child(name: str, record_path: str) -> None:
    import warnings

    import diffusers
    import torch

    from depgraph_ext.testing import outputs_of

    torch.set_num_threads(1)
    record: dict = {"model": name}

    def save() -> None:
        common._save(record, record_path)

    if name == common.REFERENCE:
        record.update(reference_prune())
        return save()
    config, make_inputs = RECIPES[name]
    cls = getattr(diffusers, name)
    record.update(task="diffusers", kwargs=config)
    for dtype in (torch.float64, torch.float32):
        record["dtype"] = str(dtype).removeprefix("torch.")
        generator = torch.Generator().manual_seed(1)

        def randn(*shape, dtype=dtype, generator=generator):
            return torch.randn(*shape, generator=generator, dtype=dtype)

        try:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pristine = cls(**config).eval().to(dtype)
            inputs = make_inputs(randn, dtype)
            outputs = outputs_of(pristine, inputs, seed=0)
            break
        except Exception as e:  # noqa: BLE001
            record[f"{record['dtype']}_fails"] = common._short(e)
    else:
        record["setup_failed"] = record.pop("float32_fails")
        return save()
    record["params"] = sum(p.numel() for p in pristine.parameters())
    common.run_stages(record, pristine, inputs, outputs, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="models pruned at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--models", default="", help="comma-separated class names of RECIPES")
    parser.add_argument("--out", default="sweep_diffusers.json", help="JSON records")
    parser.add_argument("--resume", action="store_true", help="keep the records in --out")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        sys.exit(f"this sweep needs diffusers, not a dependency of depgraph_ext ({e})")
    if args.child:
        return child(args.child, args.record)
    import depgraph_ext  # noqa: F401  (fail here, once, rather than in every child)

    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        sys.exit(f"no recipe for: {', '.join(unknown)} (recipes: {', '.join(RECIPES)})")
    done: dict = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {n: r for n, r in json.load(f).items() if n in names or n == common.REFERENCE}
    started = time.perf_counter()
    done = common.run([common.REFERENCE, *names], args.workers, args.timeout, done, args.out,
                      script=__file__)  # fmt: skip
    count = len(done) - (common.REFERENCE in done)
    print(f"\n{count} models in {time.perf_counter() - started:.0f} s")
    print(f"records: {args.out}")
    print(common.summary(done))
    print(common.slowest(done))
    classes = model_classes()
    missing = [n for n in classes if n not in RECIPES]
    print(f"recipes for {len(classes) - len(missing)} of the {len(classes)} model classes "
          f"diffusers exports")  # fmt: skip


if __name__ == "__main__":
    main()
