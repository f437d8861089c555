"""``@entry_point(config_name)``: the ``@hydra.main`` of every command, with config mistakes in one line.

Hydra composes the config before our code runs and prints its own multi-line report of a mistake there (a typo on
the command line such as ``trainer.max_epoch=3``, an unknown option ``experiment=quik``, a misspelt key in an
experiment file). Hydra raises instead of printing when HYDRA_FULL_ERROR=1, so the wrapper sets it for the call and
turns a composition error into one line with "did you mean"; a user who set HYDRA_FULL_ERROR=1 gets Hydra's full
report and traceback as before. Errors of the stage itself go through ``exit_cleanly_on_user_error``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from defectseg.config import schemas, targets
from defectseg.config.validate import unknown_key
from defectseg.utils.errors import FORCED_FULL_ERROR, exit_cleanly_on_user_error

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")  # the repository's conf/, however the stage was started
COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)
# OmegaConf's type names in a conversion error, as the rest of the validation says them
EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true/false", "bool": "true/false"}


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """Decorate a stage's ``main(cfg)``: conf/<config_name>.yaml composed by Hydra, every mistake in one line."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(
            exit_cleanly_on_user_error(task)
        )

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> Any:
            """From the command line; ``main(cfg)`` runs the stage on a config composed already, as Hydra allows."""
            if cfg is not None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                return hydra_main(cfg)
            os.environ["HYDRA_FULL_ERROR"] = os.environ[FORCED_FULL_ERROR] = "1"
            try:
                return hydra_main()
            except COMPOSITION_ERRORS as error:
                print(f"error: {composition_problem(error)}", file=sys.stderr)
                raise SystemExit(2) from None
            finally:
                del os.environ["HYDRA_FULL_ERROR"], os.environ[FORCED_FULL_ERROR]

        return main

    return decorate


def composition_problem(error: Exception) -> str:
    """Hydra's report of a composition error as one line, naming the key or option, with "did you mean"."""
    message = str(error)
    cause = error.__cause__
    if isinstance(error, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)'", message)
        wanted = missing.group(1) if missing else (error.missing_cfg_file or "?")
        group, _, option = wanted.rpartition("/")
        options = [o for o in (error.options or []) if not o.endswith("_schema")]
        if not group:
            return first_line(message)
        close = difflib.get_close_matches(option, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return f"{group}={option}: no such option ({hint}choose from {', '.join(sorted(options)) or 'none'})"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return unknown_key(str(cause.full_key), str(cause.key), known_keys(cause.parent_node))
    if isinstance(cause, ValidationError) and cause.full_key:
        wrong = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", first_line(cause.msg))
        wrong = wrong or re.match(r"Value '(.*)' is not a valid (bool)", first_line(cause.msg))
        if wrong:
            expected = EXPECTED.get(wrong.group(2))
            return f"{cause.full_key}: expected {expected or wrong.group(2)}, got {wrong.group(1)!r}"
        return f"{cause.full_key}: {first_line(cause.msg)}"
    if isinstance(cause, OmegaConfBaseException):
        return f"{first_line(message)}: {first_line(str(cause))}"
    where = re.match(r"In '([^']+)': \w+ raised while composing config:", message)
    unknown = re.search(r"Key '([^']+)' not in '(\w+)'\s+full_key: (\S+)", message)
    if where and unknown:
        key, schema_name, full_key = unknown.groups()
        schema = getattr(schemas, schema_name, None)
        known = [f for f in getattr(schema, "__dataclass_fields__", {})]
        return f"{where.group(1)}.yaml: {unknown_key(full_key, key, known)}"
    return first_line(message)


def known_keys(node: Any) -> list[str]:
    """The keys a section may hold: its own, and for a ``_target_`` section (or a schema-typed argument of one,
    ``dataset.augment``) the arguments of what it builds."""
    if not OmegaConf.is_dict(node):
        return []
    known = [str(k) for k in node]
    try:
        if "_target_" in node:
            known += list(targets.accepted_parameters(targets.locate(str(node._target_)))[0])
        parent = node._get_parent()
        if OmegaConf.is_dict(parent) and "_target_" in parent:
            hint = targets.accepted_parameters(targets.locate(str(parent._target_)))[0].get(str(node._key()))
            schema = targets.schema_in(hint)
            known += list(getattr(schema, "__dataclass_fields__", {}))
    except (ImportError, AttributeError):
        pass  # an unimportable _target_: its own keys only
    return sorted(set(known))


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
