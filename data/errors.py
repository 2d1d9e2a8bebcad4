"""The one error type of the readers: a data file is missing or does not match its format."""

from pydantic import ValidationError

# Enough pydantic errors to locate the problem without flooding the terminal on a broken file.
_MAX_LISTED_ERRORS = 5


class DataFormatError(ValueError):
    """A data file is missing or malformed; the message starts with the file's path."""


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, `location: message`, as pydantic reports them."""
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
        for item in error.errors()[:_MAX_LISTED_ERRORS]
    ]
    hidden = error.error_count() - len(problems)
    if hidden > 0:
        problems.append(f"... and {hidden} more")
    return "; ".join(problems)
