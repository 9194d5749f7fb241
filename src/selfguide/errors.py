"""One exception hierarchy. The CLI prints a SelfGuideError as one line (exit 2 for user
mistakes, 1 for runtime failures); anything else is a bug and keeps its traceback."""


class SelfGuideError(Exception):
    """Base class; `exit_code` tells the CLI how to exit. The message is always one line: control
    characters from user data (a key with a newline in it, say) are escaped."""

    exit_code = 1

    def __init__(self, message: str = ""):
        super().__init__("".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(message)))


class UserInputError(SelfGuideError):
    """Bad task file, config or command line: the user must fix something."""

    exit_code = 2


class TaskError(UserInputError):
    """A task file is malformed. The message names the file, the field and the fix."""


class ConfigError(UserInputError):
    """A config value or override is invalid."""


class ModelNotFound(UserInputError):
    """A model reference cannot be resolved to local weights."""


class BackendUnavailable(UserInputError):
    """A backend needs a package that is not installed."""


class StageStateError(UserInputError):
    """A run directory holds results made with another config."""


class BackendError(SelfGuideError):
    """A backend failed at run time (out of memory, ...); says which knob to lower."""
