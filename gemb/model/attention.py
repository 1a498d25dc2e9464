"""Bidirectional multi-head self-attention over a padded sequence, shared by the gemb and BERT
blocks (gemb/model/encoder.py, gemb/model/bert.py); Gemma's (GQA, RoPE, q/k norms) is its own."""
from __future__ import annotations

import jax
from flax import nnx

from gemb.sharding import constrain, logical_axes

FAN_IN_QKV = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                               out_axis=(1, 2))
FAN_IN_OUT = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                               in_axis=(0, 1), out_axis=2)


class Attention(nnx.Module):
  """softmax(q k^T / sqrt(K)) v over the keys that are not padding, then the output projection.

  `key_bias`: a pretrained checkpoint may carry one; trained from scratch it is left out, since
  it adds the same q.b to every logit of a query's row, which the softmax ignores (its gradient
  is zero and an optimizer would only amplify rounding noise).
  """

  def __init__(self, cfg, dtype, *, key_bias: bool = False, qkv_init=FAN_IN_QKV,
               out_init=FAN_IN_OUT, rngs: nnx.Rngs):
    heads, head_dim = cfg.num_heads, cfg.width // cfg.num_heads
    self.implementation = None if cfg.attention_impl == "xla" else cfg.attention_impl

    def projection(bias: bool = True):  # [B, N, D] -> [B, N, H, K]
      return nnx.Einsum("bnd,dhk->bnhk", (cfg.width, heads, head_dim),
                        (heads, head_dim) if bias else None,
                        dtype=dtype, kernel_init=qkv_init, rngs=rngs,
                        kernel_metadata=logical_axes("embed", "heads", "kv"),
                        bias_metadata=logical_axes("heads", "kv"))
    self.query, self.key, self.value = projection(), projection(key_bias), projection()
    self.out = nnx.Einsum("bnhk,hkd->bnd", (heads, head_dim, cfg.width), (cfg.width,),
                          dtype=dtype, kernel_init=out_init, rngs=rngs,
                          kernel_metadata=logical_axes("heads", "kv", "embed"),
                          bias_metadata=logical_axes("embed"))

  def __call__(self, x, mask):
    # x [B, N, D], mask [B, N]
    head_spec = ("batch", "length", "heads", "kv")
    q = constrain(self.query(x), head_spec)  # [B, N, H, K]
    k = constrain(self.key(x), head_spec)
    v = constrain(self.value(x), head_spec)
    # f32 logits; padding keys get a large negative logit, so a row whose keys are all padding
    # is uniform, not NaN. `attention_impl` 'cudnn' runs cuDNN's fused kernel on NVIDIA GPUs
    # (bf16); 'xla' (the default) runs anywhere.
    attended = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :],
                                            implementation=self.implementation)
    return self.out(constrain(attended, head_spec))
