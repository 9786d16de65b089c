"""Bad input: one clear paragraph naming file/field/line, CLI exit 2 without a traceback, no cache entry."""

from __future__ import annotations

import gzip
import sys
import zipfile

import datasets
import huggingface_hub.constants
import pytest

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.cli import main
from sasrec_lightning.errors import DataError

datasets.disable_progress_bars()


def _corrupt_gzip(path):
    data = gzip.compress(b"".join(b"{'username': 'u%d', 'product_id': '1', 'date': '2017-01-01'}\n" % i
                                  for i in range(2000)))
    path.write_bytes(data[: len(data) // 2])  # truncated mid-stream


def _zip_without_ratings(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")


# name -> (file name, file content or writer, extra data args, fragments the message must contain)
CASES = {
    "missing file": ("absent.txt", None, {}, ["absent.txt", "does not exist", "--data.path"]),
    "empty file": ("empty.csv", "", {}, ["empty.csv", "is empty"]),
    "txt line not two integers": ("log.txt", "1 2\n1 3\n\n2 x\n", {}, ["log.txt", "line 4", "'x'", "two"]),
    "txt line with three fields": ("log.txt", "1 2\n1 3 4\n", {}, ["log.txt", "line 2", "'1 3 4'"]),
    "misnamed column": (
        "log.csv", "uid,item,ts\n1,2,3\n", {"timestamp_column": "ts"},
        ["log.csv", "['user']", "not found", "['uid', 'item', 'ts']", "--data.user_column"],
    ),
    "missing timestamp column": (
        "log.jsonl", '{"user": 1, "item": 2}\n', {"timestamp_column": "time"},
        ["log.jsonl", "['time']", "not found", "['user', 'item']", "--data.timestamp_column"],
    ),
    "missing literal key": (
        "steam.json", "{'username': 'a', 'product_id': '1', 'date': '2017-01-01'}\n{'username': 'b', 'date': 'x'}\n",
        {"user_column": "username", "item_column": "product_id", "timestamp_column": "date"},
        ["steam.json", "line 2", "'product_id'", "not found", "['date', 'username']"],
    ),
    "unparseable timestamp": (
        "log.csv", "user,item,time\n1,2,2017-01-01\n1,3,yesterday\n", {"timestamp_column": "time"},
        ["log.csv", "line 3", "'time'", "'yesterday'", "ISO-8601"],
    ),
    "non-numeric json timestamp": (
        "log.jsonl", '{"user": 1, "item": 2, "ts": true}\n', {"timestamp_column": "ts"},
        ["log.jsonl", "'ts'", "has type bool", "expected integers"],
    ),
    "non-numeric movielens timestamp": (
        "ratings.dat", "1::2::5::978300760\n1::3::4::soon\n", {},
        ["ratings.dat", "line 2", "Timestamp", "'soon'", "UserID::MovieID::Rating::Timestamp"],
    ),
    "all users filtered out": (
        "log.csv", "user,item\n1,2\n1,3\n2,2\n", {"min_user_interactions": 5},
        ["log.csv", "every interaction was filtered out", "min_user_interactions=5", "most active: 2"],
    ),
    "corrupt gzip": (
        "steam_reviews.json.gz", _corrupt_gzip,
        {"user_column": "username", "item_column": "product_id", "timestamp_column": "date"},
        ["steam_reviews.json.gz", "corrupt or truncated", "EOFError"],
    ),
    "not gzip at all": ("reviews.jsonl.gz", "plain text, not gzip\n", {}, ["reviews.jsonl.gz", "BadGzipFile"]),
    "corrupt zip": ("ml-1m.zip", "PK\x03\x04 not really a zip", {}, ["ml-1m.zip", "zip archive is corrupt"]),
    "zip without ratings.dat": ("ml-1m.zip", _zip_without_ratings, {}, ["ml-1m.zip", "no 'ratings.dat'"]),
}


def _write(tmp_path, name, content):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    return path


def _assert_cache_empty(cache):
    """Nothing at all is left under ``--data.cache_dir``: no sequences entry, no ``datasets`` Arrow cache."""
    left = sorted(str(path.relative_to(cache)) for path in cache.rglob("*") if not path.is_dir())
    assert left == [], left


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_data_error(tmp_path, case):
    name, content, kwargs, fragments = CASES[case]
    path = _write(tmp_path, name, content)
    module = SASRecDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), print_statistics=False, **kwargs)
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
    module = SASRecDataModule(path="nobody/no-such-dataset", format="hub", name="cfg", split="train",
                              cache_dir=str(tmp_path / "cache"), print_statistics=False)
    with pytest.raises(DataError, match=r"hub dataset 'nobody/no-such-dataset' \(name='cfg', split='train'\).*offline"):
        module.sequences  # noqa: B018
    _assert_cache_empty(tmp_path / "cache")


def test_hub_dataset_whose_files_disagree_is_a_data_error(tmp_path, offline):
    """A hub-style dataset (a folder of data files, loaded by ``load_dataset``) that cannot be built."""
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    (folder / "part-0.csv").write_text("user,item\n1,2\n1,3\n")
    (folder / "part-1.csv").write_text("customer,product,price\n1,2,9.5\n")
    module = SASRecDataModule(path=str(folder), format="hub", cache_dir=str(tmp_path / "cache"),
                              print_statistics=False)
    with pytest.raises(DataError, match=r"hub dataset .*my-dataset.* could not be built: .*consistent table") as error:
        module.sequences  # noqa: B018
    assert "\n" not in str(error.value)  # one paragraph


def test_url_download_while_offline_names_url_and_option(tmp_path, offline):
    url = "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz"
    module = SASRecDataModule(url=url, user_column="username", item_column="product_id", timestamp_column="date",
                              cache_dir=str(tmp_path / "cache"), print_statistics=False)
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
    module = SASRecDataModule(url=url, cache_dir=str(tmp_path / "cache"), print_statistics=False)
    with pytest.raises(DataError, match="cannot download https://example.org/steam_reviews.json.gz.*--data.path"):
        module.sequences  # noqa: B018


def test_successful_local_load_caches_only_the_sequences(tmp_path):
    """The raw ``datasets`` Arrow cache of a local file is temporary; only ``sequences/`` is kept."""
    path = _write(tmp_path, "log.csv", "user,item,ts\n1,2,1\n1,3,2\n1,4,3\n2,2,1\n2,4,2\n2,3,3\n")
    module = SASRecDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), timestamp_column="ts",
                              min_user_interactions=0, min_item_interactions=0, print_statistics=False)
    assert module.sequences.num_items == 3
    assert [child.name for child in (tmp_path / "cache").iterdir()] == ["sequences"]


