"""Text inputs are UTF-8: a byte-order mark is read as what it is, other encodings are named in the error.

A UTF-8 byte-order mark (``EF BB BF``, written by Windows Notepad and Excel's "CSV UTF-8") at the
start of a file is not data: readers open text as ``utf-8-sig``, which drops it (and reads a file
without one exactly as ``utf-8`` does), or drop a leading U+FEFF from the first line where a library
reader decoded it. A UTF-16 or UTF-32 byte-order mark means the whole file is
in that encoding; reading it as UTF-8 would fail on its first byte with a message about Latin-1 or a
binary file, so the error says which encoding the file announces and how to convert it.
"""

from __future__ import annotations

import codecs
import os

from ..errors import DataError

__all__ = ["BYTE_ORDER_MARK", "COMPRESSION", "TEXT_ENCODING", "other_unicode_error", "unicode_encoding_of"]

COMPRESSION = (".gz", ".bz2", ".xz", ".zst")  # suffixes of compressed files, read as they are
TEXT_ENCODING = "utf-8-sig"  # UTF-8, without the byte-order mark a file may start with
BYTE_ORDER_MARK = "\ufeff"  # what a UTF-8 byte-order mark decodes to when a reader keeps it

# UTF-32 first: its little-endian mark starts with UTF-16's.
_OTHER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "little-endian"),
    (codecs.BOM_UTF32_BE, "UTF-32", "big-endian"),
    (codecs.BOM_UTF16_LE, "UTF-16", "little-endian"),
    (codecs.BOM_UTF16_BE, "UTF-16", "big-endian"),
)


def unicode_encoding_of(head: bytes) -> tuple[str, str] | None:
    """``(encoding, byte order)`` announced by a UTF-16/UTF-32 byte-order mark at the start of ``head``, or ``None``."""
    for mark, encoding, order in _OTHER_MARKS:
        if head.startswith(mark):
            return encoding, order
    return None


def other_unicode_error(path: str, head: bytes, expected: str, compressed: bool = False,
                        label: str | None = None) -> DataError | None:
    """The error for a text input that starts with a UTF-16/UTF-32 byte-order mark; ``None`` when it has none.

    Args:
        path: the file, as the user named it.
        head: the file's first (decompressed) bytes.
        expected: what the input should be, e.g. ``"UTF-8 text in the csv format"``.
        compressed: the file is compressed (the ``iconv`` example would not apply to it).
        label: how the message names the input (default: ``path``), e.g. with its option.
    """
    announced = unicode_encoding_of(head)
    if announced is None:
        return None
    encoding, order = announced
    name = os.path.basename(path)
    example = "" if compressed else f", e.g. `iconv -f {encoding} -t UTF-8 {name} > utf8-{name}`"
    return DataError(f"{label or path}: the file starts with a {encoding} ({order}) byte-order mark, so it is "
                     f"{encoding} text, not UTF-8; expected {expected}. Convert the file to UTF-8{example}")
