"""The HTTP JSON embedding service (stdlib http.server, one thread per connection).

  POST /embed          {"inputs": [[part, ...], ...], "mrl_dim": 256?, "task": "..."?,
                        "truncate": false?}
                       -> 200 {"embeddings": [[float, ...], ...], "dim": d, "count": n}
  POST /v1/embeddings  the OpenAI embeddings API, for text: {"input": str | [str] | [int] |
                        [[int]], "model": name, "dimensions": 256?, "encoding_format": "float"
                        | "base64"?, "user": str?, "task": str?, "truncate": false?}
                       -> 200 {"object": "list", "data": [{"object": "embedding", "index": i,
                        "embedding": [float, ...] | base64 of little-endian float32}],
                        "model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}
  GET  /health         -> 200 {"status": "ok", model_name, embed_dim, mrl_dims, modalities,
                        limits, stats}

Parts are {"text": str} or {"image" | "audio" | "video": array}, an array being a nested list,
{"b64": ..., "dtype": ..., "shape": [...]} or {"file_b64": ..., "format": "png"} (see
gemb/serve/preprocess.py); file paths are refused. Token arrays on /v1/embeddings are ids of the
bundle's own tokenizer, not of OpenAI's. "task" and "truncate" on /v1/embeddings are gemb's
extensions, as on /embed. A request that is malformed or over a limit of the bundle gets a 4xx
{"error": message, "field": where}, on /v1/ routes OpenAI's {"error": {"message", "type",
"param", "code"}}; the service keeps serving. With an API key every route needs the header
"Authorization: Bearer <key>" (401 otherwise).
Request threads parse and featurise; a Batcher (gemb/serve/batching.py) runs the model on the
requests that arrive together.
"""
from __future__ import annotations

import base64
import contextlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import socket
import threading
from typing import Any

import numpy as np
from absl import logging

from gemb.serve import batching, preprocess
from gemb.serve.bundle import Embedder, l2_normalize

REQUEST_FIELDS = ("inputs", "mrl_dim", "task", "truncate")
OPENAI_FIELDS = ("input", "model", "dimensions", "encoding_format", "user", "task", "truncate")
ENCODING_FORMATS = ("float", "base64")
HTTP_FIELDS = ("body", "path", "method", "Content-Length", "Authorization")  # not request params


class HttpError(Exception):
  """An answer other than 200: `field` names what is wrong; `code` is OpenAI's error code."""

  def __init__(self, status: int, field: str, message: str, code: str | None = None):
    super().__init__(f"{field}: {message}")
    self.status, self.field, self.message, self.code = status, field, message, code


class EmbeddingServer(http.server.ThreadingHTTPServer):
  """A ThreadingHTTPServer that holds the embedder and its batcher."""

  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128  # listen backlog: bursts of new connections are not dropped

  def __init__(self, address, embedder: Embedder, batcher: batching.Batcher,
               request_timeout_s: float, api_key: str | None, model_name: str):
    super().__init__(address, Handler)
    self.embedder, self.batcher, self.request_timeout_s = embedder, batcher, request_timeout_s
    self.api_key = None if api_key is None else api_key.encode("utf-8")
    self.model_name = model_name

  def server_close(self):
    super().server_close()
    self.batcher.close()


def parse_json(body: bytes) -> Any:
  """The decoded body; HttpError(400, "body") if it is not JSON or nests too deeply."""
  try:
    return json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise HttpError(400, "body", f"malformed JSON: {e}") from e
  except RecursionError as e:  # json's decoder stops at the interpreter's recursion limit
    raise HttpError(400, "body", "JSON nested too deeply; a request nests at most 8 levels (a "
                                 "video part sent as nested lists)") from e


def _check_extensions(request: dict) -> tuple[str | None, bool]:
  """gemb's optional "task" and "truncate" fields -> (task, truncate)."""
  task, truncate = request.get("task"), request.get("truncate", False)
  if task is not None and not isinstance(task, str):
    raise HttpError(400, "task", f"must be a string, got {type(task).__name__}")
  if not isinstance(truncate, bool):
    raise HttpError(400, "truncate", f"must be true or false, got {truncate!r}")
  return task, truncate


