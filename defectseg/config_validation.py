"""The whole config checked before any work: unknown keys, wrong types and impossible values, each named by its key.

Hydra already refuses ``key=value`` for a key that does not exist, but not ``+key=value``,
nor a misspelt key in an experiment or ``conf/local`` file; and plain sections
(``optim``, ``task``, ``freeze``...) would silently ignore one. Sections with a
``_target_`` are checked against the signature of what they build (a DataModule, the
Trainer, the model), so a new constructor argument needs no change here; the plain
sections are described in ``SCHEMAS`` below.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from defectseg.utils.errors import ConfigError

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Key:
    """One plain setting: the types it may take and a check of its value (a problem description or None)."""

    types: tuple[type, ...]
    check: Check | None = None


class Target:
    """A node with ``_target_``: its keys are the arguments of what it builds."""


class Free:
    """Any keys (e.g. ``paths``, ``hydra``)."""


NONE = type(None)


def at_least(low: float) -> Check:
    return lambda v: None if v is None or v >= low else f"must be at least {low}, got {v}"


def positive(v: Any) -> str | None:
    return None if v is None or (v > 0 and math.isfinite(v)) else f"must be a positive number, got {v}"


def between(low: float, high: float, strict: bool = False) -> Check:
    def check(v: Any) -> str | None:
        inside = low < v < high if strict else low <= v <= high
        return (
            None
            if v is None or inside
            else f"must lie {'strictly ' if strict else ''}between {low} and {high}, got {v}"
        )

    return check


def raises(build: Callable[[Any], Any]) -> Check:
    """Use the code's own check (a constructor that raises ValueError) as the config check: one place for each rule."""

    def check(v: Any) -> str | None:
        try:
            build(v)
        except (ValueError, TypeError) as error:
            return str(error)
        return None

    return check


def _pooling(v: Any) -> Any:
    from defectseg.models.classifier import GlobalPool

    return GlobalPool(v)


def _pretrain_task(v: Any) -> None:
    from defectseg.training.pretraining import TASKS

    if v not in TASKS:
        raise ValueError(f"must be one of {', '.join(TASKS)}, got {v!r}")


def _freeze_mode(v: Any) -> Any:
    from defectseg.models.freeze import FreezePolicy

    return FreezePolicy(v, 1)


def _share(v: Any) -> str | None:
    return None if v is None or 0 <= v <= 1 else f"is a share of the run between 0 and 1, got {v}"


COMMON: dict[str, Any] = {
    "stage": Key((str,)),
    "experiment_name": Key((str, NONE)),
    "seed": Key((int,), between(0, 2**32 - 1)),
    "channels_last": Key((bool,)),
    "ckpt_path": Key((str, NONE)),
    "resume": Key((bool,)),
    "compile": Key((bool,)),
    "optim": {"lr": Key((float,), positive), "weight_decay": Key((float,), at_least(0))},
    "paths": Free,
    "hydra": Free,
    "model": Target,
    "dataset": Target,
    "trainer": Target,
    "logger": Target,
    "callbacks": {"*": Target},
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "pretrain": {
        **COMMON,
        "reuse": Key((bool,)),
        "train_steps": Key((int, NONE), at_least(1)),
        "transfer": Free,  # stage 2's recipe, present when experiment=paper picks it; stage 1 ignores it
        "head": {
            "pooling": Key((str,), raises(_pooling)),
            "hidden": Key(
                (list,),
                lambda v: (
                    None
                    if all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
                    else f"must be a list of positive layer widths, got {v}"
                ),
            ),
            "dropout": Key((float,), lambda v: None if 0 <= v < 1 else f"must lie in [0, 1), got {v}"),
        },
        "pretrain_task": {  # conf/pretrain_task/*.yaml; each objective reads its own keys
            "name": Key((str,), raises(_pretrain_task)),
            "save_decoder": Key((bool,)),
            "bce_weight": Key((float,), at_least(0)),
            "dice_weight": Key((float,), at_least(0)),
            "threshold": Key((float,), between(0, 1, strict=True)),
            "empty_score": Key((float,), between(0, 1)),
            "preview_images": Key((int,), at_least(0)),
            "mask_ratio": Key((float,), between(0, 1, strict=True)),
            "patch_size": Key((int,), at_least(1)),
            "normalize_target": Key((bool,)),
        },
    },
    "finetune": {
        **COMMON,
        "pretrained_encoder": Key((str, NONE)),
        "init_decoder": Key((bool,)),
        "calibrate_features": Key((bool,)),
        "calibration_batches": Key((int,), at_least(1)),
        "transfer": {  # conf/transfer/*.yaml: the fine-tuning recipe (defectseg/models/freeze.py, TransferRecipe)
            "name": Key((str,)),
            "freeze": Key((str,), raises(_freeze_mode)),
            "freeze_depth": Key((int, NONE), at_least(1)),
            "unfreeze_at": Key((float, NONE), _share),
            "unfreeze_every": Key((float, NONE), _share),
            "encoder_lr_scale": Key((float,), positive),
            "level_lr_decay": Key((float,), positive),
            "warmup": Key((float,), _share),
        },
        "task": {
            "bce_weight": Key((float,), at_least(0)),
            "dice_weight": Key((float,), at_least(0)),
            "threshold": Key((float,), between(0, 1, strict=True)),
            "empty_score": Key((float,), between(0, 1)),
            "preview_images": Key((int,), at_least(0)),
            "class_weights": Key(
                (list, str, NONE),
                lambda v: (
                    None
                    if v is None
                    or v == "frequency"
                    or (isinstance(v, list) and all(isinstance(w, (int, float)) for w in v))
                    else f"must be null, frequency or a list of numbers (one per class), got {v!r}"
                ),
            ),
        },
    },
    "check_data": {"stage": Key((str,)), "paths": Free, "hydra": Free, "dataset": Target},
}
# Plain sections, to point a misplaced key to where it belongs (`lr` -> `optim.lr`).
COMMON_SECTIONS = {
    name: spec
    for schema in SCHEMAS.values()
    for name, spec in schema.items()
    if isinstance(spec, dict) and "*" not in spec
}
# Arguments the code passes itself (so the config's value is not what the target receives).
PASSED_BY_CODE = {"trainer": {"callbacks", "logger", "default_root_dir", "plugins", "precision"}}


