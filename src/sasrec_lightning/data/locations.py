"""Where the interactions are, and what they are before anything reads them.

Local paths and ``file://`` URLs, the format from the extension, the source's identity (what the
sequence cache is keyed by), downloads of ``--data.source.url``, and the checks on a local path before
anything opens it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import urllib.parse
import urllib.request
from pathlib import Path

import datasets

from ..errors import DataError
from .diagnostics import one_paragraph
from .readers import READERS
from .textfiles import COMPRESSION

__all__ = ["local_path", "detect_format", "is_local_path", "resolved_path", "SAMPLE_BLOCK", "SAMPLED_BLOCKS",
           "source_identity", "download", "check_local"]


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # a scheme of 2+ letters: not a Windows drive


def local_path(path: str) -> str:
    """``--data.path`` as a local path: a ``file://`` URL is read as the path it names; other URLs are refused.

    A ``file://`` URL names a local file unambiguously (``file:///data/my%20log.csv`` is
    ``/data/my log.csv``), so it is read rather than refused. ``http(s)://`` and other remote URLs
    are not read from ``--data.path`` (it would say "does not exist"): ``--data.source.url`` downloads a
    file once into the cache. ``hf://`` paths are passed on to ``datasets`` (a hub dataset).

    Raises:
        DataError: a remote URL, or a ``file://`` URL naming another host.
    """
    match = _URL.match(path)
    if match is None or match[1].lower() == "hf":
        return path
    if match[1].lower() == "file":
        parsed = urllib.parse.urlsplit(path)
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"--data.path {path!r} is a file:// URL on the host {parsed.netloc!r}; expected a local "
                            "file (file:///absolute/path, or the path itself)")
        return urllib.request.url2pathname(parsed.path)
    raise DataError(f"--data.path {path!r} is a URL, but --data.path takes a local file, a folder or a hub dataset id; "
                    f"to download the file, pass it with --data.source.url {path} (downloaded once into "
                    "--data.cache.dir), or download it yourself and pass the local file with --data.path")


def detect_format(path: str) -> str:
    """Guess the format of ``path`` from its extension (``.txt`` is the SASRec "user item" format)."""
    if os.path.isdir(path):
        return "disk"
    name = path.lower()
    for suffix in COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    suffix = Path(name).suffix
    extensions = {extension: format for format, reader in READERS.items() for extension in reader.extensions}
    if suffix in extensions:
        return extensions[suffix]
    if os.path.exists(path):
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {suffix!r}; expected one of "
            f"{sorted(extensions)} or set --data.source.format to one of {list(READERS)}"
        )
    return "hub"


def is_local_path(path: str) -> bool:
    """Whether ``--data.path`` names a local file or folder rather than a hub dataset id, an ``hf://`` path or a URL.

    As the readers tell them apart: an existing path is local; otherwise a path whose extension names a
    format (``../my_log.parquet``) is a local file that is missing, and anything else is a hub id
    (:func:`detect_format`).
    """
    if _URL.match(path):
        return False
    return os.path.exists(path) or detect_format(path) != "hub"


def resolved_path(path: str) -> str:
    """``path`` as a checkpoint or a run's config stores it: a local path made absolute, anything else as given.

    A relative path means the folder training ran in; stored absolute, ``predict --ckpt_path`` finds the
    data from any folder. Hub ids, ``hf://`` paths and URLs are kept as they are.
    """
    return os.path.abspath(path) if is_local_path(path) else path


SAMPLE_BLOCK = 64 << 10  # bytes per sampled block of the default fingerprint


SAMPLED_BLOCKS = 8  # blocks between the head and the tail, at fixed offsets spread over the file


def _sampled_sha256(path: str, size: int) -> str:
    """SHA-256 of the head, the tail and :data:`SAMPLED_BLOCKS` blocks between them (the whole file when small).

    The offsets depend only on the size, so the same bytes give the same digest; reading ten 64 KiB
    blocks takes milliseconds however large the file is.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= (SAMPLED_BLOCKS + 2) * SAMPLE_BLOCK:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            for index in range(SAMPLED_BLOCKS + 2):  # 0 (the head) .. size - SAMPLE_BLOCK (the tail)
                handle.seek(index * (size - SAMPLE_BLOCK) // (SAMPLED_BLOCKS + 1))
                digest.update(handle.read(SAMPLE_BLOCK))
    return digest.hexdigest()


def _file_identity(file: str, name: str, hash_content: bool) -> dict:
    """The cache-key entry of one file: a symlink stands for its target (``os.stat`` and ``open`` follow it)."""
    status = os.stat(file)
    entry = {"path": name, "target": os.path.realpath(file), "size": status.st_size}
    if hash_content:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        entry["sha256"] = digest.hexdigest()
    else:
        entry.update(mtime_ns=status.st_mtime_ns, inode=status.st_ino,
                     sampled_sha256=_sampled_sha256(file, status.st_size))
    return entry


def source_identity(path: str, format: str, name: str | None = None, split: str = "train",
                    hash_content: bool = False) -> dict:
    """What identifies the source's content, for the processed-data cache key.

    Local files, and every file of a folder: absolute path, the target of a symlink, size, and by
    default the modification time, the inode and a SHA-256 of the head, the tail and 8 blocks at
    fixed offsets (:func:`_sampled_sha256`), so an edit that keeps the size and the modification
    time (``touch -r``, a restored backup, a symlink swapped to another file) still changes the key
    unless it falls outside the sampled blocks and the inode is the same too; ``hash_content``
    (``--data.cache.hash_source``): a SHA-256 of every byte instead, which nothing misses. Hub ids: id,
    configuration, split.
    """
    local_folder = format == "hub" and os.path.isdir(path)  # a folder of data files read as a hub dataset
    if format == "hub" and not local_folder:
        return {"hub": path, "name": name, "split": split}
    if not local_folder:
        check_local(path, format)  # a FIFO would block the hash or the stat of its content
    root = os.path.abspath(path)
    files = [root] if os.path.isfile(root) else sorted(
        os.path.join(base, file) for base, _, names in os.walk(root) for file in names
    )
    entries = [_file_identity(file, os.path.relpath(file, root) if file != root else root, hash_content)
               for file in files]
    return {"path": root, "split": split if format in ("disk", "hub") else None,
            "name": name if local_folder else None, "files": entries}


def download(url: str, cache_dir: str | None = None) -> str:
    """Download ``url`` (once) into the ``datasets`` download cache and return the local path.

    Raises:
        DataError: offline or unreachable; the message names the URL and ``--data.path``.
    """
    advice = (f"Download {url} yourself (e.g. `wget {url}`) and pass the file with --data.path PATH "
              "(the file is read as is, no need to decompress it)")
    if datasets.config.HF_HUB_OFFLINE:
        raise DataError(f"cannot download {url}: offline mode is on (HF_HUB_OFFLINE=1). {advice}")
    config = datasets.DownloadConfig(cache_dir=os.path.join(cache_dir, "downloads") if cache_dir else None)
    try:
        return datasets.DownloadManager(download_config=config).download(url)
    except (OSError, ValueError) as error:  # ConnectionError, FileNotFoundError, HTTP errors
        raise DataError(f"cannot download {url} ({type(error).__name__}: {error}). {advice}") from error


def check_local(path: str, format: str) -> None:
    """Refuse a local path that cannot be read as ``format`` before anything opens it.

    A named pipe (FIFO), device or socket would block the read or never end; a folder is only a
    source for ``disk`` (a ``save_to_disk`` folder); an empty file has no interactions.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"data file {path!r} does not exist; point --data.path at an existing file (or a folder "
                        "saved with save_to_disk, or a hub dataset id with --data.source.format hub)") from None
    except OSError as error:
        raise DataError(f"data file {path!r} cannot be accessed ({one_paragraph(error)}); expected a readable "
                        "file (--data.path)") from None
    if stat.S_ISDIR(mode):
        if format != "disk":
            raise DataError(f"data path {path!r} is a folder, but the {format} format reads one file; point "
                            "--data.path at the file, or use --data.source.format disk for a folder written by "
                            "save_to_disk (--data.source.format hub reads a folder of data files)")
        return
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise DataError(f"data path {path!r} is {kind}, not a regular file; reading it could block or never end. "
                        "Expected a regular file: save the data to a file and pass that with --data.path")
    if format == "disk":
        raise DataError(f"data path {path!r} is a file, but --data.source.format disk expects a folder written by "
                        "Dataset.save_to_disk")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path!r} is empty; expected interactions ({format} format)")

