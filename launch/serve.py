"""The embedding service: `python -m launch.serve --bundle=DIR [--port=8080]`.

Serves a bundle written by `python -m launch.main --mode=export` over HTTP JSON (see
gemb/serve/service.py and docs/serving.md): POST /embed, POST /v1/embeddings (OpenAI's API),
GET /health. Binds 127.0.0.1 unless --host says otherwise; beyond loopback it needs
--api_key_file (or --allow_unauthenticated when something in front of it authenticates).

  curl -s localhost:8080/embed -d '{"inputs": [[{"text": "a red circle"}]], "mrl_dim": 32}'
  curl -s localhost:8080/v1/embeddings -d '{"input": "a red circle", "model": "bundle"}'
"""
from __future__ import annotations

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("bundle", None, "Serving bundle folder (from --mode=export).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the service to the "
                    "network, which needs --api_key_file or --allow_unauthenticated.")
flags.DEFINE_integer("port", 8080, "Port to bind (0: any free port).")
flags.DEFINE_string("api_key_file", None, "File holding the API key (its stripped contents): "
                    "every request then needs 'Authorization: Bearer <key>'.")
flags.DEFINE_bool("allow_unauthenticated", False, "Bind beyond loopback without an API key "
                  "(only when a proxy or network in front of the service authenticates).")
flags.DEFINE_string("model_name", None, "The model name /v1/embeddings answers to (default: the "
                    "bundle folder's name).")
flags.DEFINE_integer("max_batch", 0, "Inputs per model call (0: the bundle's serving.max_batch).")
flags.DEFINE_float("batch_timeout_ms", -1.0, "How long a batch waits for more requests "
                   "(-1: the bundle's serving.batch_timeout_ms).")
flags.DEFINE_bool("warmup", True, "Compile the text function for every batch size before "
                  "serving, so early requests do not wait on compilation.")
flags.DEFINE_string("compilation_cache_dir", "", "Persistent XLA compilation cache: restarts "
                    "reuse compiled programs.")
flags.mark_flags_as_required(["bundle"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
  from gemb.serve import bundle, service  # pylint: disable=g-import-not-at-top
  try:
    api_key = service.read_api_key(FLAGS.api_key_file) if FLAGS.api_key_file else None
    service.check_exposure(FLAGS.host, api_key, FLAGS.allow_unauthenticated)
  except (OSError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  embedder = bundle.load(FLAGS.bundle, max_batch=FLAGS.max_batch or None)
  if FLAGS.warmup and "text" in embedder.modalities:
    logging.info("compiling for batch sizes up to %d", embedder.max_batch)
    embedder.warmup()
  server = service.make_server(
      embedder, FLAGS.host, FLAGS.port, max_batch=FLAGS.max_batch or None,
      batch_timeout_ms=None if FLAGS.batch_timeout_ms < 0 else FLAGS.batch_timeout_ms,
      api_key=api_key, model_name=FLAGS.model_name)
  host, port = server.server_address[:2]
  print(f"serving {FLAGS.bundle} as model {server.model_name!r} on http://{host}:{port} (POST "
        f"/embed, POST /v1/embeddings, GET /health{'; API key required' if api_key else ''}); "
        f"embed_dim={embedder.embed_dim}, mrl_dims={embedder.mrl_dims}, "
        f"modalities={embedder.modalities}", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main)