def parse_request(body: bytes, embedder: Embedder) -> tuple[list, int | None, str | None, bool]:
  """The JSON body -> (inputs, mrl_dim, task, truncate); HttpError(400) naming the field."""
  request = parse_json(body)
  if not isinstance(request, dict):
    raise HttpError(400, "body", f"must be a JSON object with 'inputs', got "
                                 f"{type(request).__name__}")
  unknown = sorted(set(request) - set(REQUEST_FIELDS))
  if unknown:
    raise HttpError(400, unknown[0], f"unknown field; a request has {list(REQUEST_FIELDS)}")
  if "inputs" not in request:
    raise HttpError(400, "inputs", "missing: a request needs 'inputs', a list of inputs, each "
                                   "a list of parts, e.g. [[{\"text\": \"a red circle\"}]]")
  task, truncate = _check_extensions(request)
  mrl_dim = request.get("mrl_dim")
  try:
    embedder.check_mrl_dim(mrl_dim)
    preprocess.check_inputs_per_request(request["inputs"], embedder.limits)
  except preprocess.InputError as e:
    raise HttpError(400, e.field, e.message) from e
  return request["inputs"], mrl_dim, task, truncate


def _openai_inputs(value: Any) -> list:
  """OpenAI's "input" -> a list of inputs, each a string or a token array (a list of ints)."""
  if isinstance(value, str):
    return [value]
  if isinstance(value, list) and value:
    kinds = {type(x) for x in value}
    if kinds == {str} or kinds == {list}:
      return value
    if kinds == {int}:
      return [value]
  raise HttpError(400, "input", "must be a string, a non-empty list of strings, or token ids of "
                                "this model's tokenizer (a list of ints, or a list of such lists)")


def parse_openai_request(body: bytes, embedder: Embedder, model_name: str
                         ) -> tuple[list, int | None, str, str | None, bool]:
  """A /v1/embeddings body -> (inputs, dimensions, encoding_format, task, truncate), an input
  being a string or a token array; HttpError naming the param (404 for another model)."""
  request = parse_json(body)
  if not isinstance(request, dict):
    raise HttpError(400, "body", f"must be a JSON object with 'input' and 'model', got "
                                 f"{type(request).__name__}")
  unknown = sorted(set(request) - set(OPENAI_FIELDS))
  if unknown:
    raise HttpError(400, unknown[0], f"unknown parameter; a request has {list(OPENAI_FIELDS)}")
  for name in ("input", "model"):
    if name not in request:
      raise HttpError(400, name, f"missing: a request needs 'input' (a string or a list of "
                                 f"strings) and 'model' ({model_name!r})")
  if not isinstance(request["model"], str):
    raise HttpError(400, "model", f"must be a string, got {type(request['model']).__name__}")
  if request["model"] != model_name:
    raise HttpError(404, "model", f"the model {request['model']!r} does not exist; this service "
                                  f"serves {model_name!r}", code="model_not_found")
  encoding_format = request.get("encoding_format", "float")
  if not isinstance(encoding_format, str) or encoding_format not in ENCODING_FORMATS:
    raise HttpError(400, "encoding_format", f"{encoding_format!r} is not one of "
                                            f"{list(ENCODING_FORMATS)}")
  if not isinstance(request.get("user", ""), str):
    raise HttpError(400, "user", f"must be a string, got {type(request['user']).__name__}")
  task, truncate = _check_extensions(request)
  dimensions = request.get("dimensions")
  inputs = _openai_inputs(request["input"])
  try:
    embedder.check_mrl_dim(dimensions)
    preprocess.check_inputs_per_request(inputs, embedder.limits)
  except preprocess.InputError as e:
    raise HttpError(400, "dimensions" if e.field == "mrl_dim" else "input", e.message) from e
  if task is not None and not isinstance(inputs[0], str):
    raise HttpError(400, "task", "the task string is prefixed to text, so it needs strings, not "
                                 "token arrays")
  return inputs, dimensions, encoding_format, task, truncate


