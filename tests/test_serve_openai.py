"""POST /v1/embeddings through the official `openai` client, and the service's API key: the
vectors equal /embed's and the library's, and every bad request is OpenAI's error shape."""
import base64
import http.client
import json

import numpy as np
import openai
import pytest

from gemb.serve import bundle as serve_bundle
from gemb.serve import service
from serve_helpers import request, tiny_bundle

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "bundle"  # the bundle folder's name
TEXTS = ["a red circle", "two blue squares", "a green triangle above a circle"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  embedder = serve_bundle.load(tiny_bundle(str(tmp_path_factory.mktemp("openai") / MODEL)))
  httpd = service.make_server(embedder, "127.0.0.1", 0, api_key=API_KEY)
  service.serve_in_thread(httpd)
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def client(server, api_key=API_KEY):
  """The official client on the local server (close it, or use it in a `with`)."""
  host, port = server.server_address[:2]
  return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=api_key, max_retries=0,
                       timeout=120, http_client=openai.DefaultHttpxClient(trust_env=False))


def embeddings(server, **kwargs):
  """[N, d] float64 rows of one embeddings.create, after checking the reply's shape."""
  with client(server) as openai_client:
    reply = openai_client.embeddings.create(model=MODEL, **kwargs)
  assert (reply.object, reply.model) == ("list", MODEL)
  assert [(e.object, e.index) for e in reply.data] == [("embedding", i)
                                                       for i in range(len(reply.data))]
  return np.array([e.embedding for e in reply.data]), reply.usage


def embed_route(server, texts, **fields):
  status, answer = request(server, "POST", "/embed",
                           {"inputs": [[{"text": t}] for t in texts], **fields}, AUTH)
  assert status == 200, answer
  return np.array(answer["embeddings"])


def tokens(server, text):
  return server.embedder.feature_config().text_tokenizer.encode(text).tolist()


def test_one_string_equals_embed_and_the_library(server):
  vectors, usage = embeddings(server, input=TEXTS[0], encoding_format="float")
  assert vectors.shape == (1, 64)
  np.testing.assert_allclose(vectors, embed_route(server, TEXTS[:1]), atol=1e-6)
  np.testing.assert_allclose(vectors, server.embedder.embed([[{"text": TEXTS[0]}]]), atol=1e-6)
  assert usage.prompt_tokens == usage.total_tokens == len(TEXTS[0].encode("utf-8"))


def test_a_list_keeps_its_order_and_counts_every_token(server):
  vectors, usage = embeddings(server, input=TEXTS, encoding_format="float")
  np.testing.assert_allclose(vectors, embed_route(server, TEXTS), atol=1e-6)
  np.testing.assert_allclose(vectors, server.embedder.embed([[{"text": t}] for t in TEXTS]),
                             atol=1e-6)
  assert usage.prompt_tokens == sum(len(tokens(server, t)) for t in TEXTS)


def test_dimensions_is_the_renormalised_mrl_prefix(server):
  vectors, _ = embeddings(server, input=TEXTS, dimensions=16, encoding_format="float")
  full, _ = embeddings(server, input=TEXTS, encoding_format="float")
  prefix = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
  np.testing.assert_allclose(vectors, prefix, atol=1e-6)
  np.testing.assert_allclose(vectors, embed_route(server, TEXTS, mrl_dim=16), atol=1e-6)
  np.testing.assert_allclose(vectors, server.embedder.embed([[{"text": t}] for t in TEXTS],
                                                            mrl_dim=16), atol=1e-6)


def test_base64_is_little_endian_float32_of_the_same_vectors(server):
  floats, _ = embeddings(server, input=TEXTS, dimensions=32, encoding_format="float")
  decoded_by_client, _ = embeddings(server, input=TEXTS, dimensions=32)  # the client's default
  np.testing.assert_array_equal(decoded_by_client, floats)
  with client(server) as openai_client:
    reply = openai_client.embeddings.create(model=MODEL, input=TEXTS, dimensions=32,
                                            encoding_format="base64")
  rows = [np.frombuffer(base64.b64decode(e.embedding), "<f4") for e in reply.data]
  np.testing.assert_array_equal(np.array(rows), floats)


