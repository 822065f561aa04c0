"""CLIP towers walked layer by layer (transformers ``CLIPTextModel`` / ``CLIPVisionModel`` / ``CLIPModel``).

Used for Stable Diffusion's text encoder and for PMG's CLIP scorer; inference only. Counting conventions:
:mod:`research.pmg.plan.tally`.
"""
from __future__ import annotations

from typing import Any

from research.pmg.plan.arch import ClipArch
from research.pmg.plan.tally import Tally


def _encoder_layers(t: Tally, cfg: dict[str, Any], tokens: int) -> None:
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]
    for _ in range(cfg["num_hidden_layers"]):
        with t.block("layer", tokens * h):
            t.norm(tokens * h, h, grad=False)
            for _ in range(3):  # q, k, v
                t.linear(tokens, h, h, grad=False)
            t.attention(cfg["num_attention_heads"], tokens, tokens, h, grad_q=False, grad_kv=False)
            t.linear(tokens, h, h, grad=False)
            t.norm(tokens * h, h, grad=False)
            t.linear(tokens, h, ff, grad=False)
            t.elementwise(tokens * ff, grad=False)
            t.linear(tokens, ff, h, grad=False)


def text_tally(cfg: dict[str, Any], *, tokens: int | None = None, projection_dim: int = 0) -> Tally:
    """The text tower over ``tokens`` tokens (default ``max_position_embeddings``); with ``projection_dim`` the
    ``text_projection`` of ``CLIPModel`` on the pooled token (``get_text_features``)."""
    n = tokens or cfg["max_position_embeddings"]
    h = cfg["hidden_size"]
    t = Tally()
    with t.block("embeddings", n * h):
        t.params += (cfg["vocab_size"] + cfg["max_position_embeddings"]) * h
    _encoder_layers(t, cfg, n)
    with t.block("head", n * h):
        t.norm(n * h, h, grad=False)
        if projection_dim:
            t.linear(1, h, projection_dim, grad=False, bias=False)
    return t


def vision_tally(cfg: dict[str, Any], *, projection_dim: int = 0) -> Tally:
    """The vision tower on one image (``get_image_features`` with ``projection_dim``)."""
    h, p, side = cfg["hidden_size"], cfg["patch_size"], cfg["image_size"]
    patches = (side // p) ** 2
    n = patches + 1
    t = Tally()
    with t.block("embeddings", cfg["num_channels"] * side * side):
        t.params += h + n * h  # class embedding, position embedding
        t.conv(cfg["num_channels"], h, p, side * side, patches, grad=False, bias=False)
        t.norm(n * h, h, grad=False)  # pre_layrnorm
    _encoder_layers(t, cfg, n)
    with t.block("head", h):
        t.norm(h, h, grad=False)  # post_layernorm on the pooled class token
        if projection_dim:
            t.linear(1, h, projection_dim, grad=False, bias=False)
    return t


def clip_model_params(arch: ClipArch) -> int:
    """Parameters of ``CLIPModel``: both towers, both projections and the logit scale."""
    return (text_tally(arch.text, projection_dim=arch.projection_dim).params
            + vision_tally(arch.vision, projection_dim=arch.projection_dim).params + 1)
