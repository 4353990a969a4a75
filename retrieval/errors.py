"""Errors a user can act on. Every message says what went wrong and what to do about it."""


class LookalikeError(Exception):
    """Base class: the CLI and the app show these messages as they are, without a traceback."""


class ImageError(LookalikeError):
    """A file or upload is not a usable image (empty, corrupt, not an image, too large, too small)."""


class LibraryError(LookalikeError):
    """The library folder is missing, empty or not laid out as data/<split>/<class>/*."""


class IndexError_(LookalikeError):
    """The index is missing, incomplete, or was built with other settings than those asked for."""


class ModelError(LookalikeError):
    """A model cannot be loaded (no weights offline, unknown spec) or lacks a capability (text)."""


class StorageError(LookalikeError, OSError):
    """A file could not be written (disk full, read-only or unwritable folder). Raised by
    `retrieval.atomic`, so the previous version of the file is still in place. Also an OSError,
    so code that handles I/O errors generically keeps working."""
