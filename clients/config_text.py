"""Read and edit Triton model configs (``config.pbtxt``) as text, keeping their comments and layout.

The one config editor of the platform. ``training.registry`` pins the served version with it, and
the Helm chart's pod-start script (``charts/prodsegmenter/files/prepare_model.py``, which ships this
file beside it) pins versions, switches a config to TensorRT plans and reads the shapes ``trtexec``
builds for. That script runs in the NGC Triton image, which has Python 3.10 but no protobuf: this
module is standard library only and avoids syntax newer than 3.10.

Protobuf text format, as far as Triton configs use it: ``name: value``, ``name { fields }`` (or
``name: { ... }`` / ``< ... >``), lists ``name: [ v, v ]``, repeated fields, ``#`` comments, strings
in single or double quotes, optional ``,`` / ``;`` between fields. :func:`parse` reads that into
:class:`Field` nodes that remember where they are in the text, so an edit replaces exactly one
field's characters and nothing else. The tests parse every rewritten config with Triton's own
protobuf schema (``tritonclient.grpc.model_config_pb2``) to prove it says what was asked.

TensorRT plans: one per GPU compute capability, ``model.sm<major><minor>.plan`` next to
``model.onnx`` in the version folder (:func:`plan_filename`); :func:`use_tensorrt_plans` turns an
ONNX Runtime config into a TensorRT one listing them in ``cc_model_filenames``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

# model.sm86.plan -> compute capability 8.6, model.sm100.plan -> 10.0 (minor versions are one digit)
PLAN_PATTERN = re.compile(r"^model\.sm(\d+)(\d)\.plan$")
TENSORRT_COMMENT = "# TensorRT plans per GPU compute capability (clients/config_text.py).\n"

_OPEN_TO_CLOSE = {"{": "}", "<": ">", "[": "]"}
_PUNCTUATION = set("{}<>[]:,;")
_WORD = re.compile(r"[^\s{}<>\[\]:,;#\"']+")


class ConfigTextError(ValueError):
    """Text that is not a Triton config this module can edit; the message says where and why."""


Value = Union[str, "Message", list["Value"]]


@dataclass(frozen=True)
class Field:
    """One ``name: value`` of the text: ``start``/``end`` span the name through the value."""

    name: str
    value: Value
    start: int
    end: int


@dataclass(frozen=True)
class Message:
    """A ``{ ... }`` block (or the whole file): its fields in order, repeated names kept."""

    fields: tuple[Field, ...]
    start: int  # just inside the opening brace (0 for the file)
    end: int  # at the closing brace (len(text) for the file)

    def all(self, name: str) -> list[Value]:
        """Every value of ``name``; list syntax (``name: [a, b]``) and repetition both flatten."""
        values: list[Value] = []
        for field in self.fields:
            if field.name == name:
                values.extend(field.value if isinstance(field.value, list) else [field.value])
        return values

    def get(self, name: str, default: Value | None = None) -> Value | None:
        values = self.all(name)
        return values[0] if values else default

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


# ------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string" or one punctuation character
    text: str
    start: int
    end: int


def _tokens(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
        elif char in _PUNCTUATION:
            tokens.append(_Token(char, char, i, i + 1))
            i += 1
        elif char in "\"'":
            end = i + 1
            while end < len(text) and text[end] != char:
                if text[end] == "\n":
                    break
                end += 2 if text[end] == "\\" else 1
            if end >= len(text) or text[end] != char:
                raise ConfigTextError(f"line {_line(text, i)}: unterminated string")
            tokens.append(_Token("string", _unquote(text[i + 1 : end]), i, end + 1))
            i = end + 1
        else:
            word = _WORD.match(text, i)
            tokens.append(_Token("word", word.group(0), i, word.end()))
            i = word.end()
    return tokens


def _unquote(body: str) -> str:
    simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: simple.get(m.group(1), m.group(0)), body)


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def fail(self, message: str) -> ConfigTextError:
        at = self.tokens[self.i].start if self.i < len(self.tokens) else len(self.text)
        return ConfigTextError(f"line {_line(self.text, at)}: {message}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fields(self, closing: str | None) -> tuple[Field, ...]:
        fields = []
        while True:
            token = self.peek()
            if token is None:
                if closing is not None:
                    raise self.fail(f"missing '{closing}'")
                return tuple(fields)
            if token.kind == closing:
                return tuple(fields)
            if token.kind in (",", ";"):
                self.i += 1
                continue
            if token.kind != "word":
                raise self.fail(f"expected a field name, found {token.text!r}")
            self.i += 1
            after = self.peek()
            if after is not None and after.kind == ":":
                self.i += 1
            value, end = self.value()
            fields.append(Field(token.text, value, token.start, end))

    def value(self) -> tuple[Value, int]:
        token = self.peek()
        if token is None:
            raise self.fail("expected a value, found the end of the text")
        if token.kind in ("{", "<"):
            self.i += 1
            closing = _OPEN_TO_CLOSE[token.kind]
            fields = self.fields(closing)
            end_token = self.tokens[self.i]
            self.i += 1
            return Message(fields, token.end, end_token.start), end_token.end
        if token.kind == "[":
            self.i += 1
            items: list[Value] = []
            while True:
                nxt = self.peek()
                if nxt is None:
                    raise self.fail("missing ']'")
                if nxt.kind == "]":
                    self.i += 1
                    return items, nxt.end
                if nxt.kind == ",":
                    self.i += 1
                    continue
                item, _ = self.value()
                items.append(item)
        if token.kind == "string":
            parts, end = [], token.end
            while self.peek() is not None and self.peek().kind == "string":  # "a" "b" concatenates
                parts.append(self.peek().text)
                end = self.peek().end
                self.i += 1
            return "".join(parts), end
        if token.kind == "word":
            self.i += 1
            return token.text, token.end
        raise self.fail(f"expected a value, found {token.text!r}")


def parse(text: str) -> Message:
    """The config's fields, with their positions; raises :class:`ConfigTextError` naming the line."""
    parser = _Parser(text)
    fields = parser.fields(None)
    return Message(fields, 0, len(text))


