"""Bad input: one clear paragraph naming file/field/line, CLI exit 2 without a traceback, no cache entry."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_error_line
from sasrec_lightning import SASRecDataModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.options import CacheOptions, PreprocessingOptions, SourceOptions
from sasrec_lightning.data.sources import load_interactions
from sasrec_lightning.errors import DataError

datasets.disable_progress_bars()


def _corrupt_gzip(path):
    data = gzip.compress(b"".join(b"{'username': 'u%d', 'product_id': '1', 'date': '2017-01-01'}\n" % i
                                  for i in range(2000)))
    path.write_bytes(data[: len(data) // 2])  # truncated mid-stream


def _zip_without_ratings(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")


def _parquet(table):
    return lambda path: pq.write_table(table, path)


def _fifo(path):
    os.mkfifo(path)


SCRIPT = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('the script ran')\n"


def _script_folder(path):
    """A hub-style folder whose loading script is ``<folder>/<folder>.py`` (the datasets convention), next to data."""
    path.mkdir()
    (path / f"{path.name}.py").write_text(SCRIPT)
    (path / "data.csv").write_text("user,item\n1,2\n")


def _python_only_folder(path):
    path.mkdir()
    (path / "loader.py").write_text(SCRIPT)


INT64_RANGE = "-9223372036854775808 .. 9223372036854775807"

# name -> (file name, file content (text, bytes) or writer, extra data options as ``group.field`` (the CLI's
# ``--data.group.field``), fragments the message must contain)
SOURCE_STEAM = {"source.user_column": "username", "source.item_column": "product_id",
                "source.timestamp_column": "date"}
CASES = {
    "missing file": ("absent.txt", None, {}, ["absent.txt", "does not exist", "--data.path"]),
    "empty file": ("empty.csv", "", {}, ["empty.csv", "is empty"]),
    "txt line not two integers": ("log.txt", "1 2\n1 3\n\n2 x\n", {}, ["log.txt", "line 4", "'x'", "two"]),
    "txt line with three fields": ("log.txt", "1 2\n1 3 4\n", {}, ["log.txt", "line 2", "'1 3 4'"]),
    "misnamed column": (
        "log.csv", "uid,item,ts\n1,2,3\n", {"source.timestamp_column": "ts"},
        ["log.csv", "['user']", "not found", "['uid', 'item', 'ts']", "--data.source.user_column"],
    ),
    "missing timestamp column": (
        "log.jsonl", '{"user": 1, "item": 2}\n', {"source.timestamp_column": "time"},
        ["log.jsonl", "['time']", "not found", "['user', 'item']", "--data.source.timestamp_column"],
    ),
    "missing literal key": (
        "steam.json", "{'username': 'a', 'product_id': '1', 'date': '2017-01-01'}\n{'username': 'b', 'date': 'x'}\n",
        SOURCE_STEAM,
        ["steam.json", "line 2", "'product_id'", "not found", "['date', 'username']"],
    ),
    "unparseable timestamp": (
        "log.csv", "user,item,time\n1,2,2017-01-01\n1,3,yesterday\n", {"source.timestamp_column": "time"},
        ["log.csv", "line 3", "'time'", "'yesterday'", "ISO-8601"],
    ),
    "non-numeric json timestamp": (
        "log.jsonl", '{"user": 1, "item": 2, "ts": true}\n', {"source.timestamp_column": "ts"},
        ["log.jsonl", "'ts'", "has type bool", "expected integers"],
    ),
    "non-numeric movielens timestamp": (
        "ratings.dat", "1::2::5::978300760\n1::3::4::soon\n", {},
        ["ratings.dat", "line 2", "Timestamp", "'soon'", "UserID::MovieID::Rating::Timestamp"],
    ),
    "all users filtered out": (
        "log.csv", "user,item\n1,2\n1,3\n2,2\n", {"preprocessing.min_user_interactions": 5},
        ["log.csv", "every interaction was filtered out", "min_user_interactions=5", "most active: 2"],
    ),
    "corrupt gzip": (
        "steam_reviews.json.gz", _corrupt_gzip,
        SOURCE_STEAM,
        ["steam_reviews.json.gz", "corrupt or truncated", "EOFError"],
    ),
    "not gzip at all": ("reviews.jsonl.gz", "plain text, not gzip\n", {}, ["reviews.jsonl.gz", "BadGzipFile"]),
    "corrupt zip": ("ml-1m.zip", "PK\x03\x04 not really a zip", {}, ["ml-1m.zip", "zip archive is corrupt"]),
    "zip without ratings.dat": ("ml-1m.zip", _zip_without_ratings, {}, ["ml-1m.zip", "no 'ratings.dat'"]),
    # out-of-range times (they used to wrap around to int64's minimum with only a RuntimeWarning)
    "huge float timestamp": ("log.csv", "user,item,ts\n1,2,1\n1,3,1e30\n", {"source.timestamp_column": "ts"},
                             ["log.csv", "line 3", "'ts'", "'1e30'", "beyond the 64-bit", INT64_RANGE]),
    "huge integer timestamp": ("log.csv", "user,item,ts\n1,2,99999999999999999999\n",
                               {"source.timestamp_column": "ts"},
                               ["log.csv", "line 2", "'99999999999999999999'", INT64_RANGE]),
    "infinite timestamp": ("log.tsv", "user\titem\tts\n1\t2\t5\n1\t2\tinf\n", {"source.timestamp_column": "ts"},
                           ["log.tsv", "line 3", "'inf'", "not a finite number"]),
    "huge json timestamp": ("log.jsonl", '{"user": 1, "item": 2, "ts": 1e30}\n', {"source.timestamp_column": "ts"},
                            ["log.jsonl", "line 1", "1e+30", INT64_RANGE]),
    "huge movielens timestamp": ("ratings.dat", "1::2::5::978300760\n1::3::4::99999999999999999999\n", {},
                                 ["ratings.dat", "line 2", "'99999999999999999999'", "beyond the 64-bit"]),
    # malformed files (they used to end in datasets/Arrow/pandas tracebacks)
    "header-only csv": ("log.csv", "user,item\n", {}, ["log.csv", "only a header line, no data rows"]),
    "csv row with an extra field": ("log.csv", "user,item\n" + "1,2\n" * 5 + "1,2,3\n", {},
                                    ["log.csv", "line 7", "3 fields", "header line has 2", "'1,2,3'"]),
    "extra field on the first row": ("log.csv", "user,item\n1,2,3\n4,5\n", {},
                                     ["log.csv", "line 2", "3 fields", "header line has 2"]),
    "duplicate csv header": ("log.csv", "user,item,item\n1,2,3\n", {}, ["log.csv", "['item'] more than once"]),
    "latin-1 text": ("log.csv", "user,item\n1,caf\u00e9\n".encode("latin-1"), {},
                     ["log.csv", "line 2", "byte 0xe9", "not valid UTF-8", "Latin-1"]),
    "binary .txt": ("log.txt", b"\x00\x01\n\xff\xfe" * 64, {}, ["log.txt", "line 2", "binary file"]),
    "UTF-16 csv": ("log.csv", "user,item\n1,2\n".encode("utf-16"), {},
                   ["log.csv", "UTF-16 (little-endian) byte-order mark", "not UTF-8", "iconv -f UTF-16 -t UTF-8"]),
    "malformed json line": ("log.jsonl", '{"user": 1, "item": 2}\n\n{"user": 1, "item": \n', {},
                            ["log.jsonl", "line 3", "not valid JSON", "one JSON object per line"]),
    "json ids of mixed types": ("log.jsonl", '{"user": 1, "item": 2}\n{"user": "a", "item": 2}\n', {},
                                ["log.jsonl", "line 2", "'user' is a string", "on line 1 it is a number"]),
    "empty json objects": ("log.jsonl", "{}\n{}\n", {}, ["log.jsonl", "no data", "{}"]),
    "zero-row parquet": ("log.parquet", _parquet(pa.table({"user": pa.array([], pa.int64()),
                                                            "item": pa.array([], pa.int64())})), {},
                         ["log.parquet", "has no rows", "['user', 'item']"]),
    "not a parquet file": ("log.parquet", "user,item\n1,2\n", {}, ["log.parquet", "not a Parquet file"]),
    "list-typed id column": ("log.parquet", _parquet(pa.table({"user": [[1], [2]], "item": [1, 2]})), {},
                             ["log.parquet", "'user'", "list<", "expected one integer or text id per row"]),
    "struct-typed id column": ("log.jsonl", '{"user": {"id": 1}, "item": 2}\n', {},
                               ["log.jsonl", "'user'", "struct<", "expected one integer or text id per row"]),
    "json id beyond int64": ("log.jsonl", '{"user": 1, "item": 99999999999999999999}\n', {},
                             ["log.jsonl", "line 1", "'item'", "1e+20", INT64_RANGE, "JSON strings"]),
    # non-regular files and missing ids
    "named pipe (FIFO)": ("log.csv", _fifo, {}, ["log.csv", "named pipe (FIFO)", "not a regular file"]),
    "folder with a file format": ("folder", lambda path: path.mkdir(), {"source.format": "csv"},
                                  ["folder", "is a folder", "--data.source.format disk"]),
    "hub folder with a loading script": ("myds", _script_folder, {"source.format": "hub"},
                                        ["myds' holds a loading script, myds.py", "dataset scripts are never run",
                                         "Parquet, CSV or JSON lines"]),
    "hub folder with only a Python file": ("scripts", _python_only_folder, {"source.format": "hub"},
                                           ["scripts' has no data files", "['loader.py']", "never run"]),
    "NA user id": ("log.csv", "user,item\n1,2\nNA,3\n", {},
                   ["log.csv", "line 3", "'user'", "'NA', a missing-value marker", "missing"]),
    "None item id": ("log.tsv", "user\titem\n1\t2\n\n1\tNone\n", {},
                     ["log.tsv", "line 4", "'item'", "'None', a missing-value marker"]),
    "empty csv id": ("log.csv", "user,item\n1,2\n,3\n", {}, ["log.csv", "line 3", "'user'", "empty (missing)"]),
    "empty json string id": ("log.jsonl", '{"user": "a", "item": "x"}\n{"user": "", "item": "y"}\n', {},
                             ["log.jsonl", "line 2", "'user'", "empty (missing)"]),
    "null json id": ("log.jsonl", '{"user": 1, "item": 2}\n{"user": null, "item": 3}\n', {},
                     ["log.jsonl", "line 2", "'user'", "null (missing)"]),
}


def _write(tmp_path, name, content):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


def _groups(options: dict) -> dict:
    """``{"source.user_column": "u"}`` -> ``{"source": {"user_column": "u"}}``: the data module's option groups."""
    groups: dict = {}
    for key, value in options.items():
        group, field = key.split(".")
        groups.setdefault(group, {})[field] = value
    return groups