def test_token_arrays_of_the_bundles_tokenizer_equal_their_text(server):
  one, usage = embeddings(server, input=tokens(server, TEXTS[0]), encoding_format="float")
  assert usage.prompt_tokens == len(tokens(server, TEXTS[0]))
  several, _ = embeddings(server, input=[tokens(server, t) for t in TEXTS],
                          encoding_format="float")
  expected = server.embedder.embed([[{"text": t}] for t in TEXTS])
  np.testing.assert_allclose(one, expected[:1], atol=1e-6)
  np.testing.assert_allclose(several, expected, atol=1e-6)


def test_task_extension_equals_embed_with_the_task(server):
  vectors, usage = embeddings(server, input=TEXTS, encoding_format="float",
                              extra_body={"task": "find the picture"})
  expected = server.embedder.embed([[{"text": t}] for t in TEXTS], task_string="find the picture")
  np.testing.assert_allclose(vectors, expected, atol=1e-6)
  assert usage.prompt_tokens > sum(len(tokens(server, t)) for t in TEXTS)  # the prefix counts


@pytest.mark.parametrize("kwargs, error, param, needle", [
    (dict(input="a", dimensions=17), openai.BadRequestError, "dimensions", "[16, 32, 64]"),
    (dict(input=""), openai.BadRequestError, "input[0]", "empty"),
    (dict(input=[]), openai.BadRequestError, "input", "non-empty"),
    (dict(input=["a"] * 9), openai.BadRequestError, "input", "max_inputs_per_request=8"),
    (dict(input=["a", "x" * 65]), openai.BadRequestError, "input[1]", "max_text_tokens=64"),
    (dict(input=[3, 100_000]), openai.BadRequestError, "input[0]", "tokenizer"),
    (dict(input="a", model="text-embedding-3-small"), openai.NotFoundError, "model",
     "'bundle'"),
])
def test_bad_request_raises_the_clients_error_naming_the_param(server, kwargs, error, param,
                                                               needle):
  with client(server) as openai_client, pytest.raises(error) as raised:
    openai_client.embeddings.create(**{"model": MODEL, **kwargs})
  assert raised.value.param == param, raised.value.body
  assert needle in raised.value.message
  if error is openai.NotFoundError:
    assert raised.value.code == "model_not_found"
  assert embeddings(server, input="still serving")[0].shape == (1, 64)


def test_wrong_or_missing_api_key_is_a_401_on_every_route(server):
  with client(server, "wrong-key") as openai_client, pytest.raises(
      openai.AuthenticationError) as raised:
    openai_client.embeddings.create(model=MODEL, input="a")
  assert raised.value.code == "invalid_api_key"
  body = {"input": "a", "model": MODEL}
  for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
    assert request(server, "POST", "/v1/embeddings", body, headers)[0] == 401
    status, answer = request(server, "POST", "/embed", {"inputs": [[{"text": "a"}]]}, headers)
    assert (status, answer["field"]) == (401, "Authorization")
    assert request(server, "GET", "/health", None, headers)[0] == 401
  status, health = request(server, "GET", "/health", None, AUTH)
  assert (status, health["model_name"]) == (200, MODEL)


def test_a_refused_requests_body_is_consumed_so_its_connection_keeps_serving(server):
  connection = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
  body = json.dumps({"input": ["x" * 60] * 8, "model": MODEL}).encode()
  try:
    answers = []
    for headers in ({"Authorization": "Bearer wrong-key"}, AUTH):  # one keep-alive connection
      connection.request("POST", "/v1/embeddings", body, headers)
      response = connection.getresponse()
      answers.append((response.status, json.loads(response.read())))
  finally:
    connection.close()
  assert answers[0][0] == 401 and answers[0][1]["error"]["code"] == "invalid_api_key"
  assert answers[1][0] == 200, answers[1]


