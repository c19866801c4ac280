"""Layers: convolution, pooling, recurrence and attention, as pure-function Flax Linen modules."""

from jaxarch.layers.attention import (MultiHeadAttention, causal_mask, combine_masks, dot_product_attention,
                                      padding_mask, sliding_window_mask)
from jaxarch.layers.conv import Conv, ConvTranspose
from jaxarch.layers.pooling import (adaptive_avg_pool, adaptive_max_pool, avg_pool, global_avg_pool,
                                    global_max_pool, max_pool, min_pool)
from jaxarch.layers.position import (LearnedPositionEmbedding, RelativePositionBias, RoPEConfig, alibi_bias,
                                     alibi_slopes, apply_rope, sinusoidal_positions)
from jaxarch.layers.recurrent import CELLS, RNN, Bidirectional, GRUCell, LSTMCell, SimpleRNNCell, StackedRNN
from jaxarch.layers.transformer import DecoderBlock, EncoderBlock, MLPBlock, TransformerDecoder, TransformerEncoder

__all__ = [
    "Conv", "ConvTranspose",
    "adaptive_avg_pool", "adaptive_max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "max_pool",
    "min_pool",
    "MultiHeadAttention", "causal_mask", "combine_masks", "dot_product_attention", "padding_mask",
    "sliding_window_mask",
    "LearnedPositionEmbedding", "RelativePositionBias", "RoPEConfig", "alibi_bias", "alibi_slopes", "apply_rope",
    "sinusoidal_positions",
    "CELLS", "RNN", "Bidirectional", "GRUCell", "LSTMCell", "SimpleRNNCell", "StackedRNN",
    "DecoderBlock", "EncoderBlock", "MLPBlock", "TransformerDecoder", "TransformerEncoder",
]
