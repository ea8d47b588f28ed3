"""The decoder for automatic mask generation's point batches, restructured for the CPU.

Same weights, same function as ``PromptDecoder`` for point prompts without a mask input,
with the mask decoder's work reordered (exact in real arithmetic; float results differ by
rounding, tested against the reference):

- No per-prompt copy of the image embedding: without a mask input every prompt's dense
  embedding is the same, so the first block's image-side projections are computed once
  for the batch and broadcast (the reference repeats the embedding per prompt first).
- Cross-attention with few tokens folded around its projections. Image-side projections
  (256 -> 128 channels on 4096 positions per prompt) are replaced by the same products
  taken on the handful of tokens: attention logits are ``image @ (W_k^T q)`` and values
  ``(softmax @ image) W_v^T`` (a softmax row sums to 1, so the value bias passes through;
  a key bias is constant along the softmax axis and drops out). Image-to-token attention
  likewise: logits ``image @ (W_q^T k) + b_q.k`` and output ``softmax @ (v W_o^T)``.
  This halves the per-prompt multiply-adds and removes the head transposes of
  4096-position tensors.
- Output upscaling in channels-last order: each 2x2-stride-2 transposed convolution is a
  matrix product per position whose outputs tile the doubled grid; LayerNorm2d becomes a
  last-axis layer norm. Only the final masks are put back in row-major pixel order.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def tokens_to_image(attention, tokens, image_keys, image_values):
    """``attention(q=tokens, k=image_keys, v=image_values)`` for few tokens and many image
    positions. tokens: (K, T, D); image_*: (1 or K, N, D)."""
    k, t, _ = tokens.shape
    heads = attention.num_heads
    per_head = attention.internal_dim // heads
    dim = attention.k_proj.weight.shape[1]
    q = attention.q_proj(tokens).reshape(k, t, heads, per_head).permute(0, 2, 1, 3)  # K, h, T, c
    w_k = attention.k_proj.weight.reshape(heads, per_head, dim)
    query_in_image = (q @ w_k).reshape(k, heads * t, dim) / math.sqrt(per_head)  # K, hT, D
    weights = torch.softmax(query_in_image @ image_keys.transpose(1, 2), dim=-1)  # K, hT, N
    pooled = (weights @ image_values).reshape(k, heads, t, dim)  # K, h, T, D
    w_v = attention.v_proj.weight.reshape(heads, per_head, dim).transpose(1, 2)  # h, D, c
    values = pooled @ w_v + attention.v_proj.bias.reshape(heads, 1, per_head)  # K, h, T, c
    return attention.out_proj(values.permute(0, 2, 1, 3).reshape(k, t, heads * per_head))


def image_to_tokens(attention, image_queries, tokens_keys, tokens_values):
    """``attention(q=image_queries, k=tokens_keys, v=tokens_values)`` for many image positions
    and few tokens. image_queries: (1 or K, N, D); tokens_*: (K, T, D). Returns (K, N, D)."""
    k, t, _ = tokens_keys.shape
    heads = attention.num_heads
    per_head = attention.internal_dim // heads
    dim = attention.q_proj.weight.shape[1]
    scale = 1 / math.sqrt(per_head)
    keys = attention.k_proj(tokens_keys).reshape(k, t, heads, per_head).permute(0, 2, 1, 3)  # K, h, T, c
    w_q = attention.q_proj.weight.reshape(heads, per_head, dim)
    key_in_image = (keys @ w_q).reshape(k, heads * t, dim) * scale  # K, hT, D
    key_bias = (keys @ attention.q_proj.bias.reshape(heads, per_head, 1)).reshape(k, 1, heads * t) * scale
    logits = image_queries @ key_in_image.transpose(1, 2) + key_bias  # K, N, hT
    n = logits.shape[1]
    weights = torch.softmax(logits.reshape(k, n, heads, t), dim=-1).reshape(k, n, heads * t)
    values = attention.v_proj(tokens_values).reshape(k, t, heads, per_head).permute(0, 2, 1, 3)  # K, h, T, c
    w_o = attention.out_proj.weight.reshape(dim, heads, per_head).permute(1, 2, 0)  # h, c, D
    # Each head's weights sum to 1 over its tokens: the output bias, split over the heads, rides
    # along in the small factor instead of a pass over the (K, N, D) result.
    projected = (values @ w_o).reshape(k, heads * t, dim) + attention.out_proj.bias / heads  # K, hT, D
    return weights @ projected


def two_way_block(layer, queries, keys, query_pe, key_pe):
    """segment-anything's ``TwoWayAttentionBlock.forward`` with the folded cross-attentions."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    keys_pe = keys + key_pe
    queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(keys + image_to_tokens(layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries))
    return queries, keys


def upscale_channels_last(upscaling, keys, side):
    """``output_upscaling`` (ConvTranspose 2x2/2, LayerNorm2d, GELU, ConvTranspose 2x2/2,
    GELU) on (K, side*side, D) tokens; returns (K, pixels, C) with pixels in the order
    (y, x, a, b, a2, b2) of output row 4y + 2a + a2, column 4x + 2b + b2."""
    first, norm, act1, second, act2 = upscaling
    k = keys.shape[0]
    # ConvTranspose weight (in, out, 2, 2) -> (in, [a, b, out]).
    w1 = first.weight.permute(0, 2, 3, 1).reshape(first.in_channels, 4 * first.out_channels)
    # 2-D products so that the bias is added inside the GEMM (ONNX Runtime fuses MatMul + Add).
    x = keys.reshape(-1, first.in_channels) @ w1 + first.bias.repeat(4)
    x = x.reshape(k, side * side * 4, first.out_channels)
    x = act1(nn.functional.layer_norm(x, (first.out_channels,), norm.weight, norm.bias, norm.eps))
    w2 = second.weight.permute(0, 2, 3, 1).reshape(second.in_channels, 4 * second.out_channels)
    x = x.reshape(-1, second.in_channels) @ w2 + second.bias.repeat(4)
    x = x.reshape(k, side * side * 16, second.out_channels)
    return act2(x)


class AmgPromptDecoder(nn.Module):
    """Point prompts (no mask input) -> the decoder's 4 low-resolution masks and IoU
    predictions, as ``PromptDecoder`` with has_mask_input 0."""

    def __init__(self, prompt_decoder):
        super().__init__()
        self.prompt_decoder = prompt_decoder
        self.prompt_encoder = prompt_decoder.prompt_encoder
        self.mask_decoder = prompt_decoder.mask_decoder

    def forward(self, image_embeddings, point_coords, point_labels):
        decoder, transformer = self.mask_decoder, self.mask_decoder.transformer
        sparse = self.prompt_decoder._embed_points(point_coords, point_labels)
        k = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(k, -1, -1), sparse), dim=1)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = image_embeddings + dense  # one copy for the whole batch
        _, dim, height, width = src.shape
        keys = src.flatten(2).permute(0, 2, 1)  # 1, N, D
        key_pe = self.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in transformer.layers:
            queries, keys = two_way_block(layer, queries, keys, tokens, key_pe)
        attention = transformer.final_attn_token_to_image
        queries = transformer.norm_final_attn(
            queries + tokens_to_image(attention, queries + tokens, keys + key_pe, keys)
        )
        iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
        mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )  # K, M, C
        upscaled = upscale_channels_last(decoder.output_upscaling, keys, height)  # K, P, C
        masks = hyper_in @ upscaled.transpose(1, 2)  # K, M, P
        m = masks.shape[1]
        masks = masks.reshape(k, m, height, width, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return masks.reshape(k, m, 4 * height, 4 * width), iou_pred
