"""Errors a user can act on. Every message says what went wrong and what to do about it, in
words any front end can show: no command-line flags, no commands. Where the fix is an action,
the error also carries it as a `Remedy`, and each front end says how in its own words (the
command line names its flags, the web page what to ask for)."""
from __future__ import annotations

from enum import Enum


class Remedy(Enum):
    """What the user can do about an error; the value is the plain-words version."""

    BUILD_INDEX = "build an index"
    REBUILD_INDEX = "rebuild the index"
    REPAIR_INDEX = "rerun the build to repair the index"
    BUILD_WITH_MODEL = "rebuild the index with a model"
    BUILD_WITH_CLIP = "build the index with a CLIP model"
    MATCH_PIXEL_SIZE = "rebuild the index at the pixel size asked for"
    MATCH_MODEL = "query with the index's own model, or rebuild the index with this one"
    BUILD_SAMPLE = "build the sample library"
    WAIT_FOR_BUILD = "wait for the other build to finish"
    START_CHROMA = "start the Chroma server, or use the embedded store"


class LookalikeError(Exception):
    """Base class: the CLI and the app show these messages as they are, without a traceback."""

    remedy: Remedy | None = None

    def __init__(self, message: str = "", *, remedy: Remedy | None = None) -> None:
        super().__init__(message)
        if remedy is not None:
            self.remedy = remedy


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