def _field_at(message: Message, path: str) -> Field | None:
    """``"optimization.execution_accelerators"``: the first field along a dotted path of messages."""
    names = path.split(".")
    for depth, name in enumerate(names):
        field = message.field(name)
        if field is None or depth == len(names) - 1:
            return field
        if not isinstance(field.value, Message):
            return None
        message = field.value
    return None


# ------------------------------------------------------------------------------------------- editing


def replace_field(text: str, path: str, replacement: str) -> str:
    """Replace the first field at ``path`` (its name through its value) with ``replacement``, e.g.
    ``'backend: "tensorrt"'``; a top-level field that is absent is appended on its own line."""
    field = _field_at(parse(text), path)
    if field is None:
        if "." in path:
            raise ConfigTextError(f"no field {path} to replace")
        return text.rstrip("\n") + "\n" + replacement + "\n"
    return text[: field.start] + replacement + text[field.end :]


def remove_field(text: str, path: str) -> str:
    """Remove every field named by ``path`` (the last name repeated under one parent), and the line
    it stood on when nothing else is left there. Absent: the text is returned unchanged."""
    parent_path, _, name = path.rpartition(".")
    root = parse(text)
    parent = root
    if parent_path:
        holder = _field_at(root, parent_path)
        if holder is None or not isinstance(holder.value, Message):
            return text
        parent = holder.value
    for field in sorted((f for f in parent.fields if f.name == name), key=lambda f: -f.start):
        text = _cut(text, field.start, field.end)
    return text


def _cut(text: str, start: int, end: int) -> str:
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if not text[line_start:start].strip() and not text[end:line_end].strip(" \t,;"):
        return text[:line_start] + text[min(line_end + 1, len(text)) :]
    return text[:start] + text[end:]


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_string(text: str, name: str, value: str) -> str:
    """Set a top-level string field (``backend: "tensorrt"``)."""
    return replace_field(text, name, f"{name}: {_string(value)}")


def top_level(text: str, name: str) -> Value | None:
    """The first value of a top-level field (strings unquoted), or None."""
    return parse(text).get(name)


def pin_version(text: str, version: int, comment: str = "") -> str:
    """``version_policy`` set to serve exactly ``version``; only that field's text changes. A config
    without the field gets it appended, after ``comment`` (a ``# ...`` line) when given."""
    return serve_versions(text, [version], comment)


def serve_versions(text: str, versions, comment: str = "") -> str:
    """``version_policy`` set to serve exactly ``versions`` (e.g. both sides of an A/B test), in
    ascending order; only that field's text changes. A config without the field gets it appended,
    after ``comment`` (a ``# ...`` line) when given."""
    versions = list(versions)
    for version in versions:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigTextError(f"a model version is an integer >= 1, got {version!r}")
    if not versions:
        raise ConfigTextError("serve at least one version")
    if len(set(versions)) != len(versions):
        raise ConfigTextError(f"versions must be distinct, got {versions}")
    listed = ", ".join(str(v) for v in sorted(versions))
    policy = f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"
    if parse(text).field("version_policy") is None and comment:
        policy = comment.rstrip("\n") + "\n" + policy
    return replace_field(text, "version_policy", policy)


# ------------------------------------------------------------------------------------------ TensorRT


def plan_filename(compute_capability: str) -> str:
    """``"9.0"`` -> ``model.sm90.plan``: the plan of that GPU architecture, next to model.onnx."""
    match = re.fullmatch(r"(\d+)\.(\d)", compute_capability.strip())
    if not match:
        raise ConfigTextError(f"a compute capability looks like 8.6, got {compute_capability!r}")
    return f"model.sm{match.group(1)}{match.group(2)}.plan"


def plan_capability(filename: str) -> str | None:
    """``model.sm86.plan`` -> ``"8.6"``; None for any other file name."""
    match = PLAN_PATTERN.match(filename)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def plans_by_capability(filenames) -> dict[str, str]:
    """Compute capability -> plan file name, for the plan files among ``filenames``."""
    plans = {}
    for name in sorted(filenames):
        capability = plan_capability(name)
        if capability:
            plans[capability] = name
    return plans


