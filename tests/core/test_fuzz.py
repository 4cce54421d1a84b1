"""Property-based fuzzing of the three doors input comes through.

Whatever arrives, the request model (``validate``), the uploaded-file loader
(``load_options_file``) and the catalog loader (``Catalog.from_yaml``) answer with a Plan
or Catalog, or with a refusal a person can read: one line, bounded, escaped. Any other
exception is a bug (a 500 for the form or REST, a traceback for the CLI).

Derandomized, so CI explores the same examples each run: 10,000 examples in all (about
30 s here), weighted by what each costs. ``DCLOUD_FUZZ_SCALE=10`` explores ten times as many,
and ``DCLOUD_FUZZ_RANDOM=1`` other examples on every run.
"""

from __future__ import annotations

import copy
import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcloud_spawner.core.catalog import Catalog, CatalogError
from dcloud_spawner.core.errors import RequestError
from dcloud_spawner.core.plan import Plan
from dcloud_spawner.core.request import load_options_file
from dcloud_spawner.core.validation import validate
from tests.conftest import EXAMPLE_CATALOG

SCALE = float(os.environ.get("DCLOUD_FUZZ_SCALE", "1"))
EXAMPLES = {"validate": 5_000, "file": 3_000, "catalog": 2_000}  # 10,000 in all


def fuzz(door: str) -> settings:
    return settings(max_examples=int(EXAMPLES[door] * SCALE), deadline=None,
                    derandomize=not os.environ.get("DCLOUD_FUZZ_RANDOM"),
                    database=None, suppress_health_check=list(HealthCheck))


CATALOG = Catalog.from_path(EXAMPLE_CATALOG)
CATALOG_DATA = yaml.safe_load(EXAMPLE_CATALOG.read_text())
GROUPS = st.lists(st.sampled_from(["students", "researchers", "medical", "nobody", ""]), max_size=3)

# -- values ------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from([
    "", " ", "\n", "\x00", "\x1b[2K", "\u202e", "\ud800", "{username}", "*", "-r x", "--index-url=x",
    "x.tar.gz", "a" * 300, "9" * 5000, "yes", "1:30", "0x1F", "1e400", "nan", "-0", "1_0", "true",
])
TEXT = st.one_of(st.text(max_size=30), NASTY_TEXT)
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(),
    st.builds(lambda digits: 10**digits, st.integers(0, 4000)), st.decimals(places=4).map(str),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=8)


def any_of(*known: str):
    return st.one_of(st.sampled_from(known), JSONISH)