def featurise_openai_inputs(inputs: list, embedder: Embedder, task: str | None, truncate: bool
                            ) -> list[list[dict[str, np.ndarray]]]:
  """Strings or token arrays -> featurised inputs of one text part each; HttpError(400) naming
  the input (e.g. "input[2]")."""
  try:
    if isinstance(inputs[0], str):
      return embedder.featurise([[{"text": text}] for text in inputs], task_string=task,
                                truncate=truncate, from_json=True, allow_files=False)
    featurised = []
    for b, ids in enumerate(inputs):
      embedder.function_for({"text": 1}, f"input[{b}]")
      featurised.append([preprocess.featurise_token_ids(
          ids, embedder.feature_config(truncate), embedder.limits, f"input[{b}]")])
    return featurised
  except preprocess.InputError as e:
    index = re.match(r"inputs?(\[\d+\])", e.field)
    raise HttpError(400, f"input{index[1]}" if index else "input", e.message) from e


def openai_response(embeddings: np.ndarray, encoding_format: str, model_name: str,
                    prompt_tokens: int) -> dict[str, Any]:
  """Rows [N, dim] -> OpenAI's embeddings reply; base64 holds each row's little-endian float32."""
  rows = np.asarray(embeddings, "<f4")
  data = [{"object": "embedding", "index": i,
           "embedding": (base64.b64encode(row.tobytes()).decode("ascii")
                         if encoding_format == "base64" else row.tolist())}
          for i, row in enumerate(rows)]
  return {"object": "list", "data": data, "model": model_name,
          "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
  disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall
  server: EmbeddingServer

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
    logging.debug("%s %s", self.address_string(), format % args)

  def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _error(self, error: HttpError) -> None:
    if self.path.startswith("/v1/"):  # OpenAI's shape, which its clients parse
      payload = {"error": {
          "message": str(error), "param": None if error.field in HTTP_FIELDS else error.field,
          "type": "server_error" if error.status >= 500 else "invalid_request_error",
          "code": error.code}}
    else:
      payload = {"error": error.message, "field": error.field}
    self._send(error.status, payload, {"WWW-Authenticate": "Bearer"} if error.status == 401
               else None)

  def _authorize(self) -> None:
    """HttpError(401) unless the server has no API key or the request bears it."""
    key = self.server.api_key
    if key is None:
      return
    scheme, _, token = self.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
      raise HttpError(401, "Authorization", "missing API key: send the header 'Authorization: "
                                            "Bearer <key>'", code="invalid_api_key")
    # Header values arrive decoded as latin-1: encoding back gives the bytes the client sent.
    if not hmac.compare_digest(token.strip().encode("latin-1"), key):
      raise HttpError(401, "Authorization", "incorrect API key", code="invalid_api_key")

  def do_GET(self):  # noqa: N802 (the stdlib's name)
    try:
      self._authorize()
      if self.path.split("?")[0] != "/health":
        raise HttpError(404, "path", f"no such endpoint {self.path!r}; use GET /health, POST "
                                     "/embed or POST /v1/embeddings")
      self._send(200, {"status": "ok", "model_name": self.server.model_name,
                       **self.server.embedder.describe(),
                       "stats": self.server.batcher.snapshot()})
    except HttpError as e:
      self._error(e)

  def _method_not_allowed(self):
    self._error(HttpError(405, "method", f"{self.command} is not supported; use GET /health, "
                                         "POST /embed or POST /v1/embeddings"))

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

  def _embed(self, featurised: list, mrl_dim: int | None) -> np.ndarray:
    """Featurised inputs -> float32 [N, dim] unit rows, run by the batcher; an MRL dim is the
    re-normalised prefix."""
    embeddings = self.server.batcher.submit(featurised).result(self.server.request_timeout_s)
    dim = self.server.embedder.check_mrl_dim(mrl_dim)
    return embeddings if dim == embeddings.shape[1] else l2_normalize(embeddings[:, :dim])

  def _post_embed(self, body: bytes) -> dict[str, Any]:
    inputs, mrl_dim, task, truncate = parse_request(body, self.server.embedder)
    try:
      featurised = self.server.embedder.featurise(inputs, task_string=task, truncate=truncate,
                                                  from_json=True, allow_files=False)
    except preprocess.InputError as e:
      raise HttpError(400, e.field, e.message) from e
    embeddings = self._embed(featurised, mrl_dim)
    return {"embeddings": np.asarray(embeddings, np.float32).tolist(),
            "dim": embeddings.shape[1], "count": len(embeddings)}

  def _post_openai_embeddings(self, body: bytes) -> dict[str, Any]:
    inputs, dimensions, encoding_format, task, truncate = parse_openai_request(
        body, self.server.embedder, self.server.model_name)
    featurised = featurise_openai_inputs(inputs, self.server.embedder, task, truncate)
    prompt_tokens = sum(part["text"].size for parts in featurised for part in parts)
    return openai_response(self._embed(featurised, dimensions), encoding_format,
                           self.server.model_name, prompt_tokens)

  def do_POST(self):  # noqa: N802
    routes = {"/embed": self._post_embed, "/v1/embeddings": self._post_openai_embeddings}
    try:
      try:
        self._authorize()
      except HttpError:
        with contextlib.suppress(HttpError):
          self._read_body()  # read (or drain) it, so that the client gets the 401
        raise
      body = self._read_body()
      route = routes.get(self.path.split("?")[0])
      if route is None:
        raise HttpError(404, "path", f"no such endpoint {self.path!r}; use POST /embed or POST "
                                     "/v1/embeddings")
      self._send(200, route(body))
    except HttpError as e:
      self._error(e)
    except Exception as e:  # pylint: disable=broad-except  (report it, keep serving)
      logging.exception("POST %s failed", self.path)
      self._error(HttpError(500, "server", f"internal error: {type(e).__name__}: {e}"))


def read_api_key(path: str) -> str:
  """The API key in the file at `path` (its stripped contents); ValueError if it is empty or
  not printable ASCII (it travels in an HTTP header)."""
  with open(path) as f:
    key = f.read().strip()
  if not key:
    raise ValueError(f"--api_key_file={path} is empty; write the key into it (e.g. `python -c "
                     "'import secrets; print(secrets.token_urlsafe(32))' > FILE`)")
  if not (key.isascii() and key.isprintable()):
    raise ValueError(f"--api_key_file={path}: the key must be printable ASCII (clients send it "
                     "in an HTTP header)")
  return key


def is_loopback(host: str) -> bool:
  """Whether every address `host` resolves to is a loopback one (127.0.0.0/8, ::1)."""
  try:
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
  except (socket.gaierror, UnicodeError):
    return False
  return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                                 for a in addresses)


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
  """ValueError if binding `host` serves beyond this machine without an API key, unless
  `allow_unauthenticated` (a proxy or network in front of the service authenticates)."""
  if api_key is not None or is_loopback(host):
    return
  if not allow_unauthenticated:
    raise ValueError(f"--host={host} serves beyond this machine, so anyone who reaches it can "
                     "use the model: give --api_key_file=FILE (clients then send "
                     "'Authorization: Bearer <key>'), or --allow_unauthenticated if a proxy or "
                     "network in front of the service authenticates")
  logging.warning("serving on %s without an API key (--allow_unauthenticated)", host)


