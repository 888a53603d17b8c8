"""diffusers' model families (where diffusers is installed: it is not a dependency), built
from the small configs of zoo_diffusers.py: exact prunes under the scatter-back oracle with
identical plans on every backend, default prunes that run and keep the output shapes.
scripts/sweep_diffusers.py runs every recipe; these are one per kind of fix it led to."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.testing import outputs_of
from helpers import prune_and_check
from zoo_diffusers import RECIPES, draw_zero_parameters

diffusers = pytest.importorskip("diffusers")

CASES = [
    "UNet2DConditionModel",  # a dict config read by attribute; outputs without key paths
    "AutoencoderKL",  # resamplers asserting their channels
    "VQModel",  # a codebook looked up by cdist
    "UVit2DModel",  # a view by a width read from another tensor
    "ConsistencyDecoderVAE",  # a scheduler object's tensors; latents divided by stds
    "QwenImageTransformer2DModel",  # complex rotary embeddings; the heads attribute
    "FluxTransformer2DModel",
    "T5FilmDecoder",  # asserts a width it computed, between two ops
    "WanAnimateTransformer3DModel",  # conv channels turned into attention's key positions
    # (and a QR decomposition, which has no rule: its channels are kept, said)
    "AceStepAudioTokenizer",  # finite scalar quantisation: divides by levels - 1
]


def build(name: str):
    config, make_inputs = RECIPES[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(diffusers, name)(**config).eval().double()
    draw_zero_parameters(model)
    generator = torch.Generator().manual_seed(1)
    inputs = make_inputs(
        lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64),
        torch.float64,
    )
    return model, inputs


@pytest.mark.parametrize("name", CASES)
def test_a_diffusers_model_prunes_exactly_and_by_default(name):
    model, inputs = build(name)
    shapes = [o.shape for o in outputs_of(model, inputs, seed=0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FixedSizeWarning)
        warnings.simplefilter("ignore", dx.OpaqueOpWarning)
        pruned, result = prune_and_check(model, inputs, ratio=0.5, exact_only=True)
    assert not result.function_changing
    default = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(default, inputs, ratio=0.5)
    assert result.params_after < result.params_before
    assert [o.shape for o in outputs_of(default, inputs, seed=0)] == shapes
