"""The HTTP embedding service: happy paths equal the library embedder, every bad request is a 4xx
naming its field, and the service keeps serving afterwards."""
import base64
import io
import json
import socket
import threading

import numpy as np
import pytest
from PIL import Image

from gemb.serve import bundle as serve_bundle
from gemb.serve import service
from serve_helpers import SETTINGS, request, tiny_bundle


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  embedder = serve_bundle.load(tiny_bundle(str(tmp_path_factory.mktemp("serve") / "bundle")))
  httpd = service.make_server(embedder, "127.0.0.1", 0)
  service.serve_in_thread(httpd)
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def embed(server, body):
  return request(server, "POST", "/embed", body)


def test_binds_loopback_and_reports_health(server):
  assert server.server_address[0] == "127.0.0.1"
  status, health = request(server, "GET", "/health")
  assert status == 200 and health["status"] == "ok"
  assert (health["embed_dim"], health["mrl_dims"]) == (64, [16, 32, 64])
  assert health["modalities"] == ["text", "image", "audio", "video"]
  assert health["limits"]["max_image_pixels"] == 48 * 48


def test_embeddings_equal_the_library_for_every_array_encoding(server):
  embedder = server.embedder
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  png = io.BytesIO()
  Image.fromarray(pixels).save(png, format="PNG")
  encodings = [
      pixels.tolist(),
      {"b64": base64.b64encode(pixels.tobytes()).decode(), "dtype": "uint8", "shape": [24, 32, 3]},
      {"file_b64": base64.b64encode(png.getvalue()).decode(), "format": "png"},
  ]
  expected = embedder.embed([[{"text": "a red circle"}], [{"image": pixels}, {"text": "colour?"}]],
                            mrl_dim=16, task_string="find it")
  for image in encodings:
    status, answer = embed(server, {"inputs": [[{"text": "a red circle"}],
                                               [{"image": image}, {"text": "colour?"}]],
                                    "mrl_dim": 16, "task": "find it"})
    assert status == 200, answer
    assert (answer["dim"], answer["count"]) == (16, 2)
    np.testing.assert_allclose(answer["embeddings"], expected, atol=1e-6)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server):
  texts = [f"object number {i}" for i in range(12)]
  expected = server.embedder.embed([[{"text": t}] for t in texts])
  before = request(server, "GET", "/health")[1]["stats"]
  answers = [None] * len(texts)

  def client(i):
    answers[i] = embed(server, {"inputs": [[{"text": texts[i]}]]})
  threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  after = request(server, "GET", "/health")[1]["stats"]
  for i, (status, answer) in enumerate(answers):
    assert status == 200, answer
    np.testing.assert_allclose(answer["embeddings"][0], expected[i], atol=1e-6)
  assert after["requests"] - before["requests"] == len(texts)
  assert after["batches"] - before["batches"] < len(texts)  # some requests shared a call
  assert after["largest_batch"] <= SETTINGS["max_batch"]


def test_truncate_cuts_an_over_long_text_instead_of_refusing_it(server):
  status, answer = embed(server, {"inputs": [[{"text": "x" * 80}]], "truncate": True})
  assert status == 200
  expected = server.embedder.embed([[{"text": "x" * 64}]])
  np.testing.assert_allclose(answer["embeddings"], expected, atol=1e-6)


