"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class MlfsicError(Exception):
    """Bad input or a failed precondition. The message names the file, field or label at fault."""
