"""The discoverability model: monotone in traffic, invertible, trainable, calibration metric."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import optimize

from gemb.proj.coldstart import discoverability


def _model_config(**overrides):
  values = dict(seed=0, hidden_dims=(16,), learning_rate=1e-2, weight_decay=0.0, batch_size=512,
                epochs=15)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def _rows(embeddings, traffic, labels, impressions=None, clicks=None):
  n = len(labels)
  impressions = np.zeros(n, np.int64) if impressions is None else impressions
  clicks = np.zeros(n, np.int64) if clicks is None else clicks
  return discoverability.TrainingRows(embeddings.astype(np.float32), impressions, clicks,
                                      traffic.astype(np.float32), labels.astype(np.float32),
                                      np.arange(n))


def test_model_stays_monotone_in_traffic_even_when_data_say_otherwise():
  # Labels that *fall* with traffic: an unconstrained slope would turn negative here.
  rng = np.random.default_rng(0)
  n = 8192
  embeddings = rng.standard_normal((n, 4))
  traffic = np.floor(np.exp(rng.uniform(0, np.log(400), n)))
  labels = rng.random(n) < np.where(traffic < 30, 0.8, 0.1)
  impressions = np.floor(traffic * rng.random(n)).astype(np.int64)
  clicks = rng.binomial(impressions, 0.1)
  model, _ = discoverability.train(_rows(embeddings, traffic, labels, impressions, clicks),
                                   _model_config())
  curves = discoverability.predict_curves(model, embeddings[:500], impressions[:500], clicks[:500])
  grid = np.broadcast_to(np.arange(0, 2000, 7, dtype=np.float64), (500, 286))
  p = discoverability.discoverability(curves, grid)  # [500, G]
  assert (np.diff(p, axis=1) >= 0).all()
  assert (curves.slope > 0).all()


def _numpy_curves(model, embeddings, engagement):
  """The model's forward pass re-done in numpy from its weights (tanh-approximate GELU, as jax's
  default)."""
  x = (np.concatenate([embeddings, engagement], 1)
       - np.asarray(model.feature_mean[...])) / np.asarray(model.feature_std[...])
  for layer in model.hidden:
    h = x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
    x = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  out = x @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
  return out[:, 0], np.log1p(np.exp(out[:, 1]))


def test_predicted_curves_match_a_numpy_forward_pass():
  rng = np.random.default_rng(1)
  model = discoverability.DiscoverabilityModel(6, (8, 8), rngs=nnx.Rngs(3))
  embeddings = rng.standard_normal((1000, 6)).astype(np.float32)
  impressions = rng.integers(0, 100, 1000)
  clicks = rng.binomial(impressions, 0.2)
  curves = discoverability.predict_curves(model, embeddings, impressions, clicks,
                                          batch_size=384)  # 2*384 + 232
  offset, slope = _numpy_curves(model, embeddings,
                                discoverability.engagement_features(impressions, clicks))
  np.testing.assert_allclose(curves.offset, offset, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(curves.slope, slope, rtol=1e-4, atol=1e-4)


def test_required_traffic_inverts_the_curve():
  curves = discoverability.Curves(offset=np.array([-6.0, -3.0, 0.5, -10.0]),
                                  slope=np.array([1.2, 0.4, 2.0, 3.0]))
  confidence = 0.7
  required = discoverability.required_traffic(curves, confidence)
  for i in range(4):
    p_i = lambda y: (1 / (1 + np.exp(-(curves.offset[i] + curves.slope[i] * np.log1p(y))))
                     - confidence)
    reference = 0.0 if p_i(0.0) >= 0 else optimize.brentq(p_i, 0.0, 1e9, xtol=1e-9, rtol=1e-12)
    assert required[i] == pytest.approx(reference, rel=1e-6, abs=1e-6)
  with pytest.raises(ValueError, match="confidence must lie in"):
    discoverability.required_traffic(curves, 1.0)


def test_training_recovers_a_known_logistic_curve():
  # Ground truth inside the model family: logit = 1.5 x0 - 3 + 0.8 log(1 + Y).
  rng = np.random.default_rng(2)
  n = 8192 + 4096
  embeddings = rng.standard_normal((n, 4))
  traffic = np.floor(np.exp(rng.uniform(0, np.log(500), n)))
  true_p = 1 / (1 + np.exp(-(1.5 * embeddings[:, 0] - 3 + 0.8 * np.log1p(traffic))))
  labels = rng.random(n) < true_p
  train, test = slice(0, 8192), slice(8192, n)  # 8192 rows as in the test above: one compiled epoch
  model, losses = discoverability.train(_rows(embeddings[train], traffic[train], labels[train]),
                                        _model_config())
  assert losses[-1] < losses[0]
  zeros = np.zeros(n - 8192, np.int64)
  curves = discoverability.predict_curves(model, embeddings[test], zeros, zeros)
  predicted = discoverability.discoverability(curves, traffic[test])
  assert np.abs(predicted - true_p[test]).mean() < 0.04
  assert np.median(curves.slope) == pytest.approx(0.8, abs=0.2)


def test_expected_calibration_error_by_hand():
  # 2 bins: [0.1, 0.2] -> mean p 0.15, frequency 0.5; [0.8, 0.9] -> mean p 0.85, frequency 1.
  # ECE = 2/4 * |0.5 - 0.15| + 2/4 * |1 - 0.85| = 0.175 + 0.075.
  ece = discoverability.expected_calibration_error(np.array([0.1, 0.2, 0.8, 0.9]),
                                                   np.array([0, 1, 1, 1]), 2)
  assert ece == pytest.approx(0.25)
  # Labels drawn from the probabilities themselves are calibrated: ECE ~ 0.
  rng = np.random.default_rng(0)
  p = rng.random(200_000)
  assert discoverability.expected_calibration_error(p, rng.random(200_000) < p, 10) < 0.01
  assert discoverability.expected_calibration_error(p, rng.random(200_000) < p**2, 10) > 0.1


def test_predict_curves_rejects_nan_embeddings():
  model = discoverability.DiscoverabilityModel(3, (4,), rngs=nnx.Rngs(0))
  embeddings = np.ones((5, 3), np.float32)
  embeddings[2, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    discoverability.predict_curves(model, embeddings, np.zeros(5), np.zeros(5))


def test_a_saved_model_loads_with_the_same_curves_and_refuses_another_shape(tmp_path):
  model = discoverability.DiscoverabilityModel(3, (8, 4), rngs=nnx.Rngs(5))
  model.feature_mean[...] = jnp.arange(6, dtype=jnp.float32) - 2.5  # not the init's zeros
  path = str(tmp_path / "model.npz")
  discoverability.save_model(model, path)
  loaded = discoverability.load_model(path, 3, (8, 4))
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((7, 3)).astype(np.float32)
  impressions = rng.integers(0, 50, 7)
  clicks = rng.binomial(impressions, 0.2)
  want = discoverability.predict_curves(model, embeddings, impressions, clicks)
  got = discoverability.predict_curves(loaded, embeddings, impressions, clicks)
  np.testing.assert_array_equal(got.offset, want.offset)
  np.testing.assert_array_equal(got.slope, want.slope)
  with pytest.raises(ValueError, match="feature_mean has shape"):
    discoverability.load_model(path, 4, (8, 4))
  with pytest.raises(ValueError, match="are not those of a model"):
    discoverability.load_model(path, 3, (8,))