BAD_BODIES = {  # raw bodies the client would not send: (body, status, param)
    "malformed json": (b'{"input": "a"', 400, None),
    "nested 100000 levels": (b"[" * 100_000 + b"]" * 100_000, 400, None),
    "not an object": (["a"], 400, None),
    "unknown parameter": ({"input": "a", "model": MODEL, "colour": 1}, 400, "colour"),
    "missing model": ({"input": "a"}, 400, "model"),
    "missing input": ({"model": MODEL}, 400, "input"),
    "input a number": ({"input": 3, "model": MODEL}, 400, "input"),
    "mixed strings and ids": ({"input": ["a", 3], "model": MODEL}, 400, "input"),
    "token id a float": ({"input": [[3, 4.5]], "model": MODEL}, 400, "input[0]"),
    "token id a bool": ({"input": [[3, True]], "model": MODEL}, 400, "input[0]"),
    "encoding format": ({"input": "a", "model": MODEL, "encoding_format": "int8"}, 400,
                        "encoding_format"),
    "dimensions a string": ({"input": "a", "model": MODEL, "dimensions": "16"}, 400,
                            "dimensions"),
    "task on token ids": ({"input": [3, 4], "model": MODEL, "task": "find"}, 400, "task"),
    "model not a string": ({"input": "a", "model": 3}, 400, "model"),
    "unknown model": ({"input": "a", "model": "other"}, 404, "model"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_body_is_an_openai_error_and_the_service_keeps_serving(server, name):
  body, status, param = BAD_BODIES[name]
  got, answer = request(server, "POST", "/v1/embeddings", body, AUTH)
  assert got == status, answer
  assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
  assert (answer["error"]["param"], answer["error"]["type"]) == (param, "invalid_request_error")
  assert answer["error"]["message"]
  assert embeddings(server, input="still serving")[0].shape == (1, 64)


def test_body_over_the_byte_limit_is_a_413_in_openai_shape(server):
  status, answer = request(server, "POST", "/v1/embeddings",
                           {"input": "a" * 300_000, "model": MODEL}, AUTH)
  assert status == 413
  assert "max_request_bytes=262144" in answer["error"]["message"]


def test_nesting_error_names_the_body(server):
  _, answer = request(server, "POST", "/v1/embeddings", BAD_BODIES["nested 100000 levels"][0],
                      AUTH)
  assert answer["error"]["message"].startswith("body: JSON nested too deeply")


def test_unknown_v1_path_is_a_404_in_openai_shape(server):
  status, answer = request(server, "POST", "/v1/chat/completions", {"model": MODEL}, AUTH)
  assert (status, answer["error"]["type"]) == (404, "invalid_request_error")


def test_api_key_file_is_stripped_and_an_empty_one_refused(tmp_path):
  (tmp_path / "key").write_text(f"  {API_KEY}\n")
  assert service.read_api_key(str(tmp_path / "key")) == API_KEY
  (tmp_path / "empty").write_text("\n")
  with pytest.raises(ValueError, match="empty"):
    service.read_api_key(str(tmp_path / "empty"))


@pytest.mark.parametrize("host, api_key, allow, refused", [
    ("127.0.0.1", None, False, False),
    ("localhost", None, False, False),
    ("0.0.0.0", None, False, True),
    ("", None, False, True),
    ("0.0.0.0", API_KEY, False, False),
    ("0.0.0.0", None, True, False),
])
def test_serving_beyond_loopback_needs_a_key_or_an_explicit_flag(host, api_key, allow, refused):
  if refused:
    with pytest.raises(ValueError, match="--api_key_file"):
      service.check_exposure(host, api_key, allow)
  else:
    service.check_exposure(host, api_key, allow)
