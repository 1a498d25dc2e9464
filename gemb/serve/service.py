"""The HTTP JSON embedding service (stdlib http.server, one thread per connection).

  POST /embed   {"inputs": [[part, ...], ...], "mrl_dim": 256?, "task": "..."?, "truncate": false?}
                -> 200 {"embeddings": [[float, ...], ...], "dim": d, "count": n}
  GET  /health  -> 200 {"status": "ok", embed_dim, mrl_dims, modalities, limits, stats}

Parts are {"text": str} or {"image" | "audio" | "video": array}, an array being a nested list,
{"b64": ..., "dtype": ..., "shape": [...]} or {"file_b64": ..., "format": "png"} (see
gemb/serve/preprocess.py); file paths are refused. A request that is malformed or over a limit
of the bundle gets a 4xx {"error": message, "field": where}; the service keeps serving.
Request threads parse and featurise; a Batcher (gemb/serve/batching.py) runs the model on the
requests that arrive together.
"""
from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import numpy as np
from absl import logging

from gemb.serve import batching, preprocess
from gemb.serve.bundle import Embedder, l2_normalize

REQUEST_FIELDS = ("inputs", "mrl_dim", "task", "truncate")


class HttpError(Exception):
  def __init__(self, status: int, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.status, self.field, self.message = status, field, message


class EmbeddingServer(http.server.ThreadingHTTPServer):
  """A ThreadingHTTPServer that holds the embedder and its batcher."""

  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128  # listen backlog: bursts of new connections are not dropped

  def __init__(self, address, embedder: Embedder, batcher: batching.Batcher,
               request_timeout_s: float):
    super().__init__(address, Handler)
    self.embedder, self.batcher, self.request_timeout_s = embedder, batcher, request_timeout_s

  def server_close(self):
    super().server_close()
    self.batcher.close()


def parse_request(body: bytes, embedder: Embedder) -> tuple[list, int | None, str | None, bool]:
  """The JSON body -> (inputs, mrl_dim, task, truncate); HttpError(400) naming the field."""
  try:
    request = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise HttpError(400, "body", f"malformed JSON: {e}") from e
  if not isinstance(request, dict):
    raise HttpError(400, "body", f"must be a JSON object with 'inputs', got "
                                 f"{type(request).__name__}")
  unknown = sorted(set(request) - set(REQUEST_FIELDS))
  if unknown:
    raise HttpError(400, unknown[0], f"unknown field; a request has {list(REQUEST_FIELDS)}")
  if "inputs" not in request:
    raise HttpError(400, "inputs", "missing: a request needs 'inputs', a list of inputs, each "
                                   "a list of parts, e.g. [[{\"text\": \"a red circle\"}]]")
  task, truncate = request.get("task"), request.get("truncate", False)
  if task is not None and not isinstance(task, str):
    raise HttpError(400, "task", f"must be a string, got {type(task).__name__}")
  if not isinstance(truncate, bool):
    raise HttpError(400, "truncate", f"must be true or false, got {truncate!r}")
  mrl_dim = request.get("mrl_dim")
  try:
    embedder.check_mrl_dim(mrl_dim)
    preprocess.check_inputs_per_request(request["inputs"], embedder.limits)
  except preprocess.InputError as e:
    raise HttpError(400, e.field, e.message) from e
  return request["inputs"], mrl_dim, task, truncate


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
  disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall
  server: EmbeddingServer

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
    logging.debug("%s %s", self.address_string(), format % args)

  def _send(self, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _error(self, error: HttpError) -> None:
    self._send(error.status, {"error": error.message, "field": error.field})

  def do_GET(self):  # noqa: N802 (the stdlib's name)
    if self.path.split("?")[0] != "/health":
      return self._error(HttpError(404, "path", f"no such endpoint {self.path!r}; use GET "
                                                "/health or POST /embed"))
    self._send(200, {"status": "ok", **self.server.embedder.describe(),
                     "stats": self.server.batcher.snapshot()})

  def _method_not_allowed(self):
    self._error(HttpError(405, "method", f"{self.command} is not supported; use GET /health "
                                         "or POST /embed"))

  do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815

  def _read_body(self) -> bytes:
    limit = self.server.embedder.limits.max_request_bytes
    length = self.headers.get("Content-Length")
    if length is None:
      self.close_connection = True
      raise HttpError(411, "Content-Length", "a POST needs a Content-Length header (chunked "
                                             "bodies are not accepted)")
    try:
      length = int(length)
    except ValueError as e:
      self.close_connection = True
      raise HttpError(400, "Content-Length", f"not an integer: {length!r}") from e
    if length > limit:
      # Drain a moderately larger body so the client can read the answer, then close.
      remaining = length if length <= 4 * limit else 0
      while remaining > 0:
        chunk = self.rfile.read(min(remaining, 1 << 16))
        if not chunk:
          break
        remaining -= len(chunk)
      self.close_connection = True
      raise HttpError(413, "body", f"{length} bytes > limit max_request_bytes={limit}")
    return self.rfile.read(length)

  def do_POST(self):  # noqa: N802
    try:
      body = self._read_body()
      if self.path.split("?")[0] != "/embed":
        raise HttpError(404, "path", f"no such endpoint {self.path!r}; use POST /embed")
      inputs, mrl_dim, task, truncate = parse_request(body, self.server.embedder)
      try:
        featurised = self.server.embedder.featurise(inputs, task_string=task, truncate=truncate,
                                                    from_json=True, allow_files=False)
      except preprocess.InputError as e:
        raise HttpError(400, e.field, e.message) from e
      embeddings = self.server.batcher.submit(featurised).result(self.server.request_timeout_s)
      dim = self.server.embedder.check_mrl_dim(mrl_dim)
      if dim != embeddings.shape[1]:
        embeddings = l2_normalize(embeddings[:, :dim])
      self._send(200, {"embeddings": np.asarray(embeddings, np.float32).tolist(), "dim": dim,
                       "count": len(embeddings)})
    except HttpError as e:
      self._error(e)
    except Exception as e:  # pylint: disable=broad-except  (report it, keep serving)
      logging.exception("POST %s failed", self.path)
      self._error(HttpError(500, "server", f"internal error: {type(e).__name__}: {e}"))


def make_server(embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *,
                max_batch: int | None = None, batch_timeout_ms: float | None = None,
                request_timeout_s: float = 120.0) -> EmbeddingServer:
  """A server bound to host:port (port 0: any free port, see `server.server_address`).

  Batching defaults come from the bundle manifest's "serving" settings.
  """
  serving = embedder.manifest["serving"]
  max_batch = int(max_batch or serving["max_batch"])
  timeout_ms = float(serving["batch_timeout_ms"] if batch_timeout_ms is None
                     else batch_timeout_ms)
  batcher = batching.Batcher(embedder.embed_featurised, max_batch, timeout_ms / 1000.0)
  return EmbeddingServer((host, port), embedder, batcher, request_timeout_s)


def serve_in_thread(server: EmbeddingServer) -> threading.Thread:
  """Starts `server.serve_forever()` in a daemon thread (stop with server.shutdown())."""
  thread = threading.Thread(target=server.serve_forever, name="gemb-http", daemon=True)
  thread.start()
  return thread
