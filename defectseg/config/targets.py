"""Sections with a ``_target_`` (model, dataset, trainer, logger, callbacks) checked against what they build.

Their keys are the arguments of the class or function named by ``_target_``, read from its signature, so a new
constructor argument needs no change here; values are checked against the argument's type hint where it is simple
enough to tell. An argument typed with a schema dataclass (``augment: Augment``) is checked against that dataclass.
Nothing is built here: a constructor's own checks of its values (``dataset.batch_size >= 1``) run when the stage
builds it, before any slow work.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

NONE = type(None)
# Arguments the code passes itself (so the config's value is not what the target receives).
PASSED_BY_CODE = {"trainer": {"callbacks", "logger", "default_root_dir", "plugins", "precision"}}
REQUIRED = ("model", "dataset", "trainer")

# check_schema(values, dataclass, prefix, problems): how a dataclass-typed argument is checked (validate.py's walker).
SchemaCheck = Callable[[Any, type, str, list[str]], None]


def check_target(node: Any, name: str, problems: list[str], check_schema: SchemaCheck) -> None:
    if node is None or node is False or (isinstance(node, Mapping) and not node):
        if name in REQUIRED:
            problems.append(f"{name}: is required")
        return
    if not isinstance(node, Mapping) or "_target_" not in node:
        problems.append(f"{name}: must name what it builds with _target_, got {node!r}")
        return
    try:
        target = locate(str(node["_target_"]))
    except (ImportError, AttributeError) as error:
        problems.append(f"{name}._target_: cannot import {node['_target_']!r} ({type(error).__name__}: {error})")
        return
    parameters, required, open_ended = accepted_parameters(target)
    passed_by_code = PASSED_BY_CODE.get(name, set())
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in parameters:
            if not open_ended:
                from defectseg.config.validate import unknown_key

                problems.append(unknown_key(f"{name}.{key}", key, list(parameters)))
            continue
        if value == "???":
            problems.append(f"{name}.{key}: has no value; set it, e.g. {name}.{key}=...")
            continue
        if key == "precision" and value == "auto":
            continue
        schema = schema_in(parameters[key])
        if schema is not None and isinstance(value, Mapping):
            check_schema(value, schema, f"{name}.{key}.", problems)
            continue
        if isinstance(value, Mapping) and "_target_" in value:
            check_target(value, f"{name}.{key}", problems, check_schema)
            continue
        if conforms(value, parameters[key]) is False:
            problems.append(
                f"{name}.{key}: expected {hint_name(parameters[key])}, got {value!r} ({type_name(type(value))})"
                f"{yaml_hint(value)}"
            )
    missing = [key for key in required if key not in node and key not in passed_by_code]
    problems.extend(f"{name}.{key}: is required by {node['_target_']}" for key in missing)


def locate(dotted: str) -> Any:
    """Import ``package.module.attribute`` as Hydra does, attributes first (hydra's own locator logs every failure)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:index]))
    return obj


def accepted_parameters(target: Any) -> tuple[dict[str, Any], list[str], bool]:
    """(argument name -> type hint, the target's own required arguments, whether any name goes).

    A class's ``**kwargs`` are followed up the MRO (a DataModule passing them to its base);
    where they end at ``object``, they went elsewhere (a logger's writer) and any name goes.
    """
    functions = (
        [target]
        if not inspect.isclass(target)
        else [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__]
    )
    parameters: dict[str, Any] = {}
    required: list[str] = []
    for depth, function in enumerate(functions):
        if function is object.__init__:
            return parameters, required, True
        try:
            hints = typing.get_type_hints(function)
        except Exception:
            hints = {}
        open_ended = False
        for index, parameter in enumerate(inspect.signature(function).parameters.values()):
            if index == 0 and inspect.isclass(target):
                continue  # self
            if parameter.kind is parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                parameters.setdefault(parameter.name, hints.get(parameter.name, Any))
                if depth == 0 and parameter.default is parameter.empty:
                    required.append(parameter.name)
        if not open_ended:
            return parameters, required, False
    return parameters, required, True


def schema_in(hint: Any) -> type | None:
    """The dataclass an argument's hint names (``Augment | Mapping | None`` -> Augment), if any."""
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def conforms(value: Any, hint: Any) -> bool | None:
    """True / False where the hint is simple enough to tell, None where it is not (no check then)."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [conforms(value, arg) for arg in typing.get_args(hint)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is NONE:
        return value is None
    if hint in (bool, int, float, str):
        return is_type(value, hint)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1:
            verdicts = [conforms(item, args[0]) for item in value]
            return False if False in verdicts else (None if None in verdicts else True)
        return True
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return None


def is_type(value: Any, expected: type) -> bool:
    if expected is NONE:
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


def type_name(t: Any) -> str:
    return {
        NONE: "null",
        float: "a number",
        int: "an integer",
        bool: "true/false",
        str: "a string",
        list: "a list",
        dict: "a section",
    }.get(t, getattr(t, "__name__", str(t)))


def hint_name(hint: Any) -> str:
    """``Optional[int]`` -> 'an integer or null'; literals listed as their values."""
    parts: list[str] = []
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,):
        if typing.get_origin(arg) is typing.Literal:
            parts.append("one of " + ", ".join(repr(v) for v in typing.get_args(arg)))
        elif typing.get_origin(arg) is not None:
            parts.append(type_name(typing.get_origin(arg)))
        else:
            parts.append(type_name(arg))
    return " or ".join(parts)


def yaml_hint(value: Any) -> str:
    try:
        float(value)
    except (TypeError, ValueError):
        return ""
    return "; YAML reads 1e-4 as a string, write 1.0e-4" if isinstance(value, str) else ""