def _assert_cache_empty(cache):
    """Nothing at all is left under ``--data.cache.dir``: no sequences entry, no ``datasets`` Arrow cache."""
    left = sorted(str(path.relative_to(cache)) for path in cache.rglob("*") if not path.is_dir())
    assert left == [], left


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_data_error(tmp_path, case):
    name, content, kwargs, fragments = CASES[case]
    path = _write(tmp_path, name, content)
    module = SASRecDataModule(path=str(path), print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")),
                              **_groups(kwargs))
    with pytest.raises(DataError) as error:
        module.sequences  # noqa: B018
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message  # one paragraph
    _assert_cache_empty(tmp_path / "cache")


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_while_offline(tmp_path, offline):
    module = SASRecDataModule(path="nobody/no-such-dataset", print_statistics=False,
                              source=SourceOptions(format="hub", name="cfg", split="train"),
                              cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match=r"hub dataset 'nobody/no-such-dataset' \(name='cfg', split='train'\).*offline"):
        module.sequences  # noqa: B018
    _assert_cache_empty(tmp_path / "cache")


def test_hub_dataset_whose_files_disagree_is_a_data_error(tmp_path, offline):
    """A hub-style dataset (a folder of data files, loaded by ``load_dataset``) that cannot be built."""
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    (folder / "part-0.csv").write_text("user,item\n1,2\n1,3\n")
    (folder / "part-1.csv").write_text("customer,product,price\n1,2,9.5\n")
    module = SASRecDataModule(path=str(folder), print_statistics=False, source=SourceOptions(format="hub"),
                              cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match=r"hub dataset .*my-dataset.* could not be built: .*consistent table") as error:
        module.sequences  # noqa: B018
    assert "\n" not in str(error.value)  # one paragraph


