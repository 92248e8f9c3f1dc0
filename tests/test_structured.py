"""Answers constrained to a JSON schema: with random weights the model's preferences are noise, so every
answer parsing and validating is the grammar's doing."""

import json
from pathlib import Path

import pytest

import edgevlm
from edgevlm.structured import ResponseFormat, SchemaError, check
from helpers import picture, run_edgevlm

jsonschema = pytest.importorskip("jsonschema", reason="the [test] extra (jsonschema) is not installed")
pytest.importorskip("llguidance", reason="the [json] extra (llguidance) is not installed")

# Twelve schemas of the kinds users send (nested objects, enums, bounded arrays, numbers, patterns, anyOf),
# shared with benchmarks/json_engines.py.
SCHEMAS = json.loads((Path(__file__).with_name("schemas.json")).read_text())


@pytest.fixture(scope="module")
def model(small_bundle):
    return edgevlm.load(small_bundle)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_answer_validates(model, name):
    schema = SCHEMAS[name]
    for seed in range(3):
        session = model.session(max_tiles=1)
        answer = session.chat("Describe the image as JSON.", [picture(448, 448, seed)], schema=schema,
                              max_tokens=160, temperature=1.0, seed=seed)  # fmt: skip
        assert session.last_stats.generation.finish_reason == "stop", answer
        jsonschema.validate(json.loads(answer), schema)


def test_json_object_and_greedy_answers_are_json(model):
    answer = model.chat("Is the door open?", schema=SCHEMAS["yes or no"], max_tokens=40)
    assert json.loads(answer)["answer"] in ("yes", "no")
    pieces = list(model.chat("Is the door open?", schema=SCHEMAS["yes or no"], max_tokens=40, stream=True))
    assert "".join(pieces) == answer and len(pieces) > 1
    obj = model.chat("Anything, as a JSON object.", json=True, max_tokens=300, temperature=0.7, seed=3)
    session = model.session()
    cut = session.chat("Where is it?", schema=SCHEMAS["nested"], max_tokens=3)  # needs more than 3 tokens
    assert session.last_stats.generation.finish_reason == "length" and cut.startswith('{"box')
    if obj.endswith("}"):  # random weights may well run out of tokens inside an unbounded key
        assert isinstance(json.loads(obj), dict)


def test_a_schema_that_cannot_compile_is_a_clear_error(model):
    for bad, words in (({"type": "strin"}, "Invalid type"), ({"type": "string", "pattern": "(("}, "regex")):
        with pytest.raises(SchemaError, match=words):
            check(ResponseFormat(bad))
        with pytest.raises(SchemaError, match="cannot be used"):
            model.chat("hi", schema=bad)


def test_chat_cli_takes_a_schema_file(small_bundle, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMAS["nested"]))
    r = run_edgevlm("chat", "-m", small_bundle, "-p", "Where is it?", "--json-schema", schema, "--max-tokens", "120")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMAS["nested"])
    schema.write_text('{"type": "object", "properties": {"a": {"pattern": "(("}}}')
    r = run_edgevlm("chat", "-m", small_bundle, "-p", "x", "--json-schema", schema)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "regex" in r.stderr


def test_the_server_takes_openai_response_format(small_bundle):
    openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")
    pytest.importorskip("uvicorn", reason="the [server] extra is not installed")
    from helpers import Server

    s = Server(small_bundle)
    try:
        client, messages = s.client(), [{"role": "user", "content": "List what you see as JSON."}]
        for name in sorted(SCHEMAS):  # every schema, through the openai client
            fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMAS[name], "strict": True}}
            r = client.chat.completions.create(model="m", messages=messages, response_format=fmt, max_tokens=160,
                                               temperature=1.0, seed=1)  # fmt: skip
            assert r.choices[0].finish_reason == "stop", name
            jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS[name])
            if name not in ("bounded array", "nested"):
                continue
            chunks = client.chat.completions.create(model="m", messages=messages, response_format=fmt, max_tokens=150,
                                                    temperature=1.0, seed=1, stream=True)  # fmt: skip
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == r.choices[0].message.content
        r = client.chat.completions.create(model="m", messages=messages, response_format={"type": "json_object"},
                                           max_tokens=4)  # fmt: skip
        text, end = r.choices[0].message.content, r.choices[0].finish_reason  # "{}" may close in time
        assert (end == "length" and text.startswith("{")) or (end == "stop" and isinstance(json.loads(text), dict))
        fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMAS["nested"]}}
        r = client.chat.completions.create(model="m", messages=messages, response_format=fmt, max_tokens=4)
        assert r.choices[0].finish_reason == "length"  # the document needs more than 4 tokens: cut, as OpenAI says
        assert r.choices[0].message.content.startswith('{"box": ')
        for fmt, words in (({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
                            "Invalid type"), ({"type": "xml"}, "json_object"),
                           ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema")):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="m", messages=messages, response_format=fmt)
            assert words in e.value.body["message"] and e.value.body["param"] == "response_format"
    finally:
        s.stop()


@pytest.fixture(scope="module")
def qwen_bundle(tmp_path_factory):
    from edgevlm.convert import ConvertOptions, convert
    from edgevlm.models import preset
    from edgevlm.testing import qwen2vl as q

    cfg, root = preset("qwen2-vl-tiny"), tmp_path_factory.mktemp("qwen2vl")
    q.save_checkpoint(q.reference_model(cfg), cfg, root / "ckpt")
    convert(root / "ckpt", root / "bundle", ConvertOptions(max_context=1024, accuracy=False), log=lambda m: None)
    return root / "bundle"


@pytest.mark.parametrize("family", ["smolvlm2", "qwen2_vl"])
def test_every_family_answers_in_json(family, request):
    """The mask sits in the shared generation loop: the other two families' templates and stop tokens too."""
    bundle = request.getfixturevalue("smol_bundle" if family == "smolvlm2" else "qwen_bundle")
    m = edgevlm.load(bundle)
    for name in ("nested", "bounded array"):
        session = m.session(max_tiles=1)
        answer = session.chat("Where is it?", [picture(300, 200, 1)], schema=SCHEMAS[name], max_tokens=160,
                              temperature=1.0, seed=2)  # fmt: skip
        assert session.last_stats.generation.finish_reason == "stop", answer
        jsonschema.validate(json.loads(answer), SCHEMAS[name])
