"""Small configs and example inputs of diffusers' model classes, for scripts/sweep_diffusers.py
and tests/test_diffusers.py:
``RECIPES[name] = (config, inputs)``, where ``getattr(diffusers, name)(**config)`` builds a
model of a few hundred thousand parameters at most (HunyuanVideo-1.5's transformer has 4.3M:
its ByT5 text projection is 2048 wide whatever the config), keeping the family's own block layout
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


_ACE_STEP = dict(
    hidden_size=16,
    intermediate_size=32,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    sliding_window=4,
)

_FAMILIES_E = {
    # ACE-Step: Qwen3-like blocks (grouped-query attention, rotary, RMSNorm), alternating
    # sliding-window (4 here) and full attention
    "AceStepAudioTokenizer": (
        dict(
            **_ACE_STEP,
            audio_acoustic_hidden_dim=8,
            pool_window_size=5,
            fsq_dim=16,
            num_attention_pooler_hidden_layers=2,
        ),
        # (batch, 5 Hz patches, pool window, acoustic dim)
        lambda randn, dtype: randn(2, 3, 5, 8),
    ),
    "AceStepAudioTokenDetokenizer": (
        dict(
            **_ACE_STEP,
            audio_acoustic_hidden_dim=8,
            pool_window_size=5,
            num_attention_pooler_hidden_layers=2,
        ),
        lambda randn, dtype: randn(2, 3, 16),
    ),
    "AceStepConditionEncoder": (
        dict(
            **_ACE_STEP,
            text_hidden_dim=12,
            timbre_hidden_dim=8,
            num_lyric_encoder_hidden_layers=2,
            num_timbre_encoder_hidden_layers=2,
        ),
        lambda randn, dtype: {
            "text_hidden_states": randn(2, 5, 12),
            "text_attention_mask": _mask(5, 3, total=5),
            "lyric_hidden_states": randn(2, 6, 12),
            "lyric_attention_mask": _mask(6, 4, total=6),
            # three packed reference clips: two for the first sample, one for the second
            "refer_audio_acoustic_hidden_states_packed": randn(3, 7, 8),
            "refer_audio_order_mask": _ids(0, 0, 1),
        },
    ),
    "AceStepTransformer1DModel": (
        dict(
            **_ACE_STEP,
            num_hidden_layers=2,
            in_channels=24,
            audio_acoustic_hidden_dim=8,
            patch_size=2,
            encoder_hidden_size=12,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 12, 8),
            "timestep": randn(2).abs(),
            "timestep_r": randn(2).abs(),
            "encoder_hidden_states": randn(2, 5, 12),
            "context_latents": randn(2, 12, 16),
        },
    ),
    "AnimaTextConditioner": (
        # learnt T5 token queries cross-attending (rotary) to the Qwen3 states; the output is
        # padded to min_sequence_length
        dict(
            source_dim=12,
            target_dim=16,
            model_dim=16,
            num_layers=2,
            num_attention_heads=2,
            mlp_ratio=2.0,
            target_vocab_size=32,
            min_sequence_length=8,
        ),
        lambda randn, dtype: {
            "source_hidden_states": randn(2, 5, 12),
            "target_input_ids": _ids([3, 17, 5, 9, 1, 0], [4, 2, 8, 0, 0, 0]),
            "target_attention_mask": _mask(6, 4, total=6),
            "source_attention_mask": _mask(5, 3, total=5),
        },
    ),
    "AnyFlowTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        # latents per frame: (batch, frames, channels, height, width)
        # timesteps per frame: (batch, frames)
        lambda randn, dtype: {
            "hidden_states": randn(1, 2, 4, 8, 8),
            "timestep": randn(1, 2).abs() * 500,
            "r_timestep": randn(1, 2).abs() * 100,
            "encoder_hidden_states": randn(1, 5, 16),
        },
    ),
    "AnyFlowFARTransformer3DModel": (
        # frame-autoregressive: three one-frame chunks, the oldest compressed (4x4 patches),
        # under a causal flex-attention block mask
        dict(
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
            full_chunk_limit=2,
            chunk_partition=(1, 1, 1),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 3, 4, 8, 8),
            "timestep": randn(1, 3).abs() * 500,
            "r_timestep": randn(1, 3).abs() * 100,
            "encoder_hidden_states": randn(1, 5, 16),
            "chunk_partition": [1, 1, 1],
        },
    ),
    "AudioLDM2ProjectionModel": (
        # two text encoders' states projected, framed by learnt SOS/EOS tokens, concatenated
        dict(
            text_encoder_dim=12,
            text_encoder_1_dim=10,
            langauge_model_dim=16,
            use_learned_position_embedding=True,
            max_seq_length=6,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 5, 12),
            "hidden_states_1": randn(2, 6, 10),
            "attention_mask": _mask(5, 3, total=5),
            "attention_mask_1": _mask(6, 4, total=6),
        },
    ),
    "AllegroTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            cross_attention_dim=16,
            sample_height=8,
            sample_width=8,
            sample_frames=2,
            caption_channels=12,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "encoder_hidden_states": randn(1, 5, 12),
            "timestep": _ids(500),
            "encoder_attention_mask": _mask(3, total=5),
        },
    ),
    "AutoencoderKLFlux2": (
        # the latents are patchified 2x2 and batch-normalised (running statistics, eval)
        dict(
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderKLHunyuanImage": (
        # its GroupNorms have 32 groups: widths of 32
        dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 32),
            layers_per_block=1,
            spatial_compression_ratio=2,
            sample_size=16,
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderKLHunyuanImageRefiner": (
        dict(
            latent_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            spatial_compression_ratio=2,
            temporal_compression_ratio=2,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLHunyuanVideo15": (
        dict(
            latent_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            spatial_compression_ratio=2,
            temporal_compression_ratio=2,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLKVAE": (
        # its GroupNorms have 32 groups: widths of 32
        dict(channels=32, num_enc_blocks=1, num_dec_blocks=1, z_channels=4, ch_mult=(1, 1)),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderKLKVAEVideo": (
        dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, temporal_compress_times=2),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLKVAEAudio": (
        dict(
            encoder_dim=8,
            encoder_rates=[2, 2],
            latent_dim=16,
            codebook_dim=4,
            decoder_dim=16,
            decoder_rates=[2, 2],
            attn_num_heads=2,
        ),
        lambda randn, dtype: randn(2, 1, 64),
    ),
    "AutoencoderKLLTX2Audio": (
        # a causal (along time) mel-spectrogram VAE, pixel-normalised
        dict(
            base_channels=16,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(8,),
            resolution=16,
            latent_channels=4,
            mel_bins=16,
            mid_block_add_attention=True,
        ),
        lambda randn, dtype: randn(2, 2, 16, 16),
    ),
    "AutoencoderKLLTX2Video": (
        dict(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, False, False),
            decoder_inject_noise=(False,) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
            upsample_residual=(False,) * 3,
            upsample_factor=(1,) * 3,
            patch_size=1,
            patch_size_t=1,
        ),
        lambda randn, dtype: randn(1, 3, 9, 16, 16),
    ),
    "AutoencoderKLMagvit": (
        dict(
            latent_channels=4,
            block_out_channels=[16, 32],
            down_block_types=["SpatialDownBlock3D", "SpatialTemporalDownBlock3D"],
            up_block_types=["SpatialUpBlock3D", "SpatialTemporalUpBlock3D"],
            layers_per_block=1,
            norm_num_groups=8,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "AutoencoderKLQwenImage21": (
        dict(
            base_dim=8,
            decoder_base_dim=12,
            z_dim=4,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, False],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
            in_channels=3,
            out_channels=3,
            patch_size=None,
            scale_factor_temporal=2,
            scale_factor_spatial=4,
        ),
        lambda randn, dtype: randn(2, 3, 1, 16, 16),
    ),
    "AutoencoderRAE": (
        # a frozen ViT-MAE encoder (head dim 64: one head) built from its config, a ViT decoder
        dict(
            encoder_type="mae",
            encoder_hidden_size=64,
            encoder_patch_size=8,
            encoder_num_hidden_layers=1,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=64,
            patch_size=4,
            encoder_input_size=32,
        ),
        lambda randn, dtype: randn(2, 3, 16, 16),
    ),
    "AutoencoderSAME": (
        dict(
            audio_channels=2,
            patch_size=4,
            encoder_channels=8,
            encoder_c_mults=(2,),
            encoder_strides=(2,),
            encoder_transformer_depths=(1,),
            latent_dim=8,
            dim_heads=8,
            ff_mult=2,
            sliding_window=1,
        ),
        lambda randn, dtype: randn(2, 2, 64),
    ),
    "AutoencoderVidTok": (
        dict(
            ch=16,
            ch_mult=[1, 2],
            z_channels=4,
            num_res_blocks=1,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "BriaTransformer2DModel": (
        # Flux-like: joint (MM-DiT) then single-stream blocks, 3-axis rotary embeddings
        dict(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=[4, 4, 8],
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
    "BriaFiboTransformer2DModel": (
        # each block's text stream is half the context embedding, half its own text encoder
        # layer (projected): one layer per block
        dict(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=[4, 4, 8],
            text_encoder_dim=12,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 16, 16),
            "encoder_hidden_states": randn(1, 6, 16),
            "text_encoder_layers": [randn(1, 6, 12), randn(1, 6, 12)],
            "timestep": randn(1).abs(),
            "img_ids": torch.stack(
                [torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1
            ).to(dtype),
            "txt_ids": torch.zeros(6, 3, dtype=dtype),
        },
    ),
    "ChronoEditTransformer3DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            image_dim=10,
            added_kv_proj_dim=24,
            rope_max_seq_len=32,
            rope_temporal_skip_len=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(500),
            "encoder_hidden_states": randn(1, 5, 16),
            "encoder_hidden_states_image": randn(1, 3, 10),
        },
    ),
    "ErnieImageTransformer2DModel": (
        # image and text tokens in one sequence; per-sample text lengths build the mask
        dict(
            hidden_size=16,
            num_attention_heads=2,
            num_layers=2,
            ffn_hidden_size=32,
            in_channels=4,
            out_channels=4,
            patch_size=2,
            text_in_dim=12,
            rope_axes_dim=(4, 2, 2),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "text_bth": randn(2, 5, 12),
            "text_lens": _ids(5, 3),
        },
    ),
    "DreamLiteTransformer2DModel": (
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=16,
            num_layers=2,
            norm_num_groups=8,
            cross_attention_dim=16,
            qk_norm="rms_norm",
            ff_mult=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 8, 8),
            "encoder_hidden_states": randn(2, 5, 16),
        },
    ),
    "DreamLiteUNetModel": (
        dict(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=4,
            down_block_types=(
                "DreamLiteCrossAttnNoSelfAttnDownBlock2D",
                "DreamLiteCrossAttnDownBlock2D",
            ),
            up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=8,
        ),
        lambda randn, dtype: {
            "sample": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 16),
        },
    ),
    "AutoencoderKLMiniMaxH3Audio": (
        dict(
            encoder_dim=8,
            encoder_rates=(2, 2),
            latent_dim=16,
            latent_channels=4,
            num_attention_heads=2,
            decoder_dim=16,
            decoder_rates=(2, 2),
            decoder_kernel_sizes=(4, 4),
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1, 3),),
        ),
        lambda randn, dtype: randn(2, 1, 64),
    ),
    "AutoencoderKLMiniMaxH3": (
        dict(
            latent_channels=4,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            spatial_downsample_factors=(2, 2, 1),
            temporal_downsample_factors=(1, 2, 1),
            norm_num_groups=4,
            decoder_num_layers=2,
            decoder_num_attention_heads=2,
            decoder_attention_head_dim=8,
            decoder_num_register_tokens=2,
            decoder_ffn_mult=2,
            clip_length=5,
            token_drop=1,
            latents_mean=(0.0,) * 4,
            latents_std=(1.0,) * 4,
        ),
        # two 5-frame clips, encoded apart; the last latent frame of all dropped (token_drop), the
        # decoded chunks cross-faded
        lambda randn, dtype: randn(1, 3, 10, 16, 16),
    ),
    "Flux3Transformer2DModel": (
        # per-mode blocks (text, image, reference image each attending within itself), joint blocks,
        # single-stream blocks; per-token modulation; a flow-map target timestep; 4-axis rotary
        dict(
            in_channels=8,
            cond_in_channels=6,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=12,
            timestep_channels=16,
            mlp_ratio=2.0,
            axes_dims_rope=(4, 4, 4, 4),
            flow_map=True,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 8),
            "encoder_hidden_states": randn(2, 5, 12),
            "timestep": torch.sigmoid(randn(2)),
            "img_ids": torch.stack(
                [torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4, torch.zeros(16)], -1
            ),
            "txt_ids": torch.stack([torch.zeros(5)] * 3 + [torch.arange(5.0)], -1),
            "image_cond_hidden_states": randn(2, 4, 6),
            "image_cond_ids": torch.stack(
                [torch.ones(4), torch.arange(4) // 2, torch.arange(4) % 2, torch.zeros(4)], -1
            ),
            "target_timestep": torch.sigmoid(randn(2)) * 0.5,
        },
    ),
    "GlmImageTransformer2DModel": (
        # the autoregressive prior's image tokens (one per patch) are embedded and added, zeroed
        # for the samples whose prior is dropped
        dict(
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            text_embed_dim=12,
            time_embed_dim=16,
            condition_dim=4,
            prior_vq_quantizer_codebook_size=32,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "encoder_hidden_states": randn(2, 5, 12),
            "prior_token_id": (randn(2, 16).abs() * 10).long().clamp(max=31),
            "prior_token_drop": torch.tensor([False, True]),
            "timestep": _ids(10, 500),
            "target_size": torch.tensor([[64.0, 64.0]] * 2, dtype=dtype),
            "crop_coords": torch.tensor([[0.0, 0.0]] * 2, dtype=dtype),
        },
    ),
    "Ideogram4PromptEnhancerHead": (  # the LM head of the prompt enhancer
        dict(hidden_size=16, vocab_size=40),
        lambda randn, dtype: randn(2, 5, 16),
    ),
    "Ideogram4Transformer2DModel": (
        # one packed row: sample 0 (3 text tokens, 2x2 image tokens), sample 1 (2 text, 2x2
        # image), one padding token; segment ids keep the samples apart; interleaved 3D mRoPE
        dict(
            in_channels=8,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            intermediate_size=48,
            adaln_dim=16,
            llm_features_dim=12,
            mrope_section=(2, 2, 2),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 14, 8),
            "timestep": torch.sigmoid(randn(1)),
            "encoder_hidden_states": randn(1, 14, 12),
            "position_ids": torch.tensor(
                [
                    [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
                    + [[65536, 65536 + h, 65536 + w] for h in range(2) for w in range(2)]
                    + [[0, 0, 0], [1, 1, 1]]
                    + [[65536, 65536 + h, 65536 + w] for h in range(2) for w in range(2)]
                    + [[0, 0, 0]]
                ]
            ),
            "segment_ids": torch.tensor([[0] * 7 + [1] * 6 + [2]]),
            "indicator": torch.tensor([[3] * 3 + [2] * 4 + [3] * 2 + [2] * 4 + [-1]]),
        },
    ),
    "Kandinsky5Transformer3DModel": (
        # channels-last latents (batch, frames, height, width, channels); text blocks, then visual
        # blocks cross-attending to the text; 3D rotary from per-axis positions (float32: the time
        # embedding casts the timestep to float32)
        dict(
            in_visual_dim=4,
            in_text_dim=12,
            in_text_dim2=10,
            time_dim=16,
            out_visual_dim=4,
            patch_size=(1, 2, 2),
            model_dim=16,
            ff_dim=32,
            num_text_blocks=1,
            num_visual_blocks=2,
            axes_dims=(2, 2, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2, 8, 8, 4),
            "encoder_hidden_states": randn(1, 5, 12),
            "timestep": _ids(500).to(dtype),
            "pooled_projections": randn(1, 10),
            "visual_rope_pos": [torch.arange(2), torch.arange(4), torch.arange(4)],
            "text_rope_pos": torch.arange(5),
        },
    ),
    "JoyImageEditTransformer3DModel": (
        dict(
            patch_size=[1, 2, 2],
            in_channels=4,
            hidden_size=16,
            num_attention_heads=2,
            text_dim=12,
            mlp_width_ratio=2.0,
            num_layers=2,
            rope_dim_list=[2, 2, 4],
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 2, 8, 8),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 12),
        },
    ),
    "JoyImageEditPlusTransformer3DModel": (
        # pre-patchified tokens (batch, max patches, channels, pt, ph, pw); sample 0 holds two
        # 2x2 images, sample 1 one (padded); the mask covers images and text
        dict(
            patch_size=[1, 2, 2],
            in_channels=4,
            hidden_size=16,
            num_attention_heads=2,
            text_dim=12,
            mlp_width_ratio=2.0,
            num_layers=2,
            rope_dim_list=[2, 2, 4],
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 8, 4, 1, 2, 2),
            "timestep": _ids(10, 500),
            "encoder_hidden_states": randn(2, 5, 12),
            "encoder_hidden_states_mask": _mask(5, 3, total=5),
            "shape_list": [[(1, 2, 2), (1, 2, 2)], [(1, 2, 2)]],
        },
    ),
    "HunyuanImageTransformer2DModel": (
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=(2, 2),
            guidance_embeds=True,
            text_embed_dim=12,
            # (no glyph text stream: its ByT5 projection is 2048 wide whatever the config)
            rope_axes_dim=(4, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": _ids(10, 500).to(dtype),
            "encoder_hidden_states": randn(2, 5, 12),
            "encoder_attention_mask": _mask(5, 3, total=5),
            "guidance": torch.tensor([3500.0] * 2, dtype=dtype),
        },
    ),
    "Krea2Transformer2DModel": (
        # a text tower (grouped-query attention) whose layers feed layerwise and refiner text
        # blocks, then a single-stream DiT over text + image with 3-axis rotary
        dict(
            in_channels=8,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            timestep_embed_dim=16,
            text_hidden_dim=12,
            num_text_layers=2,
            text_num_attention_heads=2,
            text_num_key_value_heads=2,
            text_intermediate_size=24,
            num_layerwise_text_blocks=1,
            num_refiner_text_blocks=1,
            axes_dims_rope=(2, 2, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 8),
            # the text encoder's states at num_text_layers layers: (batch, tokens, layers, dim)
            "encoder_hidden_states": randn(2, 5, 2, 12),
            "timestep": torch.sigmoid(randn(2)),
            "position_ids": torch.cat(
                [
                    torch.stack([torch.arange(5), torch.zeros(5), torch.zeros(5)], -1),
                    torch.stack(
                        [torch.full((16,), 5), torch.arange(16) // 4, torch.arange(16) % 4], -1
                    ),
                ]
            ).long(),
            "encoder_attention_mask": _mask(5, 3, total=5).bool(),
        },
    ),
    "LongCatImageTransformer2DModel": (
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
            "encoder_hidden_states": randn(1, 6, 16),
            "timestep": randn(1).abs(),
            "img_ids": torch.stack(
                [torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1
            ).to(dtype),
            "txt_ids": torch.zeros(6, 3, dtype=dtype),
        },
    ),
    "OvisImageTransformer2DModel": (
        dict(
            patch_size=1,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(4, 4, 8),
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
    "PRXTransformer2DModel": (
        dict(
            in_channels=4,
            patch_size=2,
            context_in_dim=12,
            hidden_size=16,
            mlp_ratio=2.0,
            num_heads=2,
            depth=2,
            axes_dim=[4, 4],
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": torch.sigmoid(randn(2)),
            "encoder_hidden_states": randn(2, 5, 12),
            "attention_mask": _mask(5, 3, total=5).bool(),
        },
    ),
    "QwenImageControlNetModel": (
        dict(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
            extra_condition_channels=4,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 16, 16),
            "controlnet_cond": randn(1, 16, 20),
            "conditioning_scale": 1.0,
            "encoder_hidden_states": randn(1, 6, 16),
            "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.long),
            "timestep": randn(1).abs(),
            "img_shapes": [[(1, 4, 4)]],
        },
    ),
    "NucleusMoEImageTransformer2DModel": (
        # every block dense: the experts' weights are torch.empty, left uninitialised (NaNs and
        # garbage) until a checkpoint loads; the dense MLP's width rounds down to a multiple of 128,
        # 0 here (zero-width linears: the blocks' MLPs add nothing; mlp_ratio=12 gives 128)
        dict(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=5,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_heads=1,
            joint_attention_dim=12,
            axes_dims_rope=(2, 2, 4),
            mlp_ratio=2.0,
            dense_moe_strategy="all_dense",
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 16, 16),
            "img_shapes": [(1, 4, 4)] * 2,
            "encoder_hidden_states": randn(2, 5, 12),
            "encoder_hidden_states_mask": _mask(5, 3, total=5),
            "timestep": torch.sigmoid(randn(2)),
        },
    ),
    "MMAudioVAE": (
        # a waveform turned into a log-mel spectrogram (STFT), then a 1D VAE over the mel frames
        # (float32: the mel filterbank is a float32 buffer)
        dict(
            mel_bins=16,
            latent_channels=4,
            hidden_channels=16,
            channel_multipliers=(1, 2),
            layers_per_block=1,
            n_fft=64,
            hop_length=16,
        ),
        lambda randn, dtype: randn(2, 256),
    ),
    "MMAudioVocoder": (
        # BigVGAN (snake activations, anti-aliased multi-periodicity resblocks)
        dict(
            num_mels=16,
            upsample_initial_channel=16,
            upsample_rates=(2, 2),
            upsample_kernel_sizes=(4, 4),
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1, 3),),
        ),
        lambda randn, dtype: randn(2, 16, 8),
    ),
    "LongCatAudioDiTTransformer": (
        dict(
            dit_dim=16,
            dit_depth=4,
            dit_heads=2,
            dit_text_dim=12,
            latent_dim=8,
            ff_mult=2.0,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 10, 8),
            "encoder_hidden_states": randn(2, 5, 12),
            "encoder_attention_mask": _mask(5, 3, total=5).bool(),
            "timestep": torch.sigmoid(randn(2)),
            "attention_mask": _mask(10, 7, total=10).bool(),
            "latent_cond": randn(2, 10, 8),
        },
    ),
    "LongCatAudioDiTVae": (
        dict(
            channels=8,
            c_mults=[1, 2],
            strides=[2, 2],
            latent_dim=4,
            encoder_latent_dim=8,
            downsampling_ratio=4,
        ),
        lambda randn, dtype: randn(2, 1, 64),
    ),
    "MiniMaxMusic3ConditionEncoder": (
        # a softmax-weighted mix of the autoregressive stage's layers, projected and resampled
        # (nearest) from its frame rate to the latent rate
        dict(
            condition_hidden_dim=12,
            num_condition_layers=3,
            out_dim=16,
            input_sampling_rate=24000,
            input_hop_length=960,
            output_sampling_rate=44100,
            output_hop_length=512,
        ),
        lambda randn, dtype: randn(2, 5, 36),
    ),
    "MiniMaxMusic3RVQDepthDecoder": (
        dict(
            hidden_size=16,
            num_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            audio_vocab_size=32,
            num_codebooks=4,
            max_position_embeddings=8,
        ),
        lambda randn, dtype: randn(2, 5, 16),
    ),
    "MiniMaxMusic3Transformer1DModel": (
        dict(
            in_channels=8,
            condition_dim=12,
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            ff_inner_dim=32,
            rotary_dim=4,
            fourier_embedding_dim=16,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 8, 10),
            "timestep": torch.sigmoid(randn(2)),
            "encoder_hidden_states": randn(2, 10, 12),
        },
    ),
    "MiniMaxMusic3Vocoder": (
        # the two stereo channels decoded apart (half the latent channels each)
        dict(
            latent_channels=8,
            decoder_input_dim=16,
            decoder_hidden_dim=16,
            upsampling_ratios=(2, 2),
        ),
        lambda randn, dtype: randn(2, 8, 6),
    ),
    "MotifVideoTransformer3DModel": (
        # image to video: latents, the conditioning latents and their mask (9 = 4 + 4 + 1); dual
        # then single-stream blocks, then decoder blocks; text cross attention in both (float32: the
        # sinusoidal timestep projection reaches the embedder's linear uncast)
        dict(
            in_channels=9,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_single_layers=1,
            num_decoder_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            text_embed_dim=12,
            image_embed_dim=10,
            rope_axes_dim=(2, 2, 4),
            enable_text_cross_attention_dual=True,
            enable_text_cross_attention_single=True,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 9, 2, 8, 8),
            "timestep": _ids(500).to(dtype),
            "encoder_hidden_states": randn(1, 5, 12),
            "encoder_attention_mask": _mask(4, total=5),
            "image_embeds": randn(1, 3, 10),
        },
    ),
    "StableAudio3DiTModel": (
        # differential attention, learnt memory tokens, local additive (inpainting) conditioning
        dict(
            io_channels=8,
            patch_size=1,
            embed_dim=16,
            depth=2,
            num_heads=2,
            cond_token_dim=12,
            global_cond_dim=10,
            local_add_cond_dim=9,
            timestep_features_dim=16,
            ff_mult=2.0,
            num_memory_tokens=2,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 8, 10),
            "timestep": torch.sigmoid(randn(2)),
            "encoder_hidden_states": randn(2, 5, 12),
            "global_hidden_states": randn(2, 10),
            "encoder_attention_mask": _mask(5, 3, total=5).bool(),
            "local_add_cond": randn(2, 9, 10),
        },
    ),
    "StableAudio3DurationEmbedder": (
        dict(output_dim=16, fourier_dim=16),
        lambda randn, dtype: randn(2).abs() * 30.0,
    ),
    "UniDiffuserTextDecoder": (
        # a GPT-2 (transformers') decoding from a projected CLIP prefix
        dict(
            prefix_length=4,
            prefix_inner_dim=12,
            prefix_hidden_dim=8,
            vocab_size=40,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_inner=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        lambda randn, dtype: {
            "input_ids": _ids([5, 17, 3, 9, 1], [4, 2, 8, 0, 0]),
            "prefix_embeds": randn(2, 4, 12),
            # the prefix positions always attended
            "attention_mask": torch.cat(
                [torch.ones(2, 4, dtype=dtype), _mask(5, 3, total=5).to(dtype)], 1
            ),
        },
    ),
    "LTX2VideoTransformer3DModel": (
        # joint audio-video blocks: each stream's self and cross attention, then audio-to-video and
        # video-to-audio cross attention; 3D rotary (video), 1D (audio)
        dict(
            in_channels=8,
            out_channels=8,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            audio_in_channels=6,
            audio_out_channels=6,
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            num_layers=2,
            caption_channels=12,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2 * 4 * 4, 8),
            "audio_hidden_states": randn(1, 5, 6),
            "encoder_hidden_states": randn(1, 6, 12),
            "audio_encoder_hidden_states": randn(1, 6, 12),
            "timestep": _ids(500),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=dtype),
            "audio_encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=dtype),
            "num_frames": 2,
            "height": 4,
            "width": 4,
            "audio_num_frames": 5,
        },
    ),
    "WanAnimateTransformer3DModel": (
        # the first latent frame is the reference, the others get the pose latents added; face
        # crops (16 x 16 here) go through a motion encoder and a temporal face encoder (time / 4)
        # into face adapters (cross attention per frame)
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=12,
            latent_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            image_dim=10,
            rope_max_seq_len=32,
            motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8},
            motion_encoder_size=16,
            motion_style_dim=16,
            motion_dim=4,
            motion_encoder_dim=16,
            face_encoder_hidden_dim=16,
            face_encoder_num_heads=2,
            inject_face_latents_blocks=1,
            motion_encoder_batch_size=4,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 12, 2, 8, 8),
            "timestep": _ids(500),
            "encoder_hidden_states": randn(1, 5, 16),
            "encoder_hidden_states_image": randn(1, 3, 10),
            "pose_hidden_states": randn(1, 4, 1, 8, 8),
            "face_pixel_values": randn(1, 3, 4, 16, 16),
        },
    ),
    "Kandinsky6Transformer3DModel": (
        # channels-last video latents with the visual condition and its mask (9 = 2 * 4 + 1), an
        # audio stream beside the video one, text blocks, 3D rotary
        dict(
            in_visual_dim=4,
            out_visual_dim=4,
            in_text_dim=12,
            in_text_dim2=10,
            time_dim=16,
            patch_size=(1, 2, 2),
            model_dim=16,
            ff_dim=32,
            num_text_blocks=1,
            num_visual_blocks=2,
            axes_dims=(2, 2, 4),
            visual_cond=True,
            in_audio_dim=6,
            out_audio_dim=6,
            model_dim_a=16,
            time_dim_a=16,
            ff_dim_a=32,
            axes_dims_a=(8,),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2, 8, 8, 9),
            "encoder_hidden_states": randn(1, 5, 12),
            "pooled_projections": randn(1, 10),
            "timestep": _ids(500).to(dtype),
            "audio_hidden_states": randn(1, 6, 6),
            "encoder_attention_mask": _mask(4, total=5).bool(),
        },
    ),
    "Kandinsky6SRTransformer3DModel": (
        # super-resolution over latent tiles (noisy, anchor, anchor mask: 2 * 4 + 1 channels) with
        # NABLA attention: 8 x 8 token blocks under a sliding-tile mask
        dict(
            in_visual_dim=4,
            out_visual_dim=4,
            time_dim=16,
            patch_size=(1, 1, 1),
            model_dim=16,
            ff_dim=32,
            num_visual_blocks=2,
            axes_dims=(2, 2, 4),
            nabla_window=(3, 3, 3),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 2, 16, 16, 9),
            "timestep": _ids(500).to(dtype),
        },
    ),
    "Kandinsky6SRVAE": (
        dict(
            latent_channels=4,
            encoder_block_out_channels=(8, 16, 16),
            decoder_block_out_channels=(8, 16, 16),
            layers_per_block=1,
            temporal_compression_ratio=2,
            temporal_compression_start_level=1,
        ),
        lambda randn, dtype: randn(1, 3, 5, 16, 16),
    ),
    "Kandinsky6SRLatentUpscalerBank": (
        # one upscaler per scale (x2, x4), the x4 one through the x2 adapter; the scale picks one
        dict(
            in_channels=4,
            stage_channels=(16, 16, 8),
            num_pre_blocks=1,
            num_mid_blocks=1,
            num_post_blocks=1,
            num_x2_adapter_blocks=1,
            scales=(2, 4),
        ),
        lambda randn, dtype: {"latents": randn(1, 4, 2, 4, 4), "scale": 4},
    ),
    "HeliosTransformer3DModel": (
        # Wan-like blocks over the current chunk and its multi-term memory: short (patch 1x2x2),
        # mid (2x4x4) and long (4x8x8) history latents, each with its own frame indices for the rope
        dict(
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            rope_dim=(4, 4, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(500),
            "encoder_hidden_states": randn(1, 5, 16),
            "indices_hidden_states": _ids([8, 9]),
            "indices_latents_history_short": _ids([6, 7]),
            "indices_latents_history_mid": _ids([4, 5]),
            "indices_latents_history_long": _ids([0, 1, 2, 3]),
            "latents_history_short": randn(1, 4, 2, 8, 8),
            "latents_history_mid": randn(1, 4, 2, 8, 8),
            "latents_history_long": randn(1, 4, 4, 8, 8),
        },
    ),
    "HunyuanVideoFramepackTransformer3DModel": (
        # HunyuanVideo blocks over the next section and its packed context: clean latents (1x),
        # history at 2x and 4x compression, each with its frame indices (1D, shared by the batch);
        # a SigLIP image projection
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
            image_condition_type=None,
            has_image_proj=True,
            image_proj_dim=12,
            has_clean_x_embedder=True,
        ),
        lambda randn, dtype: {
            "hidden_states": randn(1, 4, 2, 8, 8),
            "timestep": _ids(500),
            "encoder_hidden_states": randn(1, 6, 16),
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.long),
            "pooled_projections": randn(1, 8),
            "image_embeds": randn(1, 3, 12),
            "indices_latents": _ids(7, 8),
            "guidance": torch.full((1,), 3000.0, dtype=dtype),
            "latents_clean": randn(1, 4, 2, 8, 8),
            "indices_latents_clean": _ids(0, 9),
            "latents_history_2x": randn(1, 4, 2, 8, 8),
            "indices_latents_history_2x": _ids(5, 6),
            "latents_history_4x": randn(1, 4, 4, 8, 8),
            "indices_latents_history_4x": _ids(1, 2, 3, 4),
        },
    ),
    "LTX2VideoDiffusionDecoderModel": (
        # deterministic upsampling stages, then a one-step diffusion stage (attention blocks) that
        # denoises pixel noise drawn from the global generator (seeded before each compared forward)
        dict(
            latent_channels=4,
            patch_size=2,
            decoder_head_dim=8,
            decoder_stage_channels=(16, 8, 8, 8, 8),
            decoder_stage_depths=(1, 1, 1, 1, 1),
            decoder_stage_kernels=((3, 3, 3),) * 4,
            decoder_upsample_strides=((1, 2, 2), (2, 1, 1), (1, 2, 2), (1, 1, 1)),
            decoder_upsample_channel_reductions=(2, 1, 1, 1),
            decoder_stage5_kernel=(3, 3, 3),
            decoder_t_emb_dim=16,
            spatial_compression_ratio=8,
            temporal_compression_ratio=2,
        ),
        lambda randn, dtype: randn(1, 4, 2, 4, 4),
    ),
}


def _cosmos3_inputs(randn, dtype):
    # one packed sequence: 5 text tokens (the causal understanding prefix), then the generation
    # stream: a video latent (2 frames of 2 x 2 patches, the first frame a clean condition),
    # 3 sound frames and 2 action frames (the first a condition); 3D mRoPE ids, the spatial
    # ones reset per modality
    text = torch.arange(5).expand(3, 5)
    frames, rows, cols = torch.meshgrid(
        torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij"
    )
    vision = torch.stack([5 + frames.flatten(), rows.flatten(), cols.flatten()])
    sound = torch.tensor([[5, 6, 7], [0, 0, 0], [0, 0, 0]])
    action = torch.tensor([[6, 7], [0, 0], [0, 0]])
    return {
        "input_ids": _ids(3, 17, 9, 25, 1),
        "text_indexes": torch.arange(5),
        "position_ids": torch.cat([text, vision, sound, action], dim=1),
        "und_len": 5,
        "sequence_length": 18,
        "vision_tokens": [randn(1, 4, 2, 4, 4)],
        "vision_token_shapes": [(2, 2, 2)],
        "vision_sequence_indexes": torch.arange(5, 13),
        "vision_mse_loss_indexes": torch.arange(9, 13),
        "vision_timesteps": torch.full((4,), 500.0, dtype=dtype),
        "vision_noisy_frame_indexes": [_ids(1)],
        "sound_tokens": [randn(4, 3)],
        "sound_token_shapes": [(3, 1, 1)],
        "sound_sequence_indexes": torch.arange(13, 16),
        "sound_mse_loss_indexes": torch.arange(13, 16),
        "sound_timesteps": torch.full((3,), 500.0, dtype=dtype),
        "sound_noisy_frame_indexes": [torch.arange(3)],
        "action_tokens": [randn(2, 3)],
        "action_token_shapes": [(2, 1, 1)],
        "action_sequence_indexes": _ids(16, 17),
        "action_mse_loss_indexes": _ids(17),
        "action_timesteps": torch.full((1,), 500.0, dtype=dtype),
        "action_noisy_frame_indexes": [_ids(1)],
        "action_domain_ids": [_ids(1)],
    }


def _minimax_h3_inputs(randn, dtype):
    # one packed sequence shared by the batch: 4 text rows, a video latent of 2 frames of 2 x 2
    # patches (the first frame a clean condition), 3 audio rows; two distinct timesteps, each
    # row's AdaLN row picked by (timestep, modality); (t, h, w) rotary coordinates per row
    frames, rows, cols = torch.meshgrid(
        torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij"
    )
    video = torch.stack([4 + frames.flatten(), rows.flatten(), cols.flatten()], dim=1)
    text_and_audio = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 0]]
    )
    return {
        "hidden_states": randn(2, 8, 16),
        "audio_hidden_states": randn(2, 3, 6),
        "encoder_hidden_states": randn(2, 4, 12),
        "timestep": torch.tensor([0.0, 0.7], dtype=dtype),
        "timestep_indices": _ids(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1),
        # 0 video, 1 text, 2 audio
        "token_tags": _ids(1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2),
        "position_ids": torch.cat([text_and_audio[:4], video, text_and_audio[4:]]),
        "video_indices": torch.arange(4, 12),
        "audio_indices": torch.arange(12, 15),
        "text_indices": torch.arange(4),
    }


def _rfd4_inputs(randn, dtype):
    # 6 tokens (the last two of the second design padding), the first an in-context condition;
    # conditioned atom coordinates (in angstrom, NaN where not given) and hotspots, CATH labels,
    # the pair features (molecule and entity ids, bond path lengths, index groups); two passes
    coordinates = randn(2, 6, 37, 3)
    coordinates[:, :, 4:] = float("nan")
    distance = (torch.arange(6)[:, None] - torch.arange(6)[None]).abs()
    conditioning = {
        "is_in_context_conditioning": torch.tensor([[True] + [False] * 5] * 2),
        "supports_local_latent": torch.tensor([[True] * 5 + [False]] * 2),
        "condition_coordinate_1_atom": coordinates,
        "condition_secondary-structure_1_residue": _ids([0, 1, 1, 2, 3, 0], [2, 2, 1, 0, 0, 0]),
        "condition_hotspot_1_atom": (randn(2, 6, 37) > 1).long(),
        "condition_cath-label_1_residue": torch.tensor([2, 10, 100]).expand(2, 6, 3),
        "condition_index-group_1_token": _ids([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 0]),
        "molecule_iid": _ids([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]),
        "molecule_entity_id": _ids([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]),
        "token_bond_path_length": distance.expand(2, 6, 6),
        "bond_mask": distance.eq(1).expand(2, 6, 6),
    }
    return {
        "bb_ca": randn(2, 6, 3),
        "local_latents": randn(2, 6, 4),
        "bb_ca_time": torch.sigmoid(randn(2)),
        "local_latents_time": torch.sigmoid(randn(2)),
        "padding_mask": _mask(6, 4, total=6).bool(),
        "token_type": _ids([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]),
        "atom37_mask": torch.arange(37).expand(2, 6, 37) < 5,
        "conditioning": conditioning,
        "recycle_depth": 2,
    }


def _sana_wm_refiner_inputs(randn, dtype):
    from diffusers.models.transformers.transformer_sana_wm_refiner import (
        SanaWMLTX2AudioVideoRotaryPosEmbed,
    )

    # the caller builds the video RoPE (the model's own rope, with its default settings) over
    # 2 latent frames of 4 x 4; per-token timesteps, the first frame's tokens clean
    rope = SanaWMLTX2AudioVideoRotaryPosEmbed(dim=16)
    cos, sin = rope(rope.prepare_video_coords(1, 2, 4, 4, device="cpu", fps=24.0))
    return {
        "hidden_states": randn(1, 2 * 4 * 4, 8),
        "encoder_hidden_states": randn(1, 6, 12),
        "timestep": torch.cat([torch.zeros(1, 16), torch.full((1, 16), 500.0)], dim=1).to(dtype),
        "video_rotary_emb": (cos.to(dtype), sin.to(dtype)),
        "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=dtype),
    }


def _sana_wm_inputs(randn, dtype):
    # 3 latent frames of 4 x 4, the first a clean condition (timestep 0); per frame a camera:
    # a camera-to-world matrix (rotated about the vertical axis, moving along x), flattened, and
    # pinhole intrinsics fx, fy, cx, cy on the token grid; Plucker ray embeddings
    angles = torch.tensor([0.0, 0.1, 0.2])
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 0, 0] = c2w[:, 2, 2] = angles.cos()
    c2w[:, 0, 2], c2w[:, 2, 0] = angles.sin(), -angles.sin()
    c2w[:, 0, 3] = torch.tensor([0.0, 0.2, 0.4])
    cameras = torch.cat([c2w.flatten(1), torch.tensor([[4.0, 4.0, 2.0, 2.0]]).expand(3, 4)], dim=1)
    return {
        "hidden_states": randn(1, 4, 3, 4, 4),
        "timestep": torch.tensor([[[0.0, 700.0, 700.0]]], dtype=dtype),
        "encoder_hidden_states": randn(1, 1, 6, 12),
        "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
        "camera_conditions": cameras[None].to(dtype),
        "chunk_plucker": randn(1, 12, 3, 4, 4),
    }


def _wan_animate_2_inputs(randn, dtype):
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    # the reference pass (kv_cache_mode="extract": dense self-attention, the pre-rotary keys and
    # values stored into the cache); the generation pass attends through a flex BlockMask built
    # with torch.compile; latents of 2 frames of 8 x 8, patch 2 -> 32 tokens, with their
    # condition latents concatenated on channels; the text padded to text_len
    return {
        "hidden_states": [randn(4, 2, 8, 8), randn(4, 2, 8, 8)],
        "timestep": _ids(500, 500),
        "encoder_hidden_states": [randn(5, 12), randn(3, 12)],
        "condition_latents": [randn(4, 2, 8, 8), randn(4, 2, 8, 8)],
        "kv_cache": WanAnimate2KVCache(2),
        "kv_cache_mode": "extract",
        "seq_len": 32,
        "offset_grid_sizes": torch.tensor([[2, 4, 4]]),
    }


_FAMILIES_F = {
    "BriaFibo2Transformer2DModel": (
        # Z-Image blocks (the FFN width rounds down to a multiple of 64: 0 here; the timestep MLP
        # is 256 -> 1024 -> dim whatever the config); a Perceiver squeezes the text into 2 or 4
        # gist tokens by text length, padded and masked in a batch; layer 1 cross-attends to its
        # own text bundle; one context image
        dict(
            in_channels=4,
            patch_size=2,
            dim=16,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            cap_feat_dim=12,
            injection_layer_ids=(1,),
            perceiver_num_layers=1,
            min_num_gist_tokens=2,
            max_num_gist_tokens=4,
            gist_step=2,
            gist_min_text_len=2,
            gist_max_text_len=8,
            axes_dims=(2, 2, 4),
            axes_lens=(8, 8, 8),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4, 8, 8),
            "timestep": torch.sigmoid(randn(2)),
            "encoder_hidden_states": randn(2, 2, 6, 12),
            "encoder_attention_mask": _mask(6, 2, total=6).bool(),
            "context_latents": [randn(2, 4, 4, 8)],
        },
    ),
    "Cosmos3AVAEAudioTokenizer": (
        # STFT features (n_fft 16, hop 4) through ConvNeXt blocks down 4x, an Oobleck decoder up
        # 16x; the waveform is peak-normalised and padded to a multiple of 16 samples
        dict(
            vocoder_input_dim=4,
            dec_dim=8,
            dec_c_mults=(1, 2),
            dec_strides=(4, 4),
            dec_out_channels=2,
            enc_dim=8,
            enc_num_blocks=1,
            enc_n_fft=16,
            enc_hop_length=4,
            enc_latent_dim=8,
            enc_c_mults=(1, 2),
            enc_strides=(2, 2),
        ),
        lambda randn, dtype: randn(2, 2, 60),
    ),
    "Cosmos3OmniTransformer": (
        # a mixture of transformers: the text prefix attends causally through its own projections,
        # the generation tokens attend to everything through theirs; the action heads' weights
        # are looked up per embodiment domain
        dict(
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            latent_channel=4,
            latent_patch_size=2,
            num_attention_heads=2,
            num_hidden_layers=2,
            num_key_value_heads=1,
            patch_latent_dim=16,
            rope_axes_dim=(2, 1, 1),
            action_dim=3,
            action_gen=True,
            num_embodiment_domains=2,
            sound_dim=4,
            sound_gen=True,
            vocab_size=32,
        ),
        _cosmos3_inputs,
    ),
    "HunyuanVideo15Transformer3DModel": (
        # the ByT5 text projection is 2048 wide whatever the config (4.2M of the 4.3M
        # parameters); the image, ByT5 and text tokens are reordered per sample, valid ones first
        dict(
            in_channels=9,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_refiner_layers=1,
            text_embed_dim=16,
            text_embed_2_dim=8,
            image_embed_dim=12,
            rope_axes_dim=(2, 2, 4),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 9, 2, 4, 4),
            # float: the timestep's dtype is the embedder's compute dtype
            "timestep": _ids(10.0, 500.0).to(dtype),
            "encoder_hidden_states": randn(2, 6, 16),
            "encoder_attention_mask": _mask(6, 4, total=6),
            "encoder_hidden_states_2": randn(2, 4, 8),
            "encoder_attention_mask_2": _mask(4, 2, total=4),
            "image_embeds": randn(2, 3, 12),
        },
    ),
    "MiniMaxH3Transformer3DModel": (
        # self-attention only, over the packed text, video and audio rows; heads wider than the
        # residual stream (2 x 16 > 16), as in the real model; the rotary embedding turns 12 of
        # each head's 16 channels
        dict(
            num_attention_heads=2,
            attention_head_dim=16,
            hidden_size=16,
            num_layers=2,
            num_refiner_layers=1,
            ffn_dim=32,
            in_channels=4,
            audio_in_channels=6,
            text_dim=12,
            freq_dim=16,
            time_embed_hidden_dim=16,
            time_embed_dim=8,
            rope_freq_dim=2,
        ),
        _minimax_h3_inputs,
    ),
    "QwenImage21Transformer2DModel": (
        # one single-stream sequence: the text, with a 2 x 2 condition image (one vision-language
        # slot, a 2 x 2 group of latent tokens) inside it, then the 2 x 4 target image (two slots);
        # block-causal attention (causal, but each image block bidirectional); text and the
        # condition image modulated from t = 0
        dict(
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            context_in_dim=12,
            mlp_ratio=2,
            axes_dims_rope=(4, 6, 6),
        ),
        lambda randn, dtype: {
            "hidden_states": randn(2, 4 + 8, 4),
            "encoder_hidden_states": randn(2, 6, 12),
            "timestep": torch.sigmoid(randn(2)),
            "img_shapes": [[(1, 2, 2), (1, 2, 4)]] * 2,
            "img_mask": torch.tensor([[False, False, True, False, False, False, True, True]] * 2),
            "encoder_hidden_states_mask": _mask(6, 5, total=6).bool(),
        },
    ),
    "RFD4ProteinaAutoencoder": (
        # forward decodes (the encoder is not run): per-token latents and CA positions to atom37
        # coordinates, residue types by argmax (allowed per token type) and the atoms present
        dict(
            atom37_mask=[[atom < 4 + residue for atom in range(37)] for residue in range(5)],
            allowed_residue_types=[
                [True, True, True, True, False],
                [False, False, False, True, True],
            ],
            latent_dim=4,
            n_residue_types=5,
            num_token_types=2,
            nlayers=2,
            token_dim=16,
            nheads=2,
            dim_cond=8,
            pair_repr_dim=8,
            token_type_emb_dim=4,
        ),
        lambda randn, dtype: {
            "z_latent": randn(2, 6, 4),
            "ca_coors_nm": randn(2, 6, 3),
            "padding_mask": _mask(6, 4, total=6).bool(),
            "token_type": _ids([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]),
            "conditioning": {
                "is_in_context_conditioning": torch.tensor([[True] + [False] * 5] * 2),
                "supports_local_latent": torch.tensor([[True] * 5 + [False]] * 2),
                # residue 0 is the mask token: the decoder decides
                "condition_sequence_1_residue": _ids([0, 3, 0, 0, 1, 0], [0, 0, 2, 0, 0, 0]),
            },
        },
    ),
    "RFD4ProteinaTransformer": (
        # token trunk with pair-biased attention, the pair representation updated by triangle
        # multiplications after layer 0; the default conditioning and pair features, a subset of
        # the token features (the default ones want every atom-level annotation)
        dict(
            nlayers=2,
            token_dim=16,
            nheads=2,
            dim_cond=8,
            pair_repr_dim=8,
            latent_dim=4,
            token_type_emb_dim=4,
            cath_emb_dim=2,
            t_emb_dim=8,
            seq_sep_dim=8,
            xt_pair_dist_dim=6,
            feats_seq=(
                "xt_bb_ca",
                "xt_local_latents",
                "token_type",
                "cond_a37coors_nm",
                "secondary_structure",
                "hotspot",
            ),
            tri_mult_c=8,
            num_sequence_classes=5,
            num_token_types=2,
            recycle_conditioning_dim=2,
        ),
        _rfd4_inputs,
    ),
    "SanaWMLTX2RefinerTransformer3DModel": (
        # LTX-2's modules (the config of LTX2VideoTransformer3DModel's recipe), of which the forward
        # runs the video stream only: the audio modules are built but not used
        dict(_FAMILIES_E["LTX2VideoTransformer3DModel"][0]),
        _sana_wm_refiner_inputs,
    ),
    "SanaWMTransformer3DModel": (
        # camera-controlled blocks: block 0 a bidirectional gated-delta-net linear attention, block
        # 1 softmax attention, each with a camera branch (per-ray 4 x 4 transforms on half of each
        # head, rotary on the other half); a temporal convolution in the FFN; Plucker embeddings
        # added after each attention
        dict(
            in_channels=4,
            num_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            softmax_every_n=2,
            linear_head_dim=16,
            chunk_plucker_channels=12,
            caption_channels=12,
            mlp_ratio=2.0,
        ),
        _sana_wm_inputs,
    ),
    "WanAnimate2Transformer3DModel": (
        # no CLIP image branch: its projection is 1280 wide whatever the config
        dict(
            text_len=8,
            in_dim=8,
            dim=16,
            ffn_dim=32,
            freq_dim=16,
            text_dim=12,
            out_dim=4,
            num_heads=2,
            num_layers=2,
            use_img_emb=False,
        ),
        _wan_animate_2_inputs,
    ),
}


RECIPES = {
    **_CORE,
    **_FAMILIES_A,
    **_FAMILIES_B,
    **_FAMILIES_C,
    **_FAMILIES_D,
    **_FAMILIES_E,
    **_FAMILIES_F,
}


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
