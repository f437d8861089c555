"""Configs: schemas (schemas.py), cross-key rules (rules.py), the one validation path (validate.py) and the
``@entry_point`` every command line goes through (entry.py). Importing this package registers the schemas."""

from defectseg.config.schemas import register
from defectseg.config.validate import validate_config

register()

__all__ = ["register", "validate_config"]