TEXT = [{"text": "a red circle"}]
BAD_REQUESTS = {
    "malformed json": (b'{"inputs": [[{"text": "a"}]', "body"),
    "not an object": ([1, 2], "body"),
    "unknown field": ({"inputs": [TEXT], "colour": 1}, "colour"),
    "missing inputs": ({"mrl_dim": 16}, "inputs"),
    "inputs not a list": ({"inputs": "a red circle"}, "inputs"),
    "no inputs": ({"inputs": []}, "inputs"),
    "too many inputs": ({"inputs": [TEXT] * 9}, "inputs"),
    "empty input": ({"inputs": [[]]}, "inputs[0]"),
    "part with two keys": ({"inputs": [[{"text": "a", "image": [[0]]}]]}, "inputs[0][0]"),
    "unknown modality": ({"inputs": [[{"smell": "roses"}]]}, "inputs[0][0].smell"),
    "text not a string": ({"inputs": [[{"text": 5}]]}, "inputs[0][0].text"),
    "empty text": ({"inputs": [[{"text": ""}]]}, "inputs[0][0].text"),
    "too many parts": ({"inputs": [TEXT * 9]}, "inputs[0]"),
    "sequence too long": ({"inputs": [TEXT * 5]}, "inputs[0]"),
    "text too long": ({"inputs": [[{"text": "x" * 65}]]}, "inputs[0][0].text"),
    "image too many pixels": ({"inputs": [[{"image": np.zeros((49, 48, 3), int).tolist()}]]},
                              "inputs[0][0].image"),
    "image ragged": ({"inputs": [[{"image": [[1, 2], [3]]}]]}, "inputs[0][0].image"),
    "image pixel out of range": ({"inputs": [[{"image": [[[300, 0, 0]]]}]]}, "inputs[0][0].image"),
    "image not an array": ({"inputs": [[{"image": {"pixels": 1}}]]}, "inputs[0][0].image"),
    "image bad b64 shape": ({"inputs": [[{"image": {"b64": "AAAA", "dtype": "uint8",
                                                     "shape": [2, 2, 3]}}]]}, "inputs[0][0].image"),
    "image file path refused": ({"inputs": [TEXT, [{"image": "/etc/hostname"}]]},
                                "inputs[1][0].image"),
    "image file bad format": ({"inputs": [[{"image": {"file_b64": "AAAA", "format": "tiff"}}]]},
                              "inputs[0][0].image"),
    "audio too long": ({"inputs": [[{"audio": [0.0] * 11000}]]}, "inputs[0][0].audio"),
    "audio not 1-d": ({"inputs": [[{"audio": [[0.0, 0.1]]}]]}, "inputs[0][0].audio"),
    "video too many frames": ({"inputs": [[{"video": np.zeros((9, 8, 8, 3), int).tolist()}]]},
                              "inputs[0][0].video"),
    "mrl dim not offered": ({"inputs": [TEXT], "mrl_dim": 17}, "mrl_dim"),
    "mrl dim a string": ({"inputs": [TEXT], "mrl_dim": "16"}, "mrl_dim"),
    "mrl dim a bool": ({"inputs": [TEXT], "mrl_dim": True}, "mrl_dim"),
    "task not a string": ({"inputs": [TEXT], "task": 3}, "task"),
    "truncate not a bool": ({"inputs": [TEXT], "truncate": "yes"}, "truncate"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_a_400_naming_the_field_and_the_service_keeps_serving(server, name):
  body, field = BAD_REQUESTS[name]
  status, answer = embed(server, body)
  assert status == 400, answer
  assert answer["field"] == field, answer
  assert answer["error"]
  assert request(server, "GET", "/health")[0] == 200


def test_body_over_the_byte_limit_is_a_413(server):
  body = json.dumps({"inputs": [[{"text": "a" * 300_000}]]}).encode()
  status, answer = embed(server, body)
  assert (status, answer["field"]) == (413, "body")
  assert "max_request_bytes=262144" in answer["error"]
  assert embed(server, {"inputs": [TEXT]})[0] == 200


def test_a_body_without_content_length_is_a_411(server):
  with socket.create_connection(server.server_address[:2], timeout=30) as connection:
    connection.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\n")
    reply = connection.makefile("rb").read()
  head, _, body = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 411")
  assert json.loads(body)["field"] == "Content-Length"


def test_unknown_path_and_method(server):
  status, answer = request(server, "GET", "/embeddings")
  assert (status, answer["field"]) == (404, "path")
  status, answer = request(server, "PUT", "/embed", {"inputs": [TEXT]})
  assert (status, answer["field"]) == (405, "method")
  assert embed(server, {"inputs": [TEXT]})[0] == 200


# 100,000 nested arrays; objects nest 50,000 deep to stay under max_request_bytes.
DEEP_JSON = {"arrays": b"[" * 100_000 + b"]" * 100_000,
             "objects": b'{"":' * 50_000 + b"1" + b"}" * 50_000}


@pytest.mark.parametrize("nesting", sorted(DEEP_JSON))
def test_deeply_nested_json_is_a_400_naming_the_body(server, nesting):
  status, answer = embed(server, DEEP_JSON[nesting])
  assert (status, answer["field"]) == (400, "body"), answer
  assert "nested too deeply" in answer["error"]
  assert embed(server, {"inputs": [TEXT]})[0] == 200
