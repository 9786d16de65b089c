"""The processed-sequence cache: hits skip preprocessing, any change rebuilds, writes are atomic."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data import datamodule as datamodule_module
from sasrec_lightning.data.cache import SequenceCache, cache_key
from sasrec_lightning.data.preprocessing import PreprocessOptions, preprocess
from sasrec_lightning.data.sources import load_interactions

LOG = "user,item,ts\nu1,a,1\nu1,b,2\nu2,a,1\nu2,c,3\nu1,c,3\n"


@pytest.fixture()
def counted(monkeypatch):
    """Count how often the source is actually read (a cache hit reads nothing)."""
    calls = []

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        return load_interactions(*args, **kwargs)

    monkeypatch.setattr(datamodule_module, "load_interactions", counting_load)
    return calls


def _module(path, tmp_path, source=None, preprocessing=None, cache=None, **kwargs):
    """Times in ``ts``, nothing filtered, cached under ``tmp_path/cache``; the given groups' fields override these."""
    return SASRecDataModule(
        path=str(path), print_statistics=False, source={"timestamp_column": "ts", **(source or {})},
        preprocessing={"min_user_interactions": 0, "min_item_interactions": 0, **(preprocessing or {})},
        cache={"dir": str(tmp_path / "cache"), **(cache or {})}, **kwargs)


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "sequences").iterdir())


