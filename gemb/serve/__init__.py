"""Serving: the standalone embedder of an exported bundle, and its HTTP service.

`gemb.serve.load(path)` needs jax and numpy (and Pillow for images), never flax or the training
code: see gemb/serve/bundle.py. The HTTP service is gemb/serve/service.py.
"""
from gemb.serve.bundle import Embedder, load  # noqa: F401