def use_tensorrt_plans(text: str, plans: Mapping[str, str], capability: str) -> str:
    """The config switched to Triton's TensorRT backend on the plan for ``capability``.

    Same inputs, outputs, batching, instances, parameters and version policy; ONNX Runtime's
    execution accelerators go (a plan is already an engine). ``cc_model_filenames`` lists every plan
    so a config copied to another GPU type still picks its own. Running it again on its own output
    gives the same text (a restarted init container rewrites nothing new).
    """
    if capability not in plans:
        raise ConfigTextError(f"no TensorRT plan for compute capability {capability} in {sorted(plans)}")
    config = parse(text)
    engine = (str(config.get("backend", "")), str(config.get("platform", "")))
    if engine[0] not in ("onnxruntime", "tensorrt", "") or engine[1] not in (
        "onnxruntime_onnx",
        "tensorrt_plan",
        "",
    ):
        raise ConfigTextError(
            f"only an ONNX Runtime config can switch to TensorRT plans; this one has backend {engine[0]!r}"
            f" platform {engine[1]!r}"
        )
    text = remove_field(text, "platform")
    text = set_string(text, "backend", "tensorrt")
    text = set_string(text, "default_model_filename", plans[capability])
    text = remove_field(text, "optimization.execution_accelerators")
    optimization = parse(text).field("optimization")
    if optimization is not None and isinstance(optimization.value, Message) and not optimization.value.fields:
        text = remove_field(text, "optimization")
    text = remove_field(text.replace(TENSORRT_COMMENT, ""), "cc_model_filenames")
    entries = ",\n".join(
        f"  {{ key: {_string(cc)} value: {_string(name)} }}" for cc, name in sorted(plans.items())
    )
    return text.rstrip("\n") + f"\n{TENSORRT_COMMENT}cc_model_filenames [\n{entries}\n]\n"


@dataclass(frozen=True)
class TensorRTProfile:
    """What a TensorRT build of this config needs: input shapes (without batch), batch range, FP16."""

    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    min_batch: int
    opt_batch: int
    max_batch: int
    fp16: bool

    def trtexec_flags(self) -> list[str]:
        """``--minShapes=images:1x384x640x3 --optShapes=... --maxShapes=... [--fp16]``."""
        flags = []
        for kind, batch in (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch)):
            shapes = ",".join(
                f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in self.inputs
            )
            flags.append(f"--{kind}Shapes={shapes}")
        return flags + (["--fp16"] if self.fp16 else [])


def tensorrt_profile(text: str, opt_batch: int | None = None) -> TensorRTProfile:
    """Shapes and precision to build a plan for, read from the config Triton will serve: batch 1 to
    ``max_batch_size``, optimised for ``opt_batch`` (default: the largest ``preferred_batch_size``,
    what dynamic batching aims for), FP16 when the config's TensorRT accelerator asks for it."""
    config = parse(text)
    max_batch = _integer(config.get("max_batch_size", "0"), "max_batch_size")
    if max_batch < 1:
        raise ConfigTextError(
            "max_batch_size must be >= 1 to build a TensorRT profile with a batch dimension"
        )
    inputs = []
    for entry in config.all("input"):
        if not isinstance(entry, Message) or not isinstance(entry.get("name"), str):
            raise ConfigTextError("every input needs a name")
        dims = tuple(_integer(d, f"input {entry.get('name')} dims") for d in entry.all("dims"))
        if not dims or min(dims) < 1:
            raise ConfigTextError(
                f"input {entry.get('name')}: a TensorRT plan needs fixed dims, got {list(dims)}"
            )
        inputs.append((str(entry.get("name")), dims))
    if not inputs:
        raise ConfigTextError("the config declares no input")
    batching = config.get("dynamic_batching")
    preferred = (
        [_integer(b, "preferred_batch_size") for b in batching.all("preferred_batch_size")]
        if isinstance(batching, Message)
        else []
    )
    opt = opt_batch or (max(preferred) if preferred else max_batch)
    if not 1 <= opt <= max_batch:
        raise ConfigTextError(f"opt batch {opt} is outside the profile's range 1..{max_batch}")
    return TensorRTProfile(tuple(inputs), 1, opt, max_batch, _wants_fp16(config))


def _wants_fp16(config: Message) -> bool:
    optimization = config.get("optimization")
    accelerators = optimization.get("execution_accelerators") if isinstance(optimization, Message) else None
    if not isinstance(accelerators, Message):
        return False
    for accelerator in accelerators.all("gpu_execution_accelerator"):
        if isinstance(accelerator, Message) and accelerator.get("name") == "tensorrt":
            for parameter in accelerator.all("parameters"):
                if isinstance(parameter, Message) and parameter.get("key") == "precision_mode":
                    return str(parameter.get("value", "")).upper() == "FP16"
    return False


def _integer(value: Value | None, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ConfigTextError(f"{what}: expected an integer, got {value!r}") from None
