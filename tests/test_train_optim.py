"""The stage optimizer's backbone schedule: a pretrained backbone frozen or slowed while new
modality stems learn (gemb/train/optim.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from gemb.train import config_check, optim

PARAMS = {"encoder": {"blocks": {"0": {"kernel": jnp.ones((3, 4))}},
                      "final_norm": {"scale": jnp.ones((4,))},
                      "stems": {"text": {"positions": jnp.ones((5, 4))},
                                "image": {"patch_embed": jnp.ones((6, 4))}},
                      "projection": {"kernel": jnp.ones((4, 2))},
                      "dense": {"layers": {"0": {"kernel": jnp.ones((4, 3))}}}},
          "log_temperature": jnp.zeros(())}
BACKBONE = {("encoder", "blocks", "0", "kernel"), ("encoder", "final_norm", "scale"),
            ("encoder", "stems", "text", "positions"),
            ("encoder", "dense", "layers", "0", "kernel")}


def _run(optim_cfg, steps):
  """Parameter trees after each of `steps` updates with the same non-zero gradient."""
  tx, _ = optim.make_optimizer(optim_cfg, total_steps=10)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
  params, state, history = PARAMS, tx.init(PARAMS), []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    history.append(params)
  return history


def _moved(before, after):
  paths = jax.tree_util.tree_flatten_with_path(before)[0]
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after))
  return {tuple(k.key for k in path) for (path, _), m in zip(paths, moved) if m}


def test_is_backbone_names_the_text_stem_blocks_and_final_norm():
  flat = jax.tree_util.tree_flatten_with_path(PARAMS)[0]
  assert {tuple(k.key for k in p) for p, _ in flat if optim.is_backbone(p)} == BACKBONE


def test_a_frozen_backbone_waits_its_steps_while_the_rest_learns():
  cfg = common.optim(lr=0.1, warmup_steps=0, schedule="constant", backbone_lr_multiplier=0.0,
                     backbone_multiplier_steps=2)
  history = _run(cfg, 3)
  everything = {tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(PARAMS)[0]}
  assert _moved(PARAMS, history[0]) == everything - BACKBONE  # step 1: frozen
  assert _moved(history[0], history[1]) == everything - BACKBONE  # step 2: frozen
  assert _moved(history[1], history[2]) == everything  # step 3: the backbone trains too


def test_a_backbone_multiplier_scales_its_first_update():
  # Adam's first update is lr * sign(g) (up to eps): the multiplier shows directly.
  cfg = common.optim(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.0,
                     clip_norm=0.0, backbone_lr_multiplier=0.25)
  (after,) = _run(cfg, 1)
  block = after["encoder"]["blocks"]["0"]["kernel"] - PARAMS["encoder"]["blocks"]["0"]["kernel"]
  image = (after["encoder"]["stems"]["image"]["patch_embed"]
           - PARAMS["encoder"]["stems"]["image"]["patch_embed"])
  np.testing.assert_allclose(block, -0.025, rtol=1e-5)
  np.testing.assert_allclose(image, -0.1, rtol=1e-5)


def test_the_default_optimizer_has_no_backbone_split():
  tx, _ = optim.make_optimizer(common.optim(), total_steps=10)
  default_state = jax.tree.structure(tx.init(PARAMS))
  tx2, _ = optim.make_optimizer(common.optim(backbone_lr_multiplier=0.5), total_steps=10)
  assert jax.tree.structure(tx2.init(PARAMS)) != default_state




def test_a_negative_backbone_multiplier_is_a_config_error_naming_the_key():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from gemb.datasets import toyworld  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.optim.backbone_lr_multiplier = -1.0
  with pytest.raises(config_check.ConfigError, match=r"config.optim.backbone_lr_multiplier=-1.0"):
    config_check.check(config, 8, 1, known_tasks=list(toyworld.TASKS))
