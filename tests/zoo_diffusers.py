"""Small configs and example inputs of diffusers' model classes, for scripts/sweep_diffusers.py
and tests/test_diffusers.py:
``RECIPES[name] = (config, inputs)``, where ``getattr(diffusers, name)(**config)`` builds a
model of a few hundred thousand parameters at most, keeping the family's own block layout
(attention, cross attention, resnets, up and down sampling, masks, rotary embeddings), and
``inputs(randn, dtype)`` gives its forward's inputs (a dict of keyword arguments, a tuple of
positional ones, or one tensor) from ``randn(*shape)``, seeded values of the model's dtype."""

from __future__ import annotations

import torch


def _ids(*values):
    import torch

    return torch.tensor(values)


_CORE = {
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


def _mask(*lengths, total):
    """A padding mask (batch, total): the first ``length`` entries of each row kept."""
    return (torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]).long()


def _hunyuan_inputs(randn, dtype):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    # 8x8 latent, patch 2 -> 4x4 grid; head dim 8
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), output_type="pt")
    return {
        "hidden_states": randn(2, 4, 8, 8),
        # float: the timestep's dtype is the embedder's compute dtype
        "timestep": _ids(10.0, 500.0).to(dtype),
        "encoder_hidden_states": randn(2, 5, 16),
        "text_embedding_mask": _mask(5, 3, total=5),
        "encoder_hidden_states_t5": randn(2, 6, 24),
        "text_embedding_mask_t5": _mask(6, 4, total=6),
        "image_meta_size": torch.tensor([[64, 64, 64, 64, 0, 0]] * 2, dtype=dtype),
        "style": _ids(0, 0),
        "image_rotary_emb": tuple(r.to(dtype) for r in rope),
    }


def _lumina_next_inputs(randn, dtype):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    # a complex64 RoPE table (head dim 8) over a 16 x 16 grid, cropped to the 4 x 4 patch grid
    # by the model; the rotation itself runs in float32/complex64 whatever the model's dtype
    # (diffusers' apply_rotary_emb with use_real=False), the rest in float64
    return {
        "hidden_states": randn(2, 4, 8, 8),
        "timestep": randn(2).abs(),
        "encoder_hidden_states": randn(2, 5, 16),
        "encoder_mask": _mask(5, 3, total=5),
        "image_rotary_emb": get_2d_rotary_pos_embed_lumina(8, 16, 16),
        # the blocks unpack cross_attention_kwargs with **: None fails
        "cross_attention_kwargs": {},
    }


def _stable_audio_inputs(randn, dtype):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    # rotary over the 8 latent steps + 1 global token, dim = attention_head_dim // 2
    cos, sin = get_1d_rotary_pos_embed(4, 8 + 1, use_real=True, repeat_interleave_real=False)
    return {
        "hidden_states": randn(2, 4, 8),
        "timestep": randn(2).abs(),
        "encoder_hidden_states": randn(2, 5, 16),
        "global_hidden_states": randn(2, 1, 12),
        "rotary_embedding": (cos.to(dtype), sin.to(dtype)),
    }