def make_server(embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *,
                max_batch: int | None = None, batch_timeout_ms: float | None = None,
                request_timeout_s: float = 120.0, api_key: str | None = None,
                model_name: str | None = None) -> EmbeddingServer:
  """A server bound to host:port (port 0: any free port, see `server.server_address`).

  Batching defaults come from the bundle manifest's "serving" settings. With `api_key` every
  request needs "Authorization: Bearer <api_key>". `model_name` is the name /v1/embeddings
  answers to (default: the bundle folder's name).
  """
  serving = embedder.manifest["serving"]
  max_batch = int(max_batch or serving["max_batch"])
  timeout_ms = float(serving["batch_timeout_ms"] if batch_timeout_ms is None
                     else batch_timeout_ms)
  batcher = batching.Batcher(embedder.embed_featurised, max_batch, timeout_ms / 1000.0)
  return EmbeddingServer((host, port), embedder, batcher, request_timeout_s, api_key,
                         model_name or os.path.basename(embedder.path))


def serve_in_thread(server: EmbeddingServer) -> threading.Thread:
  """Starts `server.serve_forever()` in a daemon thread (stop with server.shutdown())."""
  thread = threading.Thread(target=server.serve_forever, name="gemb-http", daemon=True)
  thread.start()
  return thread
