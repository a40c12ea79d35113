"""Configuration: the JSON sections a rule passes with `--settings`, with schema defaults.

The schema (`seqsetvae/config.schema.yaml`, which the Snakefile validates against too)
is the one place where defaults live, so the package run by hand and the pipeline agree.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema
import yaml

from seqsetvae.errors import InputError


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("seqsetvae").joinpath("config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema_)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_settings(settings: str | dict | None = None) -> dict[str, Any]:
    """Full configuration: `settings` (JSON text or dict) over the schema defaults.

    Raises InputError naming the offending key when a value breaks the schema.
    """
    config = json.loads(settings) if isinstance(settings, str) else copy.deepcopy(settings or {})
    errors = sorted(_Validator(schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        raise InputError(f"configuration key {key}: {error.message}")
    # a second pass fills defaults inside sections that were themselves defaulted
    for _ in _Validator(schema()).iter_errors(config):
        pass
    if "data" in config:
        _check_column_roles(config["data"]["columns"])
        if config["data"]["prediction_hour"] is not None and config["data"]["format"] != "physionet2019":
            raise InputError(
                f"configuration key data.prediction_hour: a physionet2019 task; data.format is "
                f"{config['data']['format']!r}"
            )
    return config


# the roles read from one file: two of them can never be the same column
_ROLES_PER_FILE = {
    "events": ("patient_id", "time", "variable", "value"),
    "labels": ("patient_id", "label", "group"),
    "splits": ("patient_id", "split"),
}


def _check_column_roles(columns: dict) -> None:
    """InputError when two roles of one file are mapped to the same column."""
    for what, roles in _ROLES_PER_FILE.items():
        seen: dict[str, str] = {}
        for role in roles:
            name = columns[role]
            if name is None:  # an optional role not in use
                continue
            if name in seen:
                raise InputError(
                    f"configuration keys data.columns.{seen[name]} and data.columns.{role} both name "
                    f"column {name!r} of the {what} file; each role needs its own column"
                )
            seen[name] = role