def validate_config(cfg: DictConfig, stage: str) -> None:
    """Raise one UserError listing every problem, or return quietly."""
    schema = SCHEMAS[stage]
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:  # an interpolation naming no key, a resolver failing
        raise ConfigError(f"config: {error}".splitlines()[0]) from None
    problems: list[str] = []
    _check_section(values, schema, "", problems)
    _check_across(values, problems)
    if problems:
        listed = "\n  ".join(problems)
        raise ConfigError(f"config: {len(problems)} problem(s), nothing was run:\n  {listed}")


def _check_section(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        spec = schema.get(key, schema.get("*"))
        if spec is None:
            problems.append(_unknown(name, key, [k for k in schema if k != "*"]))
        elif value == "???":
            problems.append(f"{name}: has no value; set it, e.g. {name}=...")
        elif spec is Free:
            continue
        elif spec is Target:
            _check_target(value, name, problems)
        elif isinstance(spec, Mapping):
            if not isinstance(value, Mapping):
                problems.append(
                    f"{name}: must be a section of keys ({', '.join(k for k in spec if k != '*')}), got {value!r}"
                )
            else:
                _check_section(value, spec, f"{name}.", problems)
        else:
            _check_key(value, spec, name, problems)


def _check_key(value: Any, spec: Key, name: str, problems: list[str]) -> None:
    if not any(_is_type(value, t) for t in spec.types):
        problems.append(
            f"{name}: expected {' or '.join(_type_name(t) for t in spec.types)}, got {value!r} "
            f"({_type_name(type(value))}){_yaml_hint(value)}"
        )
    elif spec.check is not None and (problem := spec.check(value)):
        problems.append(problem if problem.startswith(name) else f"{name}: {problem}")


def _check_target(node: Any, name: str, problems: list[str]) -> None:
    if node is None or node is False or (isinstance(node, Mapping) and not node):
        if name in ("model", "dataset", "trainer"):
            problems.append(f"{name}: is required")
        return
    if not isinstance(node, Mapping) or "_target_" not in node:
        problems.append(f"{name}: must name what it builds with _target_, got {node!r}")
        return
    try:
        target = _locate(str(node["_target_"]))
    except (ImportError, AttributeError) as error:
        problems.append(f"{name}._target_: cannot import {node['_target_']!r} ({type(error).__name__}: {error})")
        return
    parameters, required, open_ended = _accepted_parameters(target)
    passed_by_code = PASSED_BY_CODE.get(name, set())
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in parameters:
            if not open_ended:
                problems.append(_unknown(f"{name}.{key}", key, list(parameters)))
            continue
        if value == "???":
            problems.append(f"{name}.{key}: has no value; set it, e.g. {name}.{key}=...")
            continue
        if key == "precision" and value == "auto":
            continue
        verdict = _conforms(value, parameters[key])
        if verdict is False:
            problems.append(
                f"{name}.{key}: expected {_hint_name(parameters[key])}, got {value!r} "
                f"({_type_name(type(value))}){_yaml_hint(value)}"
            )
    missing = [key for key in required if key not in node and key not in passed_by_code]
    problems.extend(f"{name}.{key}: is required by {node['_target_']}" for key in missing)


def _locate(dotted: str) -> Any:
    """Import ``package.module.attribute`` as Hydra does, attributes first (hydra's own locator logs every failure)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:index]))
    return obj


def _accepted_parameters(target: Any) -> tuple[dict[str, Any], list[str], bool]:
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


def _conforms(value: Any, hint: Any) -> bool | None:
    """True / False where the hint is simple enough to tell, None where it is not (no check then)."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_conforms(value, arg) for arg in typing.get_args(hint)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is NONE:
        return value is None
    if hint in (bool, int, float, str):
        return _is_type(value, hint)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1:
            verdicts = [_conforms(item, args[0]) for item in value]
            return False if False in verdicts else (None if None in verdicts else True)
        return True
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return None


def _is_type(value: Any, expected: type) -> bool:
    if expected is NONE:
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


def _check_across(values: Mapping[str, Any], problems: list[str]) -> None:
    """Rules that tie keys together (run once every key is known to be well typed)."""
    dataset, model = _section(values, "dataset"), _section(values, "model")
    if isinstance(dataset.get("split_fractions"), (list, tuple)):
        from defectseg.data.splits import check_fractions

        if problem := raises(check_fractions)(dataset["split_fractions"]):
            problems.append(problem)
    multiple, levels = _model_geometry(model)
    size = dataset.get("image_size")
    if multiple and isinstance(size, int) and not isinstance(size, bool) and size % multiple:
        below, above = size - size % multiple, size - size % multiple + multiple
        problems.append(
            f"dataset.image_size: {size} is not divisible by {multiple}, which {model.get('_target_')} needs (its "
            f"{levels} levels halve the image {levels - 1} times); use {below or above} or {above}"
        )
    transfer = _section(values, "transfer")
    depth = transfer.get("freeze_depth")
    if transfer.get("freeze") == "partial" and levels and isinstance(depth, int) and depth > levels:
        problems.append(f"transfer.freeze_depth: {depth} exceeds the encoder's {levels} levels")
    if values.get("stage") == "finetune" and transfer and not any(p.startswith("transfer.") for p in problems):
        from defectseg.models.freeze import TransferRecipe

        if problem := raises(TransferRecipe.from_config)(transfer):
            problems.append(problem)
    pretrain_task = _section(values, "pretrain_task")
    patch = pretrain_task.get("patch_size")
    if (
        pretrain_task.get("name") == "self_supervised"
        and isinstance(patch, int)
        and isinstance(size, int)
        and patch > 0
        and size % patch
    ):
        problems.append(
            f"pretrain_task.patch_size: {patch} does not divide dataset.image_size={size} into whole patches"
        )
    task = _section(values, "task")
    if task and task.get("bce_weight", 1) == 0 and task.get("dice_weight", 1) == 0:
        problems.append("task.bce_weight, task.dice_weight: both are 0, so there is nothing to learn from")
    if values.get("reuse") and values.get("ckpt_path") not in (None, "last"):
        problems.append(
            "reuse, ckpt_path: reuse=true keeps (or continues) the run in this directory, "
            f"ckpt_path={values['ckpt_path']} starts from another checkpoint; set one of them"
        )
    if values.get("resume") and values.get("ckpt_path") not in (None, "last"):
        problems.append(
            f"resume, ckpt_path: resume=true continues this run directory's last.ckpt, ckpt_path={values['ckpt_path']} "
            "another checkpoint; set one of them"
        )


def _section(values: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = values.get(key)
    return section if isinstance(section, Mapping) else {}


def _model_geometry(model: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input side multiple, encoder levels) for the models whose geometry the config determines."""
    if model.get("_target_") in ("defectseg.models.unet_paper", "defectseg.models.segmentation.unet_paper"):
        from defectseg.models.segmentation import unet_paper
        from defectseg.models.unet_paper import input_multiple

        channels = model.get("channels") or inspect.signature(unet_paper).parameters["channels"].default
        if isinstance(channels, (list, tuple)) and channels:
            return input_multiple(channels), len(channels)
    return None, None


def _unknown(name: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    elsewhere = [f"{section}.{key}" for section, spec in COMMON_SECTIONS.items() if key in spec]
    if close:
        hint = f"did you mean {parent}{close[0]}?"
    elif elsewhere:
        hint = f"did you mean {' or '.join(elsewhere)}?"
    else:
        hint = f"known here: {', '.join(sorted(known)) or 'none'}"
    return f"{name}: unknown key ({hint})"


def _type_name(t: Any) -> str:
    return {
        NONE: "null",
        float: "a number",
        int: "an integer",
        bool: "true/false",
        str: "a string",
        list: "a list",
        dict: "a section",
    }.get(t, getattr(t, "__name__", str(t)))


def _hint_name(hint: Any) -> str:
    """``Optional[int]`` -> 'an integer or null'; literals listed as their values."""
    parts: list[str] = []
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,):
        if typing.get_origin(arg) is typing.Literal:
            parts.append("one of " + ", ".join(repr(v) for v in typing.get_args(arg)))
        else:
            parts.append(_type_name(arg))
    return " or ".join(parts)


def _yaml_hint(value: Any) -> str:
    try:
        float(value)
    except (TypeError, ValueError):
        return ""
    return "; YAML reads 1e-4 as a string, write 1.0e-4" if isinstance(value, str) else ""
