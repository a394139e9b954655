"""The standards' official JSON Schemas, and checking an exported document against them.

ODCS's schema ships in the ``open-data-contract-standard`` package; ODPS's is vendored in
``schemas/`` (see its README). Validation (``mesh export --validate``) uses ``jsonschema``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema

from mesh_platform.discovery.standard_fields import unknown_format

ODPS_SCHEMA_FILE = "odps-json-schema-v1.1.0.json"


def official_schema(fmt: str) -> dict[str, Any]:
    """The standard's official JSON Schema: ODCS from the installed open-data-contract-standard
    package, ODPS vendored beside this module."""
    if fmt == "odcs":
        package = resources.files("open_data_contract_standard")
        text = package.joinpath("schema.json").read_text("utf-8")
    elif fmt == "odps":
        text = resources.files(__package__).joinpath("schemas", ODPS_SCHEMA_FILE).read_text("utf-8")
    else:
        raise unknown_format(fmt)
    return json.loads(text)


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*$")


def format_checker(validator_class: Any) -> Any:
    """The draft's format checker, plus 'uri' and 'date-time' when jsonschema's optional
    packages for them are not installed (they are not dependencies here)."""
    checker = jsonschema.FormatChecker(validator_class.FORMAT_CHECKER.checkers)
    if "uri" not in checker.checkers:

        @checker.checks("uri")
        def _uri(value: object) -> bool:
            if not isinstance(value, str):
                return True
            return bool(_URI_SCHEME.match(value) and _URI_CHARS.match(value))

    if "date-time" not in checker.checkers:

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if "T" not in value.upper():
                return False
            return (
                dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00")).tzinfo is not None
            )

    return checker


def validator(fmt: str) -> Any:
    """A jsonschema validator of the standard's official schema (its draft, from $schema)."""
    schema = official_schema(fmt)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=format_checker(cls))


def validation_errors(document: Mapping[str, Any], fmt: str) -> list[str]:
    """Every way ``document`` breaks the standard's schema, as 'path: message' ([] if valid)."""
    errors = sorted(validator(fmt).iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