@pytest.mark.parametrize("datasets_version", ["installed", "one that runs scripts"])
def test_dataset_scripts_are_never_run(tmp_path, offline, monkeypatch, datasets_version):
    """A loading script given as a hub folder or as the file itself is refused before datasets sees it.

    Also under a ``datasets`` that would run it (before 4.0, scripts ran; simulated by a stand-in).
    """
    import runpy

    folder = tmp_path / "myds"
    _script_folder(folder)
    if datasets_version != "installed":
        def runs_scripts(path, **kwargs):
            script = path if path.endswith(".py") else os.path.join(path, f"{os.path.basename(path)}.py")
            runpy.run_path(script)
            raise AssertionError("the script was run")

        monkeypatch.setattr(datasets, "load_dataset", runs_scripts)
    for path in (folder, folder / "myds.py"):
        module = SASRecDataModule(path=str(path), print_statistics=False, source=SourceOptions(format="hub"),
                                  cache=CacheOptions(dir=str(tmp_path / "cache")))
        with pytest.raises(DataError, match=r"holds a loading script, myds\.py: dataset scripts are never run"):
            module.sequences  # noqa: B018
    assert not (folder / "RAN").exists()
    _assert_cache_empty(tmp_path / "cache")


def test_hub_repository_that_is_a_script(tmp_path, monkeypatch):
    """A hub repository that is a script: datasets (4 and later) refuses it with a RuntimeError; one line."""
    def script_repository(path, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found squad_v3.py")

    monkeypatch.setattr(datasets, "load_dataset", script_repository)
    module = SASRecDataModule(path="someone/squad_v3", print_statistics=False, source=SourceOptions(format="hub"),
                              cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError) as error:
        module.sequences  # noqa: B018
    assert str(error.value).startswith("hub dataset 'someone/squad_v3' holds a loading script, squad_v3.py: dataset "
                                       "scripts are never run")


def test_url_download_while_offline_names_url_and_option(tmp_path, offline):
    url = "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz"
    source = SourceOptions(url=url, user_column="username", item_column="product_id", timestamp_column="date")
    module = SASRecDataModule(print_statistics=False, source=source, cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError) as error:
        module.sequences  # noqa: B018
    assert url in str(error.value) and "--data.path" in str(error.value)
    _assert_cache_empty(tmp_path / "cache")


def test_url_download_failure_when_online(tmp_path, monkeypatch):
    """Online but unreachable: the real download call fails and the message still names the URL."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def unreachable(self, url):
        raise ConnectionError(f"Couldn't reach {url}")

    monkeypatch.setattr(datasets.DownloadManager, "download", unreachable)
    url = "https://example.org/steam_reviews.json.gz"
    module = SASRecDataModule(print_statistics=False, source=SourceOptions(url=url),
                              cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match="cannot download https://example.org/steam_reviews.json.gz.*--data.path"):
        module.sequences  # noqa: B018


def test_successful_local_load_caches_only_the_sequences(tmp_path):
    """The raw ``datasets`` Arrow cache of a local file is temporary; only ``sequences/`` is kept."""
    path = _write(tmp_path, "log.csv", "user,item,ts\n1,2,1\n1,3,2\n1,4,3\n2,2,1\n2,4,2\n2,3,3\n")
    module = SASRecDataModule(path=str(path), print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")),
                              source=SourceOptions(timestamp_column="ts"),
                              preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0))
    assert module.sequences.num_items == 3
    assert [child.name for child in (tmp_path / "cache").iterdir()] == ["sequences"]


URL = "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz"
# Bad input that is not a local file: (data args, fragments the message must contain).
REMOTE_CASES = {
    "hub id while offline": ({"path": "nobody/no-such-dataset", "source.format": "hub"},
                             ["hub dataset 'nobody/no-such-dataset'", "offline mode"]),
    "download while offline": ({"source.url": URL}, ["cannot download", URL, "--data.path"]),
    "https URL as --data.path": ({"path": URL}, [f"--data.path {URL!r} is a URL", "a local file, a folder or a hub",
                                                 f"--data.source.url {URL}"]),
    "http URL as --data.path": ({"path": "http://example.org/ratings.csv"},
                                ["'http://example.org/ratings.csv' is a URL",
                                 "--data.source.url http://example.org/ratings.csv"]),
    "file URL on another host": ({"path": "file://fileserver/data/log.csv"},
                                 ["file:// URL on the host 'fileserver'", "expected a local file"]),
}


@pytest.mark.parametrize("url", [URL, "http://example.org/ratings.csv", "HTTPS://EXAMPLE.ORG/A.TXT",
                                 "s3://bucket/log.parquet"])
def test_remote_url_as_path_points_at_data_url(tmp_path, url):
    """It used to say the file "does not exist", with no hint about --data.source.url."""
    module = SASRecDataModule(path=url, print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError) as error:
        module.sequences  # noqa: B018
    assert str(error.value).startswith(f"--data.path {url!r} is a URL, but --data.path takes a local file")
    assert f"--data.source.url {url}" in str(error.value) and "does not exist" not in str(error.value)
    with pytest.raises(DataError, match="is a URL, but --data.path takes a local file"):
        load_interactions(url)  # the library call too


def test_file_url_is_read_as_the_local_path(tmp_path):
    """``file:///abs/path`` names a local file unambiguously: it is read (percent-escapes decoded), and cached."""
    import pathlib

    folder = tmp_path / "my data"
    folder.mkdir()
    path = _write(folder, "log.csv", "user,item,ts\n1,2,1\n1,3,2\n2,2,1\n2,3,2\n")
    url = pathlib.Path(path).as_uri()
    assert url.startswith("file:///") and "my%20data" in url
    options = {"source": SourceOptions(timestamp_column="ts"),
               "preprocessing": PreprocessingOptions(min_user_interactions=0, min_item_interactions=0),
               "cache": CacheOptions(dir=str(tmp_path / "cache")), "print_statistics": False}
    from_url = SASRecDataModule(path=url, **options).sequences
    from_path = SASRecDataModule(path=str(path), **options).sequences
    assert load_interactions(url, timestamp_column="ts").to_pydict() == load_interactions(
        str(path), timestamp_column="ts").to_pydict()
    assert from_url.info["cache"]["hit"] is False and from_path.info["cache"]["hit"] is True  # the same source
    assert from_url.user_ids.tolist() == [1, 2] and from_url.items.tolist() == from_path.items.tolist()


@pytest.mark.parametrize("case", [*CASES, *REMOTE_CASES])
def test_cli_exits_2_without_traceback(tmp_path, monkeypatch, capsys, offline, case):
    """Every bad-input case, through the console-script entry point (in-process: no interpreter start-up)."""
    if case in REMOTE_CASES:
        data, fragments = REMOTE_CASES[case]
    else:
        name, content, kwargs, fragments = CASES[case]
        data = {"path": _write(tmp_path, name, content), **kwargs}
    argv = ["sasrec-lightning", "fit", "--seed_everything", "0", "--model", "sasrec_lightning.SASRecModule",
            "--data.cache.dir", str(tmp_path / "cache"), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"]
    for key, value in data.items():
        argv += [f"--data.{key}", str(value)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert exit_info.value.__suppress_context__  # raised "from None": nothing chained to print
    assert_one_error_line(capsys.readouterr().err, fragments)
    _assert_cache_empty(tmp_path / "cache")


# ``python -m sasrec_lightning.cli fit ...`` whose file read is slow: the SIGTERM cleanup is the command's
# (``cli/signals.py``), not the reader's, so the signal is sent to a running command.
SLOW_READ = textwrap.dedent("""
    import runpy, sys, time
    import datasets

    def slow_load(*args, **kwargs):  # the read is under way: its scratch folder exists
        print("reading", flush=True)
        time.sleep(60)

    datasets.load_dataset = slow_load
    sys.argv[0] = "sasrec-lightning"
    runpy.run_module("sasrec_lightning.cli", run_name="__main__", alter_sys=True)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_during_a_read_removes_the_scratch_folder(tmp_path):
    """``kill`` (SIGTERM) mid-read in ``fit``: the scratch folder in $TMPDIR goes, and the command dies by SIGTERM."""
    path = _write(tmp_path, "log.csv", "user,item\n1,2\n")
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    command = ["fit", "--model", "sasrec_lightning.SASRecModule", "--data.path", str(path),
               "--data.cache.dir", str(tmp_path / "cache"), "--trainer.fast_dev_run", "true",
               "--trainer.logger", "false"]
    process = subprocess.Popen([sys.executable, "-c", SLOW_READ, *command], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env, cwd=tmp_path, text=True)
    try:
        lines = iter(process.stdout.readline, "")  # up to the read (anything the command printed before it)
        assert any(line.strip() == "reading" for line in lines), "the command reached the read"
        assert [p.name for p in scratch_root.glob("sasrec-lightning-read-*")], "the read has a scratch folder"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
    finally:
        process.kill()
    assert list(scratch_root.glob("sasrec-lightning-read-*")) == []
