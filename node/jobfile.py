"""Job files for ``conclave job run``: the API's JSON job spec, as a .json or .toml file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from consensus.spec import SpecError, parse_job


class JobFileError(ValueError):
    pass


def load_job_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise JobFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise JobFileError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None
    try:
        parse_job(data)
    except SpecError as e:
        raise JobFileError(f"{path}: {e}") from None
    assert isinstance(data, dict)
    return data
