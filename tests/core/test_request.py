import json
import time

import pytest

from dcloud_spawner.core.request import (
    MAX_FILE_BYTES,
    RequestError,
    ServerRequest,
    json_schema,
    load_options_file,
)


@pytest.mark.parametrize(
    "data, field, text",
    [
        ({"image": "evil:latest"}, "image", "Unknown field 'image'"),
        ({"command": ["sh"]}, "command", "Unknown field 'command'"),
        ({"gpu": {"type": "t4", "count": 1, "resource": "x"}}, "gpu.resource", "allowed here: type, count"),
        ({"gpu": "t4"}, "gpu", "GPU must be a mapping"),
        ({"gpu": {"type": "t4", "count": 0}}, "gpu.count", "whole number from 1 to 64"),
        ({"gpu": {"type": "t4", "count": "two"}}, "gpu.count", "whole number"),
        ({"cpu": "lots"}, "cpu", "CPU cores must be a number"),
        ({"cpu": -1}, "cpu", "greater than 0"),
        ({"memory": ["16Gi"]}, "memory", "Memory must be a quantity"),
        ({"datasets": "imagenet"}, "datasets", "Datasets must be a list"),
        ({"packages": [1, 2]}, "packages", "Extra packages must be a list of strings"),
    ],
)
def test_shape_errors_name_the_field(data, field, text):
    with pytest.raises(RequestError) as err:
        ServerRequest.parse(data)
    assert err.value.field == field
    assert text in err.value.sentence
    assert err.value.sentence.endswith(".") and "\n" not in err.value.sentence


def test_non_mapping_options():
    with pytest.raises(RequestError, match="must be a mapping"):
        ServerRequest.parse(["environment"])


def test_schema_forbids_unknown_fields():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"environment", "gpu", "cpu", "memory", "home", "scratch", "datasets",
                                         "packages", "wait"}
    json.dumps(schema)


def test_yaml_and_json_files():
    assert load_options_file(b"environment: pytorch\ncpu: 2\n") == {"environment": "pytorch", "cpu": 2}
    assert load_options_file(b'{"gpu": {"type": "t4"}}', "x.json") == {"gpu": {"type": "t4"}}


@pytest.mark.parametrize(
    "body, text",
    [
        (b"a: &x [1]\nb: *x\n", "anchors and aliases"),
        (b"\xff\xfe", "UTF-8"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"", "empty"),
        (b"environment: [\n", "not valid YAML or JSON"),
        (b"a: !!python/object/apply:os.system ['true']\n", "tags such as"),
        (b"a: " + b"[" * 20 + b"]" * 20 + b"\n", "nested deeper"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested deeper"),
        (b"a: " + b"x" * 2000 + b"\n", "longer than"),
        (b"x" * (MAX_FILE_BYTES + 1), "larger than"),
    ],
)
def test_hostile_files_fail_fast(body, text):
    with pytest.raises(RequestError) as err:
        load_options_file(body)
    assert text in err.value.sentence
    assert err.value.sentence.startswith("Configuration file")


def test_alias_bomb_is_refused_quickly():
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    started = time.perf_counter()
    with pytest.raises(RequestError, match="anchors and aliases"):
        load_options_file("\n".join(lines).encode())
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "body, text",
    [
        (b'{"cpu": ' + b"1" * 5000 + b"}", "more than 100 digits"),  # int() itself refuses > 4,300
        (b"cpu: 1\nmemory: 2Gi\ncpu: 64\n", "the key 'cpu' appears twice (line 3)"),
        (b'{"cpu": 1, "cpu": 64}', "the key 'cpu' appears twice"),
        (b'{"cpu": NaN}', "'NaN' is not a JSON number"),
        (b"gpu: !!binary dDQ=\n", "tags such as"),
    ],
)
def test_files_that_used_to_escape_the_one_sentence_rule(body, text):
    with pytest.raises(RequestError) as err:
        load_options_file(body)
    assert text in err.value.sentence
    assert err.value.sentence.startswith("Configuration file") and "\n" not in err.value.sentence


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"cpu: yes\n", {"cpu": "yes"}),  # YAML 1.1 would say True, and True would be 1 core
        (b"cpu: 1:30\n", {"cpu": "1:30"}),  # YAML 1.1 would say 90
        (b"environment: 2024-01-01\n", {"environment": "2024-01-01"}),  # not a date object
        (b"environment: 0o17\ncpu: 010\n", {"environment": 15, "cpu": 10}),  # YAML 1.2 integers
        (b"<<: {cpu: 64}\n", {"<<": {"cpu": 64}}),  # no merge keys: an unknown field
        (b"cpu: .5\nmemory: ~\n", {"cpu": 0.5, "memory": None}),
    ],
)
def test_files_resolve_scalars_as_yaml_1_2(body, expected):
    assert load_options_file(body) == expected


@pytest.mark.parametrize("options", [
    {"cpu": True}, {"cpu": False}, {"gpu": {"type": "t4", "count": True}}, {"memory": True},
    {"cpu": float("inf")}, {"cpu": float("nan")},
])
def test_booleans_and_non_finite_numbers_are_not_numbers(options):
    with pytest.raises(RequestError) as err:
        ServerRequest.parse(options)
    assert err.value.field in ("cpu", "gpu.count", "memory")


def test_file_booleans_are_refused_with_the_field_named():
    with pytest.raises(RequestError, match="CPU cores must be a number"):
        ServerRequest.parse(load_options_file(b"cpu: true\n"))
    with pytest.raises(RequestError, match="CPU cores must be a number"):
        ServerRequest.parse(load_options_file(b"cpu: yes\n"))


def test_control_characters_in_user_text_are_escaped_in_sentences():
    with pytest.raises(RequestError) as err:
        ServerRequest.parse({"evil\n[I 2025-01-01 JupyterHub] admin logged in\x1b[2K": 1})
    sentence = err.value.sentence
    assert sentence.startswith("Unknown field 'evil\\n[I 2025")
    assert sentence.isprintable() and len(sentence) < 200


@pytest.mark.parametrize("body", [b'{"environment": "\\ud800"}', b'environment: "\\ud800"\n',
                                  b'{"\\udfff": 1}', b'packages: ["\\ud800x"]\n'])
def test_lone_surrogates_are_not_text(body):
    with pytest.raises(RequestError, match="lone surrogate"):
        load_options_file(body)


def test_a_lone_surrogate_from_rest_is_named_as_such():
    with pytest.raises(RequestError) as err:
        ServerRequest.parse({"environment": "\ud800"})
    assert err.value.sentence == "Environment must be valid Unicode text."