def test_second_run_skips_preprocessing_and_gives_identical_data(tmp_path, counted):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    first = _module(path, tmp_path).sequences
    second = _module(path, tmp_path).sequences
    assert len(counted) == 1
    assert first.info["cache"]["hit"] is False and second.info["cache"]["hit"] is True
    for name in ("items", "offsets", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert second.user_ids.tolist() == ["u1", "u2"] and second.item_ids[1:].tolist() == ["a", "b", "c"]
    assert second.info["raw"] == first.info["raw"]
    assert len(_entries(tmp_path)) == 1


def test_option_change_or_file_change_rebuilds(tmp_path, counted):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    _module(path, tmp_path).sequences  # noqa: B018
    _module(path, tmp_path, preprocessing={"deduplicate": True}).sequences  # noqa: B018
    _module(path, tmp_path, preprocessing={"min_user_interactions": 3}).sequences  # noqa: B018
    assert len(counted) == 3 and len(_entries(tmp_path)) == 3
    path.write_text(LOG + "u3,a,4\n")
    os.utime(path, ns=(1, 1))  # a different size and modification time
    data = _module(path, tmp_path).sequences
    assert len(counted) == 4 and data.num_users == 3


def test_hash_source_keys_on_content(tmp_path, counted):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    _module(path, tmp_path, cache={"hash_source": True}).sequences  # noqa: B018
    os.utime(path, ns=(2, 2))  # touched, same bytes: still a hit
    _module(path, tmp_path, cache={"hash_source": True}).sequences  # noqa: B018
    assert len(counted) == 1


def test_force_rebuild_and_disabled_cache(tmp_path, counted):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    _module(path, tmp_path).sequences  # noqa: B018
    rebuilt = _module(path, tmp_path, cache={"rebuild": True}).sequences
    assert len(counted) == 2 and rebuilt.info["cache"]["hit"] is False and len(_entries(tmp_path)) == 1
    uncached = _module(path, tmp_path, cache={"use": False}).sequences
    assert len(counted) == 3 and "cache" not in uncached.info


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    data = preprocess(load_interactions(_write(tmp_path), timestamp_column="ts"), PreprocessOptions(0, 0))
    cache = SequenceCache(tmp_path / "cache")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the id tables

    monkeypatch.setattr(pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.save("k", data)
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no temporary folder left
    assert cache.load("k") is None


def test_entries_load_without_pickle(tmp_path):
    data = preprocess(load_interactions(_write(tmp_path), timestamp_column="ts"), PreprocessOptions(0, 0))
    folder = SequenceCache(tmp_path / "cache").save("k", data)
    assert sorted(os.listdir(folder)) == ["arrays.npz", "item_ids.parquet", "meta.json", "user_ids.parquet"]
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype == np.int64 for name in arrays.files)
    assert pq.read_table(folder / "user_ids.parquet").column(0).to_pylist() == ["u1", "u2"]


def test_cache_key_depends_on_every_part():
    base = cache_key({"path": "/a", "size": 1}, {"min_user_interactions": 5})
    assert base == cache_key({"size": 1, "path": "/a"}, {"min_user_interactions": 5})  # order does not matter
    assert base != cache_key({"path": "/a", "size": 2}, {"min_user_interactions": 5})
    assert base != cache_key({"path": "/a", "size": 1}, {"min_user_interactions": 4})


def _write(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return str(path)


def test_cold_and_cached_runs_give_identical_splits_and_negatives(tmp_path):
    from sasrec_lightning.data.batches import BatchKey

    path = tmp_path / "log.csv"
    lines = [f"u{u},i{(u * 7 + t * 3) % 11},{t}" for u in range(6) for t in range(5)]
    path.write_text("user,item,ts\n" + "\n".join(lines) + "\n")
    runs = []
    for _ in range(2):
        module = _module(path, tmp_path, loader={"num_eval_negatives": 5}, seed=3)
        module.setup("fit")
        train = next(iter(module.train_dataloader()))
        runs.append((module.sequences.info["cache"]["hit"], module.eval_batches("test").candidates,
                     module.eval_batches("val")[BatchKey(np.arange(3), 0, 0)]["input_ids"], train))
    (hit0, cand0, val0, train0), (hit1, cand1, val1, train1) = runs
    assert (hit0, hit1) == (False, True)
    assert np.array_equal(cand0, cand1) and np.array_equal(val0, val1)
    for key in train0:
        assert np.array_equal(train0[key], train1[key]), key


def _build_in_process(root, marker):
    import time

    def build():
        with open(marker, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one builds
        return preprocess(load_interactions(str(root / "log.csv"), timestamp_column="ts"), PreprocessOptions(0, 0))

    SequenceCache(root / "cache").get_or_build("k", build)


def test_concurrent_processes_build_an_entry_once(tmp_path):
    import multiprocessing

    _write(tmp_path)
    marker = tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_build_in_process, args=(tmp_path, marker)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert marker.read_text() == "built\n"
    assert SequenceCache(tmp_path / "cache").load("k").user_ids.tolist() == ["u1", "u2"]


# ------------------------------------------------------------------ damaged entries, leftovers, durability
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _inconsistent_offsets(path):
    with np.load(path, allow_pickle=False) as arrays:
        stored = {name: arrays[name] for name in arrays.files}
    stored["offsets"] = stored["offsets"][:-1]  # one user fewer than the id table
    np.savez(path, **stored)


DAMAGE = {
    "truncated arrays.npz (BadZipFile)": ("arrays.npz", _truncate),
    "empty arrays.npz (EOFError)": ("arrays.npz", lambda path: path.write_bytes(b"")),
    "garbled user_ids.parquet": ("user_ids.parquet", lambda path: path.write_bytes(b"PAR1 not parquet PAR1")),
    "truncated meta.json": ("meta.json", _truncate),
    "offsets that disagree with the ids": ("arrays.npz", _inconsistent_offsets),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_removed_and_rebuilt(tmp_path, counted, caplog, damage):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    first = _module(path, tmp_path).sequences
    name, corrupt = DAMAGE[damage]
    corrupt(tmp_path / "cache" / "sequences" / _entries(tmp_path)[0] / name)
    with caplog.at_level("WARNING", logger="sasrec_lightning.data.cache"):
        again = _module(path, tmp_path).sequences  # no exception: read again from the source
    assert len(counted) == 2 and again.info["cache"]["hit"] is False
    assert "unreadable cache entry" in caplog.text
    for field in ("items", "offsets", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(first, field), getattr(again, field)), field
    third = _module(path, tmp_path).sequences  # the rebuilt entry is whole
    assert len(counted) == 2 and third.info["cache"]["hit"] is True


def test_orphaned_temporary_entry_is_removed_later(tmp_path):
    """A save killed after mkdtemp leaves ``.tmp-*``; the next save removes it once it is old, not before."""
    data = preprocess(load_interactions(_write(tmp_path), timestamp_column="ts"), PreprocessOptions(0, 0))
    root = tmp_path / "cache"
    old, young = root / ".tmp-k1-killed", root / ".tmp-k2-in-progress"
    for folder in (old, young):
        folder.mkdir(parents=True)
        (folder / "arrays.npz").write_bytes(b"partial")
    os.utime(old, (1, 1))  # written long ago
    SequenceCache(root).save("k3", data)
    assert sorted(p.name for p in root.iterdir()) == [".tmp-k2-in-progress", "k3"]
    os.utime(young, (1, 1))
    assert SequenceCache(root).load("k3") is not None  # a load cleans up too
    assert sorted(p.name for p in root.iterdir()) == ["k3"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps descriptors to paths through /proc")
def test_save_flushes_every_file_to_disk_before_the_rename(tmp_path, monkeypatch):
    data = preprocess(load_interactions(_write(tmp_path), timestamp_column="ts"), PreprocessOptions(0, 0))
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}"))))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("replace", os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    SequenceCache(tmp_path / "cache").save("k", data)
    rename = events.index(("replace", "k"))
    flushed = {name for kind, name in events[:rename] if kind == "fsync"}
    assert {"arrays.npz", "user_ids.parquet", "item_ids.parquet", "meta.json"} <= flushed, events
    assert any(kind == "fsync" and name.startswith(".tmp-k-") for kind, name in events[:rename]), events  # the folder
    assert ("fsync", "cache") in events[rename:], events  # and the rename itself


@pytest.mark.skipif(os.name != "posix", reason="the build lock uses fcntl")
def test_build_lock_files_do_not_pile_up_in_tmpdir(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    for threshold in range(3):  # three entries, three locks taken
        _module(path, tmp_path, preprocessing={"min_user_interactions": threshold}).sequences  # noqa: B018
    assert len(_entries(tmp_path)) == 3
    assert list(scratch.iterdir()) == []  # no lock file and no scratch read folder left


@pytest.mark.skipif(os.name != "posix", reason="the build lock uses fcntl")
def test_build_lock_stays_exclusive_when_its_file_is_removed(tmp_path, monkeypatch):
    """A waiter that wakes on a lock file its holder removed must not share the lock with a newcomer.

    A holds; B waits on the same file; A releases (removing the file); B wins. C, arriving now,
    must wait for B, although the file B waited on is gone (flock locks are per open file, so
    threads show it as well as processes).
    """
    import tempfile
    import threading
    import time

    from sasrec_lightning.data.cache import _build_lock

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inside, events = threading.Event(), []

    def holder(name, hold):
        with _build_lock(tmp_path / "cache", "k"):
            events.append(f"{name} in")
            inside.set()
            time.sleep(hold)
            events.append(f"{name} out")

    a_lock = _build_lock(tmp_path / "cache", "k")
    a_lock.__enter__()
    b = threading.Thread(target=holder, args=("B", 0.5))
    b.start()
    time.sleep(0.3)  # B is now blocked in flock on A's file
    a_lock.__exit__(None, None, None)
    assert inside.wait(10)
    c = threading.Thread(target=holder, args=("C", 0))
    c.start()
    b.join(10)
    c.join(10)
    assert events == ["B in", "B out", "C in", "C out"]


# ------------------------------------------------------------------ edits that keep the size and the mtime
def _edit_in_place(path, offset, byte):
    """Overwrite one byte (same file, same inode, same size) and put the modification time back."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(byte)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_edit_keeping_size_and_mtime_rebuilds(tmp_path, counted):
    """``touch -r`` after an edit, or a restored backup: the cache must not serve the old sequences."""
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    assert _module(path, tmp_path).sequences.item_ids[1:].tolist() == ["a", "b", "c"]
    _edit_in_place(path, LOG.index("u2,c,3") + 3, b"d")  # u2's item c becomes d
    data = _module(path, tmp_path).sequences
    assert len(counted) == 2 and data.info["cache"]["hit"] is False
    assert data.item_ids[1:].tolist() == ["a", "b", "c", "d"]


def test_symlink_swapped_to_a_file_of_the_same_size_and_mtime_rebuilds(tmp_path, counted):
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    old.write_text(LOG)
    new.write_text(LOG.replace("u2,c,3", "u2,d,3"))
    for file in (old, new):
        os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    link = tmp_path / "log.csv"
    link.symlink_to(old)
    assert _module(link, tmp_path).sequences.item_ids[1:].tolist() == ["a", "b", "c"]
    swapped = tmp_path / "swap.csv"
    swapped.symlink_to(new)
    os.replace(swapped, link)  # the link now names the other file: same size, same modification time
    data = _module(link, tmp_path).sequences
    assert len(counted) == 2 and data.item_ids[1:].tolist() == ["a", "b", "c", "d"]


def test_sampled_fingerprint_sees_an_edit_inside_a_sampled_block(tmp_path):
    """Large files are fingerprinted by 10 blocks of 64 KiB; an edit in one changes the key, hash_source sees all."""
    from sasrec_lightning.data.locations import SAMPLE_BLOCK, SAMPLED_BLOCKS, source_identity

    path = tmp_path / "big.txt"
    size = 24 * SAMPLE_BLOCK  # 1.5 MiB: 10 of its 24 blocks are read
    path.write_bytes(b"1 2\n" * (size // 4))
    step = (size - SAMPLE_BLOCK) // (SAMPLED_BLOCKS + 1)  # the documented offsets: i * step, i = 0..9
    first = source_identity(str(path), "sasrec")
    _edit_in_place(path, 4 * step + SAMPLE_BLOCK // 2, b"7")  # the middle of the 4th sampled block
    assert source_identity(str(path), "sasrec") != first
    # What the default key can miss (docs/datasets.md): an edit between the sampled blocks, with the size,
    # the modification time and the inode restored. --data.cache.hash_source reads every byte and sees it.
    edited = source_identity(str(path), "sasrec")
    hashed = source_identity(str(path), "sasrec", hash_content=True)
    gap = step + SAMPLE_BLOCK + (step - SAMPLE_BLOCK) // 2  # between blocks 1 and 2
    _edit_in_place(path, gap - gap % 4, b"9")
    assert source_identity(str(path), "sasrec") == edited
    assert source_identity(str(path), "sasrec", hash_content=True) != hashed


def test_local_folder_read_as_hub_is_keyed_on_its_files(tmp_path, counted):
    """A folder of data files with --data.source.format hub: an edit (size and mtime kept) is read, also uncached.

    Its files used to be keyed by the folder name only, and ``datasets`` kept its own Arrow copy
    keyed by path and modification time, so even --data.cache.use false read the old rows.
    """
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    part = folder / "part-0.csv"
    part.write_text(LOG)
    hub = {"format": "hub"}
    assert _module(folder, tmp_path, source=hub).sequences.item_ids[1:].tolist() == ["a", "b", "c"]
    assert _module(folder, tmp_path, source=hub, cache={"use": False}).sequences.num_items == 3
    _edit_in_place(part, LOG.index("u2,c,3") + 3, b"d")
    assert _module(folder, tmp_path, source=hub).sequences.item_ids[1:].tolist() == ["a", "b", "c", "d"]
    assert _module(folder, tmp_path, source=hub, cache={"use": False}).sequences.item_ids[1:].tolist() == [
        "a", "b", "c", "d"]
    assert len(counted) == 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["sequences"]  # no datasets Arrow copy kept


# ------------------------------------------------------------------ a cache that cannot be written is skipped
def _refuse_writes_under(monkeypatch, root, code):
    """``os.mkdir`` and creating ``os.open`` fail under ``root`` with ``code``, as on a read-only folder.

    (Tests run as root, whom ``chmod`` does not stop; these are the calls a read-only folder refuses.)
    """
    real_mkdir, real_open = os.mkdir, os.open
    prefix = os.path.join(str(root), "")

    def mkdir(path, *args, **kwargs):
        if os.fspath(path).startswith(prefix):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(prefix) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("code", ["EACCES", "EROFS"])
def test_read_only_cache_folder_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog, counted, code):
    import errno
    import tempfile

    path = tmp_path / "log.csv"
    path.write_text(LOG)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    root = tmp_path / "cache" / "sequences"
    root.mkdir(parents=True)  # the folder exists (e.g. shared, or a read-only mount), without this entry
    _refuse_writes_under(monkeypatch, root, getattr(errno, code))
    with caplog.at_level("WARNING", logger="sasrec_lightning.data.cache"):
        data = _module(path, tmp_path).sequences
    assert data.user_ids.tolist() == ["u1", "u2"] and "cache" not in data.info  # the data, as built
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings  # the lock fell back to $TMPDIR silently
    assert warnings[0].startswith(f"cannot write the processed-data cache in {root} ({code}: ")
    assert "continuing without the cache" in warnings[0]
    assert list(root.iterdir()) == [] and list(scratch.iterdir()) == []  # nothing half-written, no lock left
    _module(path, tmp_path).sequences  # noqa: B018
    assert len(counted) == 2


def test_disk_full_while_writing_an_entry_leaves_nothing(tmp_path, monkeypatch, caplog, counted):
    import errno

    import sasrec_lightning.data.cache as cache_module

    path = tmp_path / "log.csv"
    path.write_text(LOG)

    def full(table, where, *args, **kwargs):  # the disk fills up halfway through the first id table
        with open(where, "wb") as handle:
            handle.write(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.pq, "write_table", full)
    with caplog.at_level("WARNING", logger="sasrec_lightning.data.cache"):
        data = _module(path, tmp_path).sequences
    assert data.num_users == 2 and "cache" not in data.info
    assert "(ENOSPC: No space left on device); continuing without the cache" in caplog.text
    assert list((tmp_path / "cache" / "sequences").iterdir()) == []


FILE_SIZE_LIMIT = """
import os, resource, sys
from sasrec_lightning.data.cache import SequenceCache
from sasrec_lightning.data.preprocessing import PreprocessOptions, preprocess
from sasrec_lightning.data.sources import load_interactions

data = preprocess(load_interactions(sys.argv[1], timestamp_column="ts"), PreprocessOptions(0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # ulimit -f: larger writes fail with EFBIG
got = SequenceCache(sys.argv[2]).get_or_build("k", lambda: data)
print(got.user_ids.tolist(), "cache" in got.info, sorted(os.listdir(sys.argv[2])))
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="POSIX file-size limits")
def test_file_size_limit_while_writing_an_entry_is_skipped(tmp_path):
    """A real ``RLIMIT_FSIZE`` in a subprocess (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    import subprocess
    import sys

    path = tmp_path / "log.csv"
    path.write_text(LOG)
    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(path), str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['u1', 'u2'] False []"  # the data as built; no entry, temporary or lock left
    assert "(EFBIG: File too large); continuing without the cache" in result.stderr


# ------------------------------------------------------------------ the build lock does not follow symlinks
@pytest.mark.skipif(os.name != "posix", reason="the build lock uses fcntl and O_NOFOLLOW")
def test_build_lock_never_follows_a_planted_symlink(tmp_path, monkeypatch, caplog):
    """Symlinks planted at the lock's predictable names: neither target is created, opened or removed."""
    import hashlib
    import tempfile
    import threading

    from sasrec_lightning.data.cache import _build_lock

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    root = tmp_path / "cache"
    root.mkdir()
    absent, precious = tmp_path / "victim" / "authorized_keys", tmp_path / "precious.txt"
    absent.parent.mkdir()
    precious.write_text("precious\n")
    os.utime(precious, ns=(1, 1))
    name = hashlib.sha256(f"{os.path.abspath(root)}/k".encode()).hexdigest()[:24]
    (scratch / f"sasrec_lightning-{name}.lock").symlink_to(absent)  # in a shared /tmp: anyone can do this
    (root / ".lock-k").symlink_to(precious)
    def take():
        with _build_lock(root, "k"):
            done.append(True)

    done = []
    with caplog.at_level("WARNING", logger="sasrec_lightning.data.cache"):
        worker = threading.Thread(target=take, daemon=True)  # a lock that chases the link must fail, not hang
        worker.start()
        worker.join(30)
    assert done == [True]
    assert not absent.exists()  # not created through the link
    assert precious.read_text() == "precious\n" and precious.stat().st_mtime_ns == 1
    assert os.path.islink(root / ".lock-k") and os.path.islink(scratch / f"sasrec_lightning-{name}.lock")
    assert "cannot take the build lock of cache entry k" in caplog.text
    assert "a symbolic link is at the lock file's name (not followed)" in caplog.text
    assert "continuing without it" in caplog.text


@pytest.mark.skipif(os.name != "posix", reason="the build lock uses fcntl")
def test_build_lock_lives_in_the_cache_folder(tmp_path, monkeypatch):
    import tempfile

    from sasrec_lightning.data.cache import _build_lock

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with _build_lock(tmp_path / "cache", "k"):
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock-k"]
        assert list(scratch.iterdir()) == []
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="chown to another user needs root")
def test_build_lock_refuses_a_tmpdir_lock_file_of_another_user(tmp_path, monkeypatch, caplog):
    """Another user's file at the predictable $TMPDIR name could be held locked by them forever: not used."""
    import hashlib
    import tempfile

    from sasrec_lightning.data.cache import _build_lock

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".lock-k").symlink_to(tmp_path / "elsewhere")  # the cache folder's lock cannot be used
    name = hashlib.sha256(f"{os.path.abspath(root)}/k".encode()).hexdigest()[:24]
    theirs = scratch / f"sasrec_lightning-{name}.lock"
    theirs.write_text("")
    os.chown(theirs, 65534, 65534)  # nobody's
    with caplog.at_level("WARNING", logger="sasrec_lightning.data.cache"), _build_lock(root, "k"):
        pass
    assert theirs.exists() and theirs.stat().st_uid == 65534  # neither used nor removed
    assert "the lock file belongs to another user" in caplog.text
