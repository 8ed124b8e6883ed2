"""Exceptions raised by the ``data`` package.

Hierarchy::

    ValueError
    └── DataFormatError          bad file contents; the message names ``path:line_no``
    RuntimeError
    └── DownloadError            network failure, HTTP error, truncated transfer
        └── ChecksumMismatchError  downloaded bytes do not match the expected md5

``ChecksumMismatchError`` is a ``DownloadError`` (not a ``ValueError``): it is a failed transfer
or a wrong mirror, and ``except DownloadError`` around a download must catch it. A corrupt zip
file that was read from disk is a ``DataFormatError`` (its contents are bad, wherever it came
from).
"""

from __future__ import annotations

from typing import Callable


class DataFormatError(ValueError):
    """A data file has contents that cannot be parsed.

    The message starts with ``path:line_no:`` (or ``path:`` for whole-file problems such as an
    empty file or a corrupt archive) and says how to fix the file.
    """


class DownloadError(RuntimeError):
    """Downloading a dataset failed; the message names the URL."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's md5 differs from the expected one; the file has been deleted."""


def quote_some(values: list[str], shown: int = 10,
               show: Callable[[str], str] = repr) -> str:
    """The first ``shown`` of ``values``, each as ``show`` writes it (quoted), and how many
    more: for messages naming ids.

    >>> quote_some(["a", "b", "c"], 2)
    "'a', 'b' and 1 more"
    >>> quote_some(["a", "b"], show=lambda v: f"{v!r} (line 3)")
    "'a' (line 3), 'b' (line 3)"
    """
    more = f" and {len(values) - shown} more" if len(values) > shown else ""
    return ", ".join(show(v) for v in values[:shown]) + more