_FAMILIES_A = {
    "AutoencoderKLTemporalDecoder": (
        # the temporal decoder's GroupNorms have 32 groups: widths are multiples of 32; its mid
        # block runs its attention only with two layers or more
        dict(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            layers_per_block=2,
            latent_channels=4,
        ),
        lambda randn, dtype: {"sample": randn(2, 3, 16, 16), "num_frames": 2},
    ),
    "UNetSpatioTemporalConditionModel": (
        dict(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24,
            layers_per_block=1,
            cross_attention_dim=16,
            num_attention_heads=(2, 4),
            num_frames=2,
        ),
        lambda randn, dtype: {
            "sample": randn(1, 2, 8, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(1, 1, 16),
            "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]], dtype=dtype),
        },
    ),
    "Transformer2DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=16,
            num_layers=2,
            norm_num_groups=8,
            cross_attention_dim=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 8, 8),
            "encoder_hidden_states": randn(2, 5, 16),
        },
    ),
    "HunyuanDiT2DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            patch_size=2,
            sample_size=8,
            hidden_size=16,
            num_layers=4,
            cross_attention_dim=16,
            cross_attention_dim_t5=24,
            pooled_projection_dim=12,
            text_len=5,
            text_len_t5=6,
        ),
        _hunyuan_inputs,
    ),
    "AuraFlowTransformer2DModel": (
        dict(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_mmdit_layers=1,
            num_single_dit_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            out_channels=4,
            pos_embed_max_size=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 16),
            "timestep": _ids(10, 500),
        },
    ),
    "LuminaNextDiT2DModel": (
        dict(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            hidden_size=16,
            num_layers=2,
            num_attention_heads=2,
            num_kv_heads=1,
            multiple_of=16,
            cross_attention_dim=16,
        ),
        _lumina_next_inputs,
    ),
    "Lumina2Transformer2DModel": (
        # RoPE computed inside (complex): the rotation runs in float32, the rest in float64;
        # the caption mask's row lengths (5, 3) are read as Python ints (per-sample padding)
        dict(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            hidden_size=16,
            num_layers=2,
            num_refiner_layers=1,
            num_attention_heads=2,
            num_kv_heads=1,
            multiple_of=16,
            axes_dim_rope=(4, 2, 2),
            axes_lens=(32, 32, 32),
            cap_feat_dim=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": randn(2).abs(),
            "encoder_hidden_states": randn(2, 5, 16),
            "encoder_attention_mask": _mask(5, 3, total=5).bool(),
        },
    ),
    "CogVideoXTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=16,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=5,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=5,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2, 4, 8, 8),
            "encoder_hidden_states": randn(1, 5, 16),
            "timestep": _ids(10),
        },
    ),
    "LatteTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=16,
            sample_size=8,
            patch_size=2,
            norm_type="ada_norm_single",
            caption_channels=12,
            video_length=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(1, 5, 12),
        },
    ),
    "StableAudioDiTModel": (
        dict(
            sample_size=8,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_attention_heads=1,
            out_channels=4,
            cross_attention_dim=16,
            time_proj_dim=16,
            global_states_input_dim=12,
            cross_attention_input_dim=16,
        ),
        _stable_audio_inputs,
    ),
    "UVit2DModel": (
        dict(
            hidden_size=32,
            cond_embed_dim=16,
            micro_cond_encode_dim=8,
            micro_cond_embed_dim=40,
            encoder_hidden_size=16,
            vocab_size=32,
            codebook_size=31,
            in_channels=16,
            block_out_channels=32,
            num_res_blocks=1,
            downsample=True,
            upsample=True,
            block_num_heads=2,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            sample_size=8,
        ),
        lambda randn, dtype: {
            "input_ids": (randn(2, 8, 8).abs() * 10).long().clamp(max=31),
            "encoder_hidden_states": randn(2, 5, 16),
            "pooled_text_emb": randn(2, 16),
            "micro_conds": torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * 2, dtype=dtype),
        },
    ),
    "Kandinsky3UNet": (
        dict(
            in_channels=4,
            time_embedding_dim=32,
            groups=8,
            attention_head_dim=8,
            # an up block of one layer leaves its self attention the wrong width: two at least
            layers_per_block=2,
            block_out_channels=(32, 64),
            cross_attention_dim=32,
            encoder_hid_dim=16,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 16),
            "encoder_attention_mask": _mask(5, 3, total=5),
        },
    ),
    "AsymmetricAutoencoderKL": (
        dict(
            down_block_types=("DownEncoderBlock2D",) * 2,
            down_block_out_channels=(16, 32),
            layers_per_down_block=1,
            up_block_types=("UpDecoderBlock2D",) * 2,
            up_block_out_channels=(16, 32),
            layers_per_up_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 3, 16, 16),
            "mask": (randn(2, 1, 16, 16) > 0).to(dtype),
        },
    ),
    "AutoencoderDC": (
        dict(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=8,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(16, 32),
            decoder_block_out_channels=(16, 32),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
}


_FAMILIES_B = {
    "AutoencoderKLCogVideoX": (
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
        ),
        # 9 = 1 + 2*4 frames -> 3 latent frames -> 9 decoded frames (causal temporal compression)
        lambda randn, dtype: {"sample": randn(1, 3, 9, 16, 16)},
    ),
    "AutoencoderKLWan": (
        dict(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
        # 5 = 1 + 4 frames -> 2 latent frames (causal temporal compression)
        lambda randn, dtype: {"sample": randn(1, 3, 5, 16, 16)},
    ),
    "AutoencoderOobleck": (
        dict(
            encoder_hidden_size=12,
            decoder_channels=12,
            decoder_input_channels=6,
            audio_channels=2,
            downsampling_ratios=[2, 4],
            channel_multiples=[1, 2],
        ),
        lambda randn, dtype: {"sample": randn(2, 2, 64)},
    ),
    "QwenImageTransformer2DModel": (
        dict(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(
                1, 16, 16
            ),  # (b, (8/2)*(8/2) tokens, in_channels) packed latents
            "encoder_hidden_states": randn(1, 6, 16),
            "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.long),
            "timestep": randn(1).abs(),
            "img_shapes": [[(1, 4, 4)]],
        },
    ),
    "LTXVideoTransformer3DModel": (
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            num_layers=2,
            qk_norm="rms_norm_across_heads",
            caption_channels=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2 * 4 * 4, 4),
            "encoder_hidden_states": randn(1, 6, 16),
            "timestep": _ids(500),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=dtype),
            "num_frames": 2,
            "height": 4,
            "width": 4,
        },
    ),
    "MochiTransformer3DModel": (
        dict(
            patch_size=2,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            pooled_projection_dim=16,
            in_channels=4,
            out_channels=None,
            qk_norm="rms_norm",
            text_embed_dim=16,
            time_embed_dim=4,
            activation_fn="swiglu",
            max_sequence_length=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "encoder_hidden_states": randn(1, 6, 16),
            "timestep": _ids(500),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool),
        },
    ),
    "HunyuanVideoTransformer3DModel": (
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(500),
            "encoder_hidden_states": randn(1, 6, 16),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.long),
            "pooled_projections": randn(1, 8),
            "guidance": torch.full((1,), 3000.0, dtype=dtype),
        },
    ),
    # (ControlNets zero-initialise their output projections, controlnet_blocks and
    # pos_embed_input: the sweep draws every all-zero parameter anew)
    "SD3ControlNetModel": (
        dict(
            sample_size=16,
            patch_size=2,
            in_channels=8,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            out_channels=8,
            pos_embed_max_size=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 8, 16, 16),
            "controlnet_cond": randn(1, 8, 16, 16),
            "conditioning_scale": 1.0,
            "encoder_hidden_states": randn(1, 6, 16),
            "pooled_projections": randn(1, 16),
            "timestep": _ids(500),
        },
    ),
    "FluxControlNetModel": (
        dict(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            pooled_projection_dim=16,
            axes_dims_rope=[4, 4, 8],
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 16, 16),
            "controlnet_cond": randn(1, 16, 16),
            "conditioning_scale": 1.0,
            "encoder_hidden_states": randn(1, 6, 16),
            "pooled_projections": randn(1, 16),
            "timestep": randn(1).abs(),
            "img_ids": torch.stack(
                [torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1
            ).to(dtype),
            "txt_ids": torch.zeros(6, 3, dtype=dtype),
        },
    ),
    "I2VGenXLUNet": (
        dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=16,
            attention_head_dim=4,
        ),
        lambda randn, dtype: {
            "sample": randn(1, 4, 2, 16, 16),
            "timestep": _ids(500),
            "fps": _ids(8),
            "image_latents": randn(1, 4, 2, 16, 16),
            "image_embeddings": randn(1, 16),
            "encoder_hidden_states": randn(1, 6, 16),
        },
    ),
    "OmniGenTransformer2DModel": (
        dict(
            in_channels=4,
            patch_size=2,
            hidden_size=16,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            num_layers=2,
            pad_token_id=0,
            vocab_size=100,
            pos_embed_max_size=16,
            time_step_dim=16,
            rope_scaling={
                "long_factor": [1.0, 1.5, 2.0, 2.5],
                "short_factor": [1.0, 1.1, 1.2, 1.3],
            },
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 8, 8),
            "timestep": randn(1).abs(),
            "input_ids": _ids([5, 17, 42, 9, 3]),
            "input_img_latents": [],
            "input_image_sizes": {},
            # causal over the text/time tokens, full attention over the 16 image tokens
            "attention_mask": _omnigen_mask(5 + 1, 16, dtype),
            "position_ids": torch.arange(5 + 1 + 16)[None],
        },
    ),
    "CogView4Transformer2DModel": (
        dict(
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            text_embed_dim=16,
            time_embed_dim=16,
            condition_dim=4,
            pos_embed_max_size=16,
            sample_size=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 8, 8),
            "encoder_hidden_states": randn(1, 6, 16),
            "timestep": _ids(500),
            "original_size": torch.tensor([[64.0, 64.0]], dtype=dtype),
            "target_size": torch.tensor([[64.0, 64.0]], dtype=dtype),
            "crop_coords": torch.tensor([[0.0, 0.0]], dtype=dtype),
        },
    ),
    "ChromaTransformer2DModel": (
        dict(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(4, 4, 8),
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=1,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 16, 16),
            "encoder_hidden_states": randn(1, 6, 16),
            "timestep": randn(1).abs(),
            "img_ids": torch.stack(
                [torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1
            ).to(dtype),
            "txt_ids": torch.zeros(6, 3, dtype=dtype),
        },
    ),
    "StableCascadeUNet": (
        dict(
            in_channels=4,
            out_channels=4,
            timestep_ratio_embedding_dim=16,
            patch_size=1,
            conditioning_dim=16,
            block_out_channels=(16, 32),
            num_attention_heads=(2, 2),
            down_num_layers_per_block=(1, 1),
            up_num_layers_per_block=(1, 1),
            down_blocks_repeat_mappers=(1, 1),
            up_blocks_repeat_mappers=(1, 1),
            block_types_per_layer=(
                ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
                ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
            ),
            clip_text_in_channels=16,
            clip_text_pooled_in_channels=16,
            clip_image_in_channels=16,
            clip_seq=2,
            effnet_in_channels=4,
            pixel_mapper_in_channels=3,
            dropout=(0.0, 0.0),
            self_attn=True,
            timestep_conditioning_type=("sca", "crp"),
            switch_level=(False,),
        ),
        lambda randn, dtype: {
            "sample": randn(1, 4, 8, 8),
            "timestep_ratio": randn(1).abs(),
            "clip_text_pooled": randn(1, 1, 16),
            "clip_text": randn(1, 6, 16),
            "clip_img": randn(1, 1, 16),
            "effnet": randn(1, 4, 4, 4),
        },
    ),
    "ConsistencyDecoderVAE": (
        dict(
            latent_channels=4,
            sample_size=16,
            encoder_block_out_channels=(16, 32),
            encoder_down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            encoder_layers_per_block=1,
            encoder_norm_num_groups=4,
            encoder_out_channels=4,
            decoder_add_attention=False,
            decoder_block_out_channels=(16, 32),
            decoder_down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            decoder_up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            decoder_layers_per_block=1,
            decoder_norm_num_groups=4,
            decoder_num_train_timesteps=1024,
        ),
        # (the decoder samples noise from the global generator, which the sweep seeds before
        # each forward it compares; a generator given as an input would be used up by the
        # prune's trace)
        lambda randn, dtype: randn(1, 3, 16, 16),
    ),
}


