"""Shared by the service tests: a tiny serving bundle of a random encoder, and a JSON request."""
import http.client
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import common
from gemb.export import bundle as export_bundle
from gemb.model.encoder import Encoder

SETTINGS = {"modality_sets": [["text"], ["text", "image", "audio", "video"]], "platforms": ["cpu"],
            "max_batch": 4, "batch_timeout_ms": 50.0, "max_inputs_per_request": 8,
            "max_request_bytes": 256 * 1024, "max_image_pixels": 48 * 48}


def random_encoder(model_cfg, seed):
  """An Encoder with numpy-random params (fast: no compiled initialisers needed)."""
  graphdef, params, rest = nnx.split(
      nnx.eval_shape(lambda: Encoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), params)
  rest = jax.tree.map(lambda x: jax.random.key(0) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else jnp.zeros(x.shape, x.dtype), rest)
  return nnx.merge(graphdef, params, rest)


def tiny_bundle(path: str) -> str:
  """Exports the tiny model (64-d, MRL dims 16/32/64, 64 text tokens) with SETTINGS to `path`."""
  model_cfg = common.model("tiny")
  model_cfg.max_seq_len = 256  # so that an input of 5 text parts (5 x 64 tokens) is too long
  _, params, _ = nnx.split(random_encoder(model_cfg, seed=0), nnx.Param, ...)
  export_bundle.export_params(model_cfg, params, path, SETTINGS)
  return path


def request(server, method, path, body=None, headers=None):
  """(status, decoded JSON reply) of one request to a local server."""
  host, port = server.server_address[:2]
  connection = http.client.HTTPConnection(host, port, timeout=120)
  try:
    if body is not None and not isinstance(body, bytes):
      body = json.dumps(body).encode()
    connection.request(method, path, body, {"Content-Type": "application/json",
                                            **(headers or {})})
    response = connection.getresponse()
    return response.status, json.loads(response.read())
  finally:
    connection.close()
