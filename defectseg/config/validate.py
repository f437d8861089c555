"""The one validation path: every entry point checks its composed config here before any work.

Order: the schema of each plain section (unknown keys, types, missing values, each key's range; schemas.py), the
``_target_`` sections against what they build (targets.py), then the rules that tie keys together (rules.py).
Every problem is listed at once, each on its own line starting with its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from defectseg.config import rules, schemas, targets
from defectseg.utils.errors import ConfigError

SKIPPED = ("hydra",)  # Hydra's own section: Hydra checks it


def validate_config(cfg: DictConfig, stage: str) -> None:
    """Raise one ConfigError listing every problem, or return quietly."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:  # an interpolation naming no key, a resolver failing
        raise ConfigError(str(error).splitlines()[0]) from None
    problems: list[str] = []
    check_schema(values, schemas.STAGES[stage], "", problems)
    rules.check(values, problems)  # each rule skips keys of the wrong type (named above already)
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0])
        listed = "\n  ".join(problems)
        raise ConfigError(f"config: {len(problems)} problems, nothing was run:\n  {listed}")


def check_schema(values: Any, schema: type, prefix: str, problems: list[str]) -> None:
    """``values`` (a plain mapping) against the dataclass ``schema``; problems named ``prefix + key``."""
    if not isinstance(values, Mapping):
        problems.append(
            f"{prefix.rstrip('.')}: must be a section of keys ({', '.join(fields_of(schema))}), got {values!r}"
        )
        return
    fields = fields_of(schema)
    hints = typing.get_type_hints(schema)
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key in SKIPPED and not prefix:
            continue
        if key not in fields:
            problems.append(unknown_key(name, key, list(fields)))
            continue
        meta = fields[key].metadata
        if value == "???":
            problems.append(meta.get("missing") or f"{name}: has no value; set it, e.g. {name}=...")
        elif "builds" in meta:
            nodes = value.items() if meta["builds"] == schemas.BUILDS_MANY and isinstance(value, Mapping) else None
            if nodes is None:
                targets.check_target(value, name, problems, check_schema)
            else:
                for child, node in nodes:
                    if node is not None:
                        targets.check_target(node, f"{name}.{child}", problems, check_schema)
        elif "schema_by_name" in meta:
            chosen = meta["schema_by_name"].get(value.get("name") if isinstance(value, Mapping) else None)
            if chosen is None:
                problems.append(f"{name}.name: must be one of {', '.join(meta['schema_by_name'])}, got {value!r}")
            else:
                check_schema(value, chosen, f"{name}.", problems)
        elif dataclasses.is_dataclass(hints[key]):
            check_schema(value, hints[key], f"{name}.", problems)
        elif targets.conforms(value, hints[key]) is False:
            problems.append(
                f"{name}: expected {targets.hint_name(hints[key])}, got {value!r} ({targets.type_name(type(value))})"
                f"{targets.yaml_hint(value)}"
            )
        elif value is not None and (check := meta.get("check")) and (problem := check(value)):
            problems.append(problem if problem.startswith(name) else f"{name}: {problem}")
    for key, spec in fields.items():
        if (
            key not in values
            and spec.default in (dataclasses.MISSING, "???")
            and spec.default_factory is dataclasses.MISSING
        ):
            problems.append(f"{prefix}{key}: is required")


def fields_of(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def plain_sections() -> dict[str, set[str]]:
    """Every plain section's keys, to point a misplaced key where it belongs (``lr`` -> ``optim.lr``)."""
    sections: dict[str, set[str]] = {}
    for stage in schemas.STAGES.values():
        for section, hint in typing.get_type_hints(stage).items():
            if dataclasses.is_dataclass(hint):
                sections.setdefault(section, set()).update(fields_of(hint))
    return sections


def unknown_key(name: str, key: str, known: Sequence[str]) -> str:
    """``trainer.max_epoch: unknown key (did you mean trainer.max_epochs?)``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    elsewhere = sorted(f"{section}.{key}" for section, keys in plain_sections().items() if key in keys)
    if close:
        hint = f"did you mean {parent}{close[0]}?"
    elif elsewhere:
        hint = f"did you mean {' or '.join(elsewhere)}?"
    else:
        hint = f"known here: {', '.join(sorted(known)) or 'none'}"
    return f"{name}: unknown key ({hint})"
