"""Errors that the CLI reports as one line and an exit code, never as a traceback."""


class PosecoreError(Exception):
    """A failure the user can act on; ``exit_code`` 2 means bad input, 1 anything else."""

    exit_code = 1


class InputError(PosecoreError):
    """Bad input: config, CLI, checkpoint or data. Exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """The config file or an override is invalid."""


class DataError(InputError):
    """A dataset file is missing, unreadable or malformed (raised by dataset types for their files)."""


class CheckpointError(InputError):
    """A file is missing, unreadable or not a posecore checkpoint."""


class StopRun(PosecoreError):
    """The run stopped early on purpose (signal, plugin request); carries its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
