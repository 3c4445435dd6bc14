"""YAML in and out, keeping the line of every key so errors can point at it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from automl.errors import ConfigError

__all__ = ["load_yaml", "dump_yaml", "write_atomic", "Lines"]

Lines = dict[tuple[str, ...], int]


class _Loader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a float (YAML 1.1 would read a string)."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that quotes a string such as ``"1e3"``, which ``_Loader`` reads as a float."""


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X)
for _resolving in (_Loader, _Dumper):
    _resolving.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(path: str | Path) -> tuple[Any, Lines]:
    """Read a YAML file into plain Python values and a map from key path to line number."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=name,
                          line=raw[:exc.start].count(b"\n") + 1) from None
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character, checked before parsing
        raise ConfigError(f"invalid YAML: {exc.reason} (character #x{exc.character:04x})",
                          file=name, line=text[:exc.position].count("\n") + 1) from None
    try:
        node = loader.get_single_node()
        lines: Lines = {}
        data = _build(loader, node, (), lines, name) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        # An unclosed bracket or quote is reported where parsing gave up; where it opens is
        # clearer (and inside the file).
        context = exc.context or ""
        unclosed = exc.context_mark is not None and ("flow" in context or "quoted" in context)
        mark = exc.context_mark if unclosed else (exc.problem_mark or exc.context_mark)
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", file=name,
                          line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=name) from None
    finally:
        loader.dispose()
    return data, lines


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in
               ("map", "seq", "str", "int", "float", "bool", "null")}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str, ...], lines: Lines,
           name: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if node.tag == _TIMESTAMP:  # a date is read as the text written (no datetime objects)
        return node.value
    if node.tag not in _PLAIN_TAGS:  # !!python/... and custom tags never construct objects
        raise ConfigError(f"unsupported YAML tag {node.tag}", file=name,
                          key=".".join(path) or None, line=node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _build(loader, key_node, path, {}, name)
            if not isinstance(key, str):
                key = str(key)
            if key in result:
                raise ConfigError("duplicate key", file=name, key=".".join((*path, key)),
                                  line=key_node.start_mark.line + 1)
            result[key] = _build(loader, value_node, (*path, key), lines, name)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, str(i)), lines, name)
                for i, item in enumerate(node.value)]
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError:  # Python parses no integer of over 4300 digits
        shown = node.value if len(node.value) <= 24 else node.value[:24] + "..."
        problem = f"cannot read {shown} as a number"
    else:  # no setting needs more, and printing it in an error could fail like the above
        if not (isinstance(value, int) and abs(value) >= 2**64):
            return value
        problem = "integer too large (more than 64 bits)"
    raise ConfigError(problem, file=name, key=".".join(path) or None,
                      line=node.start_mark.line + 1)


def dump_yaml(data: Any) -> str:
    """YAML text with keys in insertion order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` so a reader never sees a half-written file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