def _omnigen_mask(n_cond, n_img, dtype):
    n = n_cond + n_img
    mask = torch.tril(torch.ones(n, n, dtype=dtype))
    mask[-n_img:, -n_img:] = 1
    return mask[None]


_FAMILIES_C = {
    "AutoencoderKLHunyuanVideo": (
        dict(
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLLTXVideo": (
        dict(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4,
            patch_size=1,
            patch_size_t=1,
        ),
        lambda randn, dtype: randn(1, 3, 9, 16, 16),
    ),
    "AutoencoderKLMochi": (
        dict(
            # its GroupNorms have 32 groups: widths of 32; in_channels 15 = 3 + the encoder's
            # Fourier features
            in_channels=15,
            out_channels=3,
            latent_channels=4,
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        ),
        lambda randn, dtype: randn(1, 3, 7, 16, 16),
    ),
    "AutoencoderKLQwenImage": (
        dict(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLCosmos": (
        dict(
            latent_channels=4,
            encoder_block_out_channels=(8, 8, 8, 8),
            decode_block_out_channels=(8, 8, 8, 8),
            attention_resolutions=(8,),
            resolution=64,
            num_layers=2,
            patch_size=4,
            patch_type="haar",
            spatial_compression_ratio=4,
            temporal_compression_ratio=4,
            latents_mean=None,
            latents_std=None,
        ),
        lambda randn, dtype: randn(1, 3, 9, 32, 32),
    ),
    "CogView3PlusTransformer2DModel": (
        dict(
            patch_size=2,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            out_channels=4,
            text_embed_dim=16,
            time_embed_dim=16,
            condition_dim=4,
            pos_embed_max_size=8,
            sample_size=8,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 16),
            "timestep": _ids(10, 500),
            "original_size": torch.tensor([[64, 64]] * 2, dtype=dtype),
            "target_size": torch.tensor([[64, 64]] * 2, dtype=dtype),
            "crop_coords": torch.tensor([[0, 0]] * 2, dtype=dtype),
        },
    ),
    "ConsisIDTransformer3DModel": (
        dict(
            # the face cross attention's key width is 2/3 of heads * head dim (48 -> 32), which
            # the local facial extractor's output width must match; 48 also splits evenly for the
            # 3D sin-cos position embedding (1/4 frames, 3/4 height and width)
            num_attention_heads=4,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=16,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=8,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=8,
            cross_attn_interval=1,
            is_kps=False,
            is_train_face=True,
            cross_attn_dim_head=8,
            cross_attn_num_heads=2,
            LFE_id_dim=8,
            LFE_vit_dim=8,
            LFE_depth=2,
            LFE_dim_head=8,
            LFE_num_heads=2,
            LFE_num_id_token=1,
            LFE_num_querie=2,
            LFE_output_dim=32,
            LFE_ff_mult=1,
            LFE_num_scale=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 1, 4, 8, 8),
            "encoder_hidden_states": randn(1, 8, 16),
            "timestep": _ids(10),
            "id_vit_hidden": [randn(1, 3, 8), randn(1, 3, 8)],
            "id_cond": randn(1, 8),
        },
    ),
    "CosmosTransformer3DModel": (
        dict(
            # 4 latent channels + the condition mask; the padding mask's concatenation resizes it
            # with torchvision, which is not installed
            in_channels=5,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=12,
            num_layers=2,
            mlp_ratio=2,
            text_embed_dim=16,
            adaln_lora_dim=4,
            max_size=(4, 16, 16),
            patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0),
            concat_padding_mask=False,
            # no extra position embedding (as in Cosmos Predict 2): the learnable one
            # normalises with vector_norm(dtype=float32), which refuses float64 inputs
            extra_pos_embed_type=None,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": randn(1).abs(),
            "encoder_hidden_states": randn(1, 6, 16),
            "attention_mask": _mask(4, total=6).to(dtype),
            "fps": 30,
            "condition_mask": torch.ones(1, 1, 2, 8, 8, dtype=dtype),
        },
    ),
    "EasyAnimateTransformer3DModel": (
        dict(
            # head dim 16: the 3D RoPE splits it 4 / 6 / 6 over frames, height, width
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=16,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            patch_size=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(1, 5, 16),
        },
    ),
    "Flux2Transformer2DModel": (
        dict(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 16, 4),
            "encoder_hidden_states": randn(1, 5, 16),
            "timestep": randn(1).abs(),
            "img_ids": torch.stack(
                torch.meshgrid(
                    torch.zeros(1),
                    torch.arange(4.0),
                    torch.arange(4.0),
                    torch.zeros(1),
                    indexing="ij",
                ),
                -1,
            ).reshape(1, 16, 4),
            "txt_ids": torch.stack(
                [torch.zeros(5), torch.zeros(5), torch.zeros(5), torch.arange(5.0)], -1
            )[None],
            "guidance": torch.tensor([3.5], dtype=dtype),
        },
    ),
    "HiDreamImageTransformer2DModel": (
        dict(
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            caption_channels=[8, 4],
            text_emb_dim=8,
            num_routed_experts=2,
            num_activated_experts=2,
            axes_dims_rope=(4, 2, 2),
            max_resolution=(16, 16),
            llama_layers=(0, 1),
            force_inference_output=True,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 8, 8),
            "timesteps": _ids(10),
            "encoder_hidden_states_t5": randn(1, 5, 8),
            "encoder_hidden_states_llama3": randn(2, 1, 5, 4),
            "pooled_embeds": randn(1, 8),
        },
    ),
    "SanaControlNetModel": (
        dict(
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=8,
            sample_size=8,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 8),
            "timestep": _ids(10, 500),
            "controlnet_cond": randn(2, 4, 8, 8),
            "encoder_attention_mask": _mask(5, 3, total=5),
        },
    ),
    "SkyReelsV2Transformer3DModel": (
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(1, 5, 16),
        },
    ),
    "ZImageTransformer2DModel": (
        dict(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=4,
            dim=16,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            qk_norm=True,
            cap_feat_dim=16,
            axes_dims=[4, 2, 2],
            axes_lens=[64, 16, 16],
        ),
        lambda randn, dtype: {
            "x": [randn(4, 1, 8, 8), randn(4, 1, 8, 8)],
            "t": randn(2).abs(),
            "cap_feats": [randn(5, 16), randn(3, 16)],
        },
    ),
}