DIGITS = st.sampled_from(["0", "1", "2", "16", "512", "1.5", ".5", "0.25", "1024", "99999999999", "3."])
QUANTITY = st.builds("".join, st.tuples(
    st.sampled_from(["", "", "+", "-"]), DIGITS,
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Ei", "m", "k", "M", "G", "e3", "E-2", "e99", "gi", "GiB", " Gi"])))
PACKAGE = st.builds("".join, st.tuples(
    st.sampled_from(["rich", "timm", "numpy", "x.tar.gz", "Pkg_Name", "a.whl", "-r", "torch ", "é"]),
    st.sampled_from(["", "", "[jupyter]", "[a,b]", "["]),
    st.sampled_from(["", "", ">=1.0", "==2.*", " @ https://x/y.whl", "~=1", "<", "==1; python_version >= \"3.8\"",
                     "; os_name == 'nt'", " ; rm -rf /", "\n--index-url=x"])))
REQUEST = st.fixed_dictionaries({}, optional={
    "environment": any_of("pytorch", "tensorflow", "scipy"),
    "gpu": st.one_of(JSONISH, st.fixed_dictionaries(
        {"type": any_of("t4", "a100", "a100-mig-1g")},
        optional={"count": st.one_of(st.integers(-2, 70), SCALARS)})),
    "cpu": st.one_of(st.floats(0, 70), st.decimals(0, 70, places=4).map(str), SCALARS),
    "memory": st.one_of(QUANTITY, SCALARS),
    "datasets": st.one_of(st.lists(any_of("imagenet", "coco", "medical-scans"), max_size=4), JSONISH),
    "packages": st.one_of(st.lists(st.one_of(PACKAGE, TEXT), max_size=12), JSONISH),
})
WITH_JUNK = st.tuples(REQUEST, TEXT, JSONISH).map(lambda parts: {**parts[0], parts[1]: parts[2]})


def assert_one_sentence(sentence: str, limit: int = 400) -> None:
    assert isinstance(sentence, str) and sentence, sentence
    assert sentence.isprintable(), repr(sentence)  # one line; nothing that could forge a log line
    assert len(sentence) <= limit, len(sentence)


def outcome(options, catalog: Catalog, groups) -> Plan | RequestError:
    try:
        plan = validate(options, catalog, groups)
    except RequestError as exc:
        assert_one_sentence(exc.sentence)
        assert isinstance(exc.field, str)  # the key the user wrote, which may be ""
        return exc
    assert isinstance(plan, Plan)
    plan.user_options()  # what is stored and shown again must also be producible
    plan.summary()
    return plan


# -- the request model ---------------------------------------------------------------------

@fuzz("validate")
@given(options=st.one_of(REQUEST, WITH_JUNK, JSONISH), groups=GROUPS)
def test_validate_gives_a_plan_or_one_sentence(options, groups):
    result = outcome(options, CATALOG, groups)
    if isinstance(result, Plan):  # a plan's own options validate to the same plan
        again = validate(result.user_options(), CATALOG, groups)
        assert again.user_options() == result.user_options()


# -- uploaded files ------------------------------------------------------------------------

YAML_TOKENS = st.sampled_from([
    "cpu", "gpu", "environment", "memory", "packages", "datasets", "type", "count", ": ", ":", "\n", "  ",
    "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!!str ", "!!python/object:os.system ", "<<: ", "? ", "yes",
    "1:30", "0o17", "0x1F", ".inf", "~", "null", "'", '"', "#", "---\n", "...\n", "%YAML 1.1\n", "\t",
    "\\", "é", "\x85", "\ufeff", "9" * 120, "1e999", "2024-01-01", "|\n", ">-\n", "t4", "2", "16Gi",
])
FILES = st.one_of(
    st.binary(max_size=200),
    st.lists(YAML_TOKENS, max_size=40).map(lambda tokens: "".join(tokens).encode("utf-8", "surrogatepass")),
    REQUEST.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    REQUEST.map(lambda r: yaml.safe_dump(r, allow_unicode=True).encode("utf-8", "surrogatepass")),
)


@fuzz("file")
@given(body=FILES, json_name=st.booleans())
def test_uploaded_files_give_options_or_one_sentence(body, json_name):
    try:
        options = load_options_file(body, "options.json" if json_name else "options.yaml")
    except RequestError as exc:
        assert_one_sentence(exc.sentence)
        assert exc.field == "file"
        return
    assert isinstance(options, dict)
    outcome(options, CATALOG, ["researchers"])


# -- the catalog ---------------------------------------------------------------------------

def _places(node, path=()):
    """Every (container, key) in the catalog data, to replace or add a value at."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _places(value, (*path, index))


PLACES = [p for p in _places(CATALOG_DATA) if p]
CATALOG_TEXT = EXAMPLE_CATALOG.read_text()
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's is faster; same output


@st.composite
def catalogs(draw) -> str:
    kind = draw(st.integers(0, 5))
    if kind >= 3:  # one value replaced (or a key added) anywhere
        data = copy.deepcopy(CATALOG_DATA)
        path = draw(st.sampled_from(PLACES))
        node = data
        for key in path[:-1]:
            node = node[key]
        if draw(st.booleans()) or not isinstance(node, dict):
            node[path[-1]] = draw(st.one_of(JSONISH, QUANTITY, NASTY_TEXT))
        else:
            node[draw(TEXT)] = draw(JSONISH)
        try:
            return yaml.dump(data, Dumper=DUMPER, allow_unicode=True)
        except UnicodeEncodeError:  # libyaml cannot write a lone surrogate; PyYAML escapes it
            return yaml.safe_dump(data, allow_unicode=True)
    if kind == 1:  # tokens spliced into the admin's text
        at = draw(st.integers(0, len(CATALOG_TEXT)))
        return CATALOG_TEXT[:at] + "".join(draw(st.lists(YAML_TOKENS, max_size=6))) + CATALOG_TEXT[at:]
    if kind == 2:  # text cut short
        return CATALOG_TEXT[: draw(st.integers(0, len(CATALOG_TEXT)))]
    return "".join(draw(st.lists(YAML_TOKENS, max_size=40)))  # kind 0: token soup


@fuzz("catalog")
@given(text=catalogs(), groups=GROUPS)
def test_catalog_loader_gives_a_catalog_or_error_lines(text, groups):
    try:
        catalog = Catalog.from_yaml(text)
    except CatalogError as exc:
        assert exc.errors
        for line in exc.errors:
            assert_one_sentence(line, 300)
        return
    assert isinstance(catalog, Catalog)
    outcome({}, catalog, groups)  # a catalog that loads can serve a request
    outcome({"gpu": {"type": "t4"}, "datasets": ["imagenet"], "packages": ["rich"]}, catalog, groups)