URL = "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz"
# Bad input that is not a local file: (data args, fragments the message must contain).
REMOTE_CASES = {
    "hub id while offline": ({"path": "nobody/no-such-dataset", "format": "hub"},
                             ["hub dataset 'nobody/no-such-dataset'", "offline mode"]),
    "download while offline": ({"url": URL}, ["cannot download", URL, "--data.path"]),
}


@pytest.mark.parametrize("case", [*CASES, *REMOTE_CASES])
def test_cli_exits_2_without_traceback(tmp_path, monkeypatch, capsys, offline, case):
    """Every bad-input case, through the console-script entry point (in-process: no interpreter start-up)."""
    if case in REMOTE_CASES:
        data, fragments = REMOTE_CASES[case]
    else:
        name, content, kwargs, fragments = CASES[case]
        data = {"path": _write(tmp_path, name, content), **kwargs}
    argv = ["sasrec-lightning", "fit", "--seed_everything", "0", "--model", "sasrec_lightning.SASRecModule",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"]
    for key, value in data.items():
        argv += [f"--data.{key}", str(value)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert exit_info.value.__suppress_context__  # raised "from None": nothing chained to print
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    message = lines[-1]
    assert message.startswith("error: ") and not any(line.startswith("error: ") for line in lines[:-1]), err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    _assert_cache_empty(tmp_path / "cache")
