"""What a user asks for: one model for the form, REST ``user_options``, files and the CLI.

This module only checks shape (types, unknown fields, sizes). Whether the user may have
what they ask for is decided by :func:`dcloud_spawner.core.validation.validate` against the
catalog. Every problem becomes a :class:`RequestError`: one sentence naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .errors import RequestError, clip, input_path
from .loading import Limits, LoadProblem, SyntaxProblem, load_json, load_yaml

FIELDS = ("environment", "gpu", "cpu", "memory", "home", "scratch", "datasets", "packages", "wait")

# Limits on uploaded configuration files: small, shallow, no anchors.
MAX_FILE_BYTES = 16 * 1024
MAX_DEPTH = 8
MAX_SCALAR_CHARS = 512
MAX_NODES = 500


def _not_a_boolean(value: Any) -> Any:
    """``true`` is not 1: pydantic's lax mode would take it as a number."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


NotBool = BeforeValidator(_not_a_boolean)


class GpuRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str = Field(max_length=64, description="A GPU class id from the catalog.")
    count: Annotated[int, NotBool] = Field(1, ge=1, le=64, description="How many GPUs of that class.")


class ServerRequest(BaseModel):
    """The public request schema (published as JSON Schema for API users)."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        title="DCloud server request",
        json_schema_extra={
            "description": "user_options accepted by DCloudSpawner. Unknown fields are "
            "refused; omitted fields take the catalog's defaults.",
            "examples": [
                {
                    "environment": "pytorch",
                    "gpu": {"type": "t4", "count": 1},
                    "cpu": 4,
                    "memory": "16Gi",
                    "datasets": ["imagenet"],
                    "packages": ["timm>=1.0"],
                }
            ],
        },
    )

    environment: str | None = Field(None, max_length=64, description="An environment id.")
    gpu: GpuRequest | None = Field(None, description="Leave out for a CPU-only server.")
    cpu: Annotated[float | None, NotBool] = Field(None, gt=0, le=1024, description="CPU cores, e.g. 2 or 0.5.")
    memory: Annotated[str | int | None, NotBool] = Field(
        None, description="Memory as a Kubernetes quantity, e.g. 16Gi."
    )
    home: Annotated[str | int | None, NotBool] = Field(
        None, description="Size of your persistent home volume as a Kubernetes quantity, e.g. 20Gi; "
        "it only grows (hubs whose catalog offers it).")
    scratch: Annotated[str | int | None, NotBool] = Field(
        None, description="Size of this server's scratch disk at /scratch, e.g. 50Gi; gone when the server "
        "stops (hubs whose catalog offers it).")
    datasets: list[str] = Field(default_factory=list, max_length=50)
    packages: list[str] = Field(
        default_factory=list, max_length=100, description="pip requirement specifiers (PEP 508)."
    )
    wait: StrictBool = Field(
        False,
        description="Wait in line when the chosen GPUs are not free now (hubs with queueing "
        "enabled), up to the catalog's queueing.max_wait.",
    )

    @classmethod
    def parse(cls, data: Any) -> ServerRequest:
        """The request in ``data``, or RequestError naming the first bad field."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RequestError("options", "The options must be a mapping of field names to values.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _sentence(exc, data) from None


def json_schema() -> dict[str, Any]:
    """The request schema as JSON Schema (draft 2020-12), for API users."""
    schema = ServerRequest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


_READABLE = {
    "environment": "Environment",
    "gpu": "GPU",
    "gpu.type": "GPU type",
    "gpu.count": "GPU count",
    "cpu": "CPU cores",
    "memory": "Memory",
    "home": "Home size",
    "scratch": "Scratch size",
    "datasets": "Datasets",
    "packages": "Extra packages",
    "wait": "Wait in line",
}


def _sentence(exc: ValidationError, data: dict[str, Any]) -> RequestError:
    errors = exc.errors(include_url=False)
    # an unknown field is named first, in a stable order, whatever else is wrong
    unknown = sorted((e for e in errors if e["type"] == "extra_forbidden"), key=lambda e: str(e["loc"]))
    error = (unknown or errors)[0]
    loc = [str(p) for p in input_path(error["loc"], data) if not isinstance(p, int)]
    field = ".".join(loc) or "options"
    name = _READABLE.get(field, field)
    kind = error["type"]
    if kind == "extra_forbidden":
        if len(error["loc"]) == 1:  # a top-level key, which YAML may also spell as a number
            field = str(error["loc"][0])
            return RequestError(field, f"Unknown field '{clip(field)}'; the fields you can set are: "
                                + ", ".join(FIELDS) + ".")
        return RequestError(field, f"Unknown field '{clip(field)}'; allowed here: type, count.")
    if kind == "missing":
        return RequestError(field, f"{name} is required.")
    if field == "gpu" and kind in ("model_type", "dict_type"):
        return RequestError(field, "GPU must be a mapping such as {type: t4, count: 1}.")
    if field == "gpu.count":
        return RequestError(field, "GPU count must be a whole number from 1 to 64.")
    if field == "cpu":
        return RequestError(field, "CPU cores must be a number greater than 0, such as 2 or 0.5.")
    if field == "memory":
        return RequestError(field, "Memory must be a quantity such as 16Gi or 512Mi.")
    if field in ("datasets", "packages"):
        if kind == "too_long":
            return RequestError(field, f"{name} has too many entries.")
        return RequestError(field, f"{name} must be a list of strings.")
    if field == "wait":
        return RequestError(field, "Wait in line must be true or false.")
    if kind == "string_too_long":
        return RequestError(field, f"{name} is too long.")
    if kind == "string_unicode":
        return RequestError(field, f"{name} must be valid Unicode text.")
    return RequestError(field, f"{name} must be a string.")


# -- uploaded configuration files -----------------------------------------------------

FILE_LIMITS = Limits(max_depth=MAX_DEPTH, max_nodes=MAX_NODES, max_scalar_chars=MAX_SCALAR_CHARS)


def load_options_file(data: bytes, filename: str = "") -> dict[str, Any]:
    """The options in an uploaded YAML or JSON file, or RequestError saying why not.

    Anchors and aliases are refused outright: alias bombs ("billion laughs") would only
    cost memory once the loaded object is walked, and a request never needs them.
    """
    field = "Configuration file"
    if len(data) > MAX_FILE_BYTES:
        raise RequestError(
            "file", f"{field} is larger than {MAX_FILE_BYTES // 1024} KiB; keep it to the fields."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("file", f"{field} must be UTF-8 text (YAML or JSON).") from None
    if "\x00" in text:
        raise RequestError("file", f"{field} must be UTF-8 text (YAML or JSON).")
    try:
        if filename.lower().endswith(".json") or text.lstrip().startswith("{"):
            loaded = load_json(text, FILE_LIMITS)
        else:
            loaded = load_yaml(text, FILE_LIMITS)
    except SyntaxProblem as exc:
        line = f" (line {exc.line})" if exc.line else ""
        raise RequestError("file", f"{field} is not valid YAML or JSON{line}.") from None
    except LoadProblem as exc:
        raise RequestError("file", f"{field} was refused: {exc}.") from None
    if loaded is None:
        raise RequestError("file", f"{field} is empty.")
    if not isinstance(loaded, dict):
        raise RequestError(
            "file", f"{field} must be a mapping with the fields: " + ", ".join(FIELDS) + "."
        )
    return loaded