def _hunyuan_controlnet_inputs(randn, dtype):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    # 8x8 latent, patch 2 -> 4x4 grid; head dim 8
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), output_type="pt")
    return {
        "hidden_states": randn(2, 4, 8, 8),
        "timestep": _ids(10.0, 500.0).to(dtype),
        "controlnet_cond": randn(2, 4, 8, 8),
        "conditioning_scale": 0.7,
        "encoder_hidden_states": randn(2, 5, 16),
        "text_embedding_mask": _mask(5, 3, total=5),
        "encoder_hidden_states_t5": randn(2, 6, 24),
        "text_embedding_mask_t5": _mask(6, 4, total=6),
        "image_meta_size": torch.tensor([[64, 64, 64, 64, 0, 0]] * 2, dtype=dtype),
        "style": _ids(0, 0),
        "image_rotary_emb": tuple(r.to(dtype) for r in rope),
    }


_FAMILIES_D = {
    "UNetMotionModel": (
        # the motion modules are built in (no MotionAdapter needed); encoder_hidden_states come
        # per frame (batch * frames, as the AnimateDiff pipeline repeats them)
        dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            cross_attention_dim=16,
            num_attention_heads=2,
            motion_num_attention_heads=2,
            motion_max_seq_length=8,
        ),
        lambda randn, dtype: {
            "sample": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(2, 5, 16),
        },
    ),
    "SparseControlNetModel": (
        # attention_head_dim is the number of heads (diffusers' naming quirk); the conditioning
        # mask is concatenated to controlnet_cond (concat_conditioning_mask); the model zeroes
        # `sample` itself; encoder_hidden_states per frame (batch * frames)
        dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            cross_attention_dim=16,
            attention_head_dim=2,
            motion_num_attention_heads=2,
            motion_max_seq_length=8,
            conditioning_channels=3,
        ),
        lambda randn, dtype: {
            "sample": randn(1, 4, 2, 8, 8),
            "timestep": _ids(10),
            "encoder_hidden_states": randn(2, 5, 16),
            "controlnet_cond": randn(1, 3, 2, 8, 8),
            "conditioning_mask": torch.tensor([1.0, 0.0], dtype=dtype)
            .reshape(1, 1, 2, 1, 1)
            .expand(1, 1, 2, 8, 8)
            .contiguous(),
        },
    ),
    "UNetControlNetXSModel": (
        # the fused UNet + ControlNet-XS adapter (two resnets per block are built in); a learnt
        # control time embedding mixed in at 0.5
        dict(
            sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            norm_num_groups=4,
            cross_attention_dim=16,
            num_attention_heads=2,
            ctrl_conditioning_embedding_out_channels=(8, 16),
            ctrl_block_out_channels=(8, 16),
            ctrl_num_attention_heads=2,
            ctrl_max_norm_num_groups=4,
            ctrl_learn_time_embedding=True,
            time_embedding_mix=0.5,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 16),
            "controlnet_cond": randn(2, 3, 16, 16),
        },
    ),
    "ControlNetUnionModel": (
        # two conditions (control types 0 and 2) fused by the transformer over the task tokens;
        # num_trans_channel / num_proj_channel must equal block_out_channels[0]
        dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
            conditioning_embedding_out_channels=(8, 16),
            addition_time_embed_dim=8,
            num_control_type=3,
            num_trans_channel=32,
            num_trans_head=2,
            num_trans_layer=1,
            num_proj_channel=32,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 16),
            "controlnet_cond": [randn(2, 3, 16, 16), randn(2, 3, 16, 16)],
            "control_type": torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], dtype=dtype),
            "control_type_idx": [0, 2],
            "conditioning_scale": [1.0, 0.5],
        },
    ),
    "HunyuanDiT2DControlNetModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            patch_size=2,
            sample_size=8,
            hidden_size=16,
            transformer_num_layers=6,
            cross_attention_dim=16,
            cross_attention_dim_t5=24,
            pooled_projection_dim=12,
            text_len=5,
            text_len_t5=6,
        ),
        _hunyuan_controlnet_inputs,
    ),
    "TransformerTemporalModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=16,
            num_layers=2,
            norm_num_groups=8,
        ),
        lambda randn, dtype: {"hidden_states": randn(6, 16, 4, 4), "num_frames": 3},
    ),
    "T5FilmDecoder": (
        dict(
            input_dims=8,
            targets_length=16,
            d_model=16,
            num_layers=2,
            num_heads=2,
            d_kv=8,
            d_ff=32,
        ),
        lambda randn, dtype: {
            "encodings_and_masks": [
                (randn(2, 5, 16), _mask(5, 3, total=5).to(dtype)),
                (randn(2, 4, 16), _mask(4, 2, total=4).to(dtype)),
            ],
            "decoder_input_tokens": randn(2, 6, 8),
            "decoder_noise_time": torch.sigmoid(randn(2)),
        },
    ),
    "AudioLDM2UNet2DConditionModel": (
        # per block: a self-attention (None), a cross attention on encoder_hidden_states (16),
        # one on encoder_hidden_states_1 (24), as in AudioLDM 2's [None, 768, 1024]
        dict(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=([None, 16, 24], [None, 16, 24]),
            attention_head_dim=2,  # (the number of heads)
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 16),
            "encoder_attention_mask": _mask(5, 3, total=5),
            "encoder_hidden_states_1": randn(2, 6, 24),
            "encoder_attention_mask_1": _mask(6, 4, total=6),
        },
    ),
    "UniDiffuserModel": (
        # U-ViT: the blocks' first half feeds the second half through long skips
        dict(
            text_dim=12,
            clip_img_dim=10,
            num_text_tokens=5,
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            num_layers=3,
            norm_num_groups=8,
            sample_size=8,
            patch_size=2,
            activation_fn="gelu",
            use_patch_pos_embed=False,
            use_data_type_embedding=True,
        ),
        lambda randn, dtype: {
            "latent_image_embeds": randn(2, 4, 8, 8),
            "image_embeds": randn(2, 1, 10),
            "prompt_embeds": randn(2, 5, 12),
            "timestep_img": _ids(10, 500),
            "timestep_text": _ids(0, 999),
            "data_type": _ids(1, 0),
        },
    ),
    "StableAudioProjectionModel": (
        dict(text_encoder_dim=24, conditioning_dim=16, min_value=0, max_value=10),
        lambda randn, dtype: {
            "text_hidden_states": randn(2, 5, 24),
            "start_seconds": randn(2).abs(),
            "end_seconds": randn(2).abs() * 4.0 + 1.0,
        },
    ),
    "CLIPImageProjection": (
        dict(hidden_size=32),
        lambda randn, dtype: randn(2, 1, 32),
    ),
    "ReduxImageEncoder": (  # an MLP (up, silu, down)
        dict(redux_dim=24, txt_in_features=16),
        lambda randn, dtype: randn(2, 9, 24),
    ),
    "WanVACETransformer3DModel": (
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
            vace_layers=[0, 1],
            vace_in_channels=6,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(5),
            "encoder_hidden_states": randn(1, 5, 16),
            "control_hidden_states": randn(1, 6, 2, 8, 8),
            "control_hidden_states_scale": torch.tensor([1.0, 0.5], dtype=dtype),
        },
    ),
    "SanaVideoTransformer3DModel": (
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
            rope_max_seq_len=32,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 2, 8, 8),
            "encoder_hidden_states": randn(2, 5, 12),
            "timestep": _ids(1, 5),
            "encoder_attention_mask": _mask(5, 3, total=5),
        },
    ),
}


RECIPES = {**_CORE, **_FAMILIES_A, **_FAMILIES_B, **_FAMILIES_C, **_FAMILIES_D}


def draw_zero_parameters(model) -> int:
    """Every parameter that is all zeros drawn anew (normal, std 0.02, seeded): diffusion
    models zero-initialise whole blocks' outputs (adaLN-zero gates, ControlNets' zero
    convolutions), whose units a check of exactness would otherwise see contribute nothing
    whatever the prune. Returns how many were drawn."""
    generator = torch.Generator().manual_seed(2)
    drawn = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.02)
                drawn += 1
    return drawn
