"""A bounded load test of the embedding service on loopback: p50/p99 latency and throughput.

  python -m launch.loadtest --bundle=DIR                       # starts a server in-process
  python -m launch.loadtest --url=http://127.0.0.1:8080        # or tests a running one

For each concurrency level (--concurrency=1,8,32) that many clients, each on its own
keep-alive connection, send POST /embed requests back to back (ToyWorld captions, or
image+question inputs with --payload=image_question) until --requests requests are done or
--max_seconds pass. Only loopback addresses are accepted.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import threading
import time
import urllib.parse

import numpy as np
from absl import app, flags

from gemb.datasets import toyworld
from gemb.serve import service

FLAGS = flags.FLAGS
flags.DEFINE_string("bundle", None, "Bundle to serve in-process on 127.0.0.1 (or use --url).")
flags.DEFINE_string("url", None, "A running service on a loopback address.")
flags.DEFINE_string("api_key_file", None, "With --url: the service's API key file "
                    "(launch.serve --api_key_file), sent as 'Authorization: Bearer <key>'.")
flags.DEFINE_list("concurrency", ["1", "8", "32"], "Concurrent clients, one level each.")
flags.DEFINE_integer("requests", 200, "Requests per concurrency level.")
flags.DEFINE_float("max_seconds", 60.0, "Time limit per concurrency level.")
flags.DEFINE_integer("inputs_per_request", 1, "Inputs in each request.")
flags.DEFINE_enum("payload", "text", ["text", "image_question"], "What each input is.")
flags.DEFINE_enum("array_encoding", "b64", ["b64", "list"], "How image arrays travel: "
                  "{b64, dtype, shape} or nested JSON lists (slower to parse).")
flags.DEFINE_integer("mrl_dim", 0, "MRL dim to ask for (0: full width).")
flags.DEFINE_bool("truncate", True, "Ask the service to cut inputs longer than its limits "
                  "(ToyWorld captions can exceed a tiny model's max_text_tokens).")
flags.DEFINE_float("batch_timeout_ms", -1.0, "With --bundle: the batcher's wait (-1: the "
                   "bundle's setting).")


def loopback_address(url: str) -> tuple[str, int]:
  """(host, port) of `url`; ValueError unless every address it resolves to is loopback."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme != "http" or not parts.hostname or not parts.port:
    raise ValueError(f"--url={url!r}: expected http://127.0.0.1:PORT")
  addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port)}
  if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
    raise ValueError(f"--url={url!r} resolves to {sorted(addresses)}; the load test only "
                     "targets loopback addresses (127.0.0.0/8, ::1)")
  return parts.hostname, parts.port


def encode_array(array: np.ndarray, encoding: str):
  if encoding == "list":
    return array.tolist()
  return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
          "dtype": array.dtype.str, "shape": list(array.shape)}


def payloads(kind: str, count: int, inputs_per_request: int, mrl_dim: int, truncate: bool,
             encoding: str) -> list[bytes]:
  """`count` request bodies of ToyWorld eval inputs."""
  task = "text_to_image" if kind == "text" else "image_question_to_answer"
  bodies = []
  for r in range(count):
    inputs = []
    for i in range(inputs_per_request):
      query = toyworld.example(task, "eval", r * inputs_per_request + i)["query"]
      inputs.append([{m: (encode_array(v, encoding) if isinstance(v, np.ndarray) else v)
                      for m, v in part.items()} for part in query])
    request = {"inputs": inputs, "truncate": truncate, **({"mrl_dim": mrl_dim} if mrl_dim else {})}
    bodies.append(json.dumps(request).encode())
  return bodies


