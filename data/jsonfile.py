"""Parse a JSON file straight into typed models, with errors that name the file."""

from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from lyrics.data.errors import DataFormatError, describe_validation_error

T = TypeVar("T")


def read_json(path: Path, schema: type[T]) -> T:
    """Read `path` and validate it against `schema` (a pydantic model or e.g. `list[Model]`)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read the file ({error.strerror})") from error
    try:
        return TypeAdapter(schema).validate_json(raw)
    except ValidationError as error:
        raise DataFormatError(f"{path}: {describe_validation_error(error)}") from error
