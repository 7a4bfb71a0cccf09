"""The one exception type that reaches users as a single clear line (the CLI prints it, exits non-zero)."""


class FacestreamError(Exception):
    """A user-facing error: bad input, missing model, unusable file. Its message is one line."""


class ModelMissingError(FacestreamError):
    """A model the command needs has not been built into $FACESTREAM_HOME yet."""