def run_level(host: str, port: int, clients: int, bodies: list[bytes], total: int,
              max_seconds: float) -> dict[str, float]:
  """`clients` threads send `total` requests (cycling through `bodies`) or stop at the limit."""
  latencies: list[float] = []
  errors: list[str] = []
  lock = threading.Lock()
  counter = iter(range(total))
  deadline = time.monotonic() + max_seconds

  def client():
    connection = http.client.HTTPConnection(host, port, timeout=max_seconds)
    try:
      while time.monotonic() < deadline:
        with lock:
          r = next(counter, None)
        if r is None:
          return
        start = time.perf_counter()
        connection.request("POST", "/embed", bodies[r % len(bodies)],
                           {"Content-Type": "application/json", **_auth()})
        response = connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        with lock:
          if response.status == 200:
            latencies.append(elapsed)
          else:
            errors.append(f"{response.status} {data[:200]!r}")
    except OSError as e:
      with lock:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
      connection.close()

  threads = [threading.Thread(target=client) for _ in range(clients)]
  start = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  ms = np.asarray(latencies) * 1000.0
  return {"clients": clients, "requests": len(latencies), "errors": len(errors),
          "first_error": errors[0] if errors else "",
          "p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
          "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
          "requests_per_s": len(latencies) / wall, "wall_s": wall}


def _auth() -> dict[str, str]:
  if not FLAGS.api_key_file:
    return {}
  return {"Authorization": f"Bearer {service.read_api_key(FLAGS.api_key_file)}"}


def health(host: str, port: int) -> dict:
  connection = http.client.HTTPConnection(host, port, timeout=30)
  try:
    connection.request("GET", "/health", headers=_auth())
    return json.loads(connection.getresponse().read())
  finally:
    connection.close()


def main(argv):
  del argv
  if bool(FLAGS.bundle) == bool(FLAGS.url):
    raise app.UsageError("give exactly one of --bundle or --url")
  server = None
  if FLAGS.bundle:
    from gemb.serve import bundle  # pylint: disable=g-import-not-at-top
    embedder = bundle.load(FLAGS.bundle)
    server = service.make_server(
        embedder, "127.0.0.1", 0,
        batch_timeout_ms=None if FLAGS.batch_timeout_ms < 0 else FLAGS.batch_timeout_ms)
    service.serve_in_thread(server)
    host, port = server.server_address[:2]
  else:
    host, port = loopback_address(FLAGS.url)
  try:
    bodies = payloads(FLAGS.payload, 64, FLAGS.inputs_per_request, FLAGS.mrl_dim,
                      FLAGS.truncate, FLAGS.array_encoding)
    if FLAGS.bundle:  # compile every batch size the levels will use before timing anything
      task = "text_to_image" if FLAGS.payload == "text" else "image_question_to_answer"
      embedder.warmup(toyworld.example(task, "eval", 0)["query"])
    info = health(host, port)
    print(f"service http://{host}:{port}: embed_dim={info['embed_dim']}, payload="
          f"{FLAGS.payload} x {FLAGS.inputs_per_request} input(s)/request, arrays as "
          f"{FLAGS.array_encoding}", flush=True)
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8} {'inputs/s':>9} {'mean batch':>10}")
    for clients in [int(c) for c in FLAGS.concurrency]:
      run_level(host, port, clients, bodies, clients, FLAGS.max_seconds)  # connect, warm
      before = health(host, port)["stats"]
      result = run_level(host, port, clients, bodies, FLAGS.requests, FLAGS.max_seconds)
      after = health(host, port)["stats"]
      batches = after["batches"] - before["batches"]
      mean_batch = (after["inputs"] - before["inputs"]) / batches if batches else float("nan")
      print(f"{clients:>7} {result['requests']:>8} {result['errors']:>6} "
            f"{result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} "
            f"{result['requests_per_s']:>8.1f} "
            f"{result['requests_per_s'] * FLAGS.inputs_per_request:>9.1f} {mean_batch:>10.1f}",
            flush=True)
      if result["errors"]:
        print(f"        first error: {result['first_error']}")
  finally:
    if server is not None:
      server.shutdown()
      server.server_close()


if __name__ == "__main__":
  app.run(main)
