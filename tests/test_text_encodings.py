"""Byte-order marks in text inputs: a UTF-8 one is dropped (it is not data), UTF-16/UTF-32 ones are named."""

from __future__ import annotations

import codecs
import gzip
import logging

import numpy as np
import pytest

from sasrec_lightning.data.sources import load_interactions
from sasrec_lightning.data.vocabulary import read_user_list
from sasrec_lightning.errors import DataError

# file name -> (content, load_interactions options): every text format, and compressed files (whose
# lines datasets decodes without looking at an encoding option)
TEXT_FILES = {
    "log.txt": ("1 2\n1 3\n2 2\n", {}),
    "log.txt.gz": ("1 2\n1 3\n2 2\n", {}),
    "ratings.dat": ("1::2::5::978300760\n1::3::4::978300761\n", {}),
    "log.csv": ("user,item,ts\n1,2,5\n1,3,6\n", {"timestamp_column": "ts"}),
    "quoted.csv": ('"user","item"\n"u1","2"\n', {}),
    "log.tsv": ("user\titem\nu1\t2\nu2\t3\n", {}),
    "log.jsonl": ('{"user": 1, "item": 2}\n{"user": 1, "item": 3}\n', {}),
    "steam.json": ("{'user': 'a', 'item': '1'}\n{'user': 'b', 'item': '2'}\n", {}),
    "steam.json.gz": ("{'user': 'a', 'item': '1'}\n{'user': 'b', 'item': '2'}\n", {}),
    "literal.txt": ("{'user': 'a', 'item': '1'}\n", {"format": "literal"}),
}


def _write(path, data: bytes):
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return str(path)


@pytest.mark.parametrize("name", list(TEXT_FILES))
def test_utf8_byte_order_mark_is_not_part_of_the_first_line(tmp_path, name):
    r"""The first user used to be '\ufeff1' ("is not an integer") or a different id than without the mark."""
    content, options = TEXT_FILES[name]
    (tmp_path / "plain").mkdir()
    (tmp_path / "marked").mkdir()
    plain = load_interactions(_write(tmp_path / "plain" / name, content.encode()), **options)
    marked = load_interactions(_write(tmp_path / "marked" / name, codecs.BOM_UTF8 + content.encode()), **options)
    assert marked.to_pydict() == plain.to_pydict()


@pytest.mark.parametrize("encoding, announced", [("utf-16", "UTF-16 (little-endian)"),
                                                 ("utf-32", "UTF-32 (little-endian)")])
@pytest.mark.parametrize("name", ["log.txt", "ratings.dat", "log.csv", "log.jsonl", "steam.json"])
def test_utf16_or_utf32_text_is_named_as_such(tmp_path, name, encoding, announced):
    """It used to be called a binary file ("byte 0xff ... the file holds NUL bytes")."""
    content, options = TEXT_FILES[name]
    path = _write(tmp_path / name, content.encode(encoding))  # Python writes the byte-order mark
    with pytest.raises(DataError) as error:
        load_interactions(path, **options)
    message = str(error.value)
    family = encoding.upper()
    assert f"the file starts with a {announced} byte-order mark, so it is {family} text, not UTF-8" in message
    assert f"iconv -f {family} -t UTF-8 {name}" in message and "binary" not in message and "\n" not in message


def test_big_endian_utf16_is_named(tmp_path):
    path = _write(tmp_path / "log.csv", codecs.BOM_UTF16_BE + "user,item\n1,2\n".encode("utf-16-be"))
    with pytest.raises(DataError, match=r"UTF-16 \(big-endian\) byte-order mark"):
        load_interactions(path)


# ------------------------------------------------------------------------------ --data.predict_users
@pytest.mark.parametrize("name, content", [("users.txt", "5\n6\n"), ("users.jsonl", '{"user": 5}\n{"user": 6}\n')])
def test_predict_users_with_a_utf8_byte_order_mark_keeps_the_first_user(tmp_path, caplog, name, content):
    r"""The first user used to be skipped as unknown: the warning listed '\ufeff5'."""
    path = tmp_path / name
    path.write_bytes(codecs.BOM_UTF8 + content.encode())
    with caplog.at_level(logging.WARNING):
        assert read_user_list(str(path), np.array([4, 5, 6])).tolist() == [1, 2]
        assert read_user_list(str(path), np.array(["4", "5", "6"])).tolist() == [1, 2]
    assert "skipped" not in caplog.text


@pytest.mark.parametrize("name", ["users.txt", "users.jsonl"])
def test_predict_users_in_utf16_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_text("5\n" if name.endswith(".txt") else '{"user": 5}\n', encoding="utf-16")
    with pytest.raises(DataError) as error:
        read_user_list(str(path), np.array([5]))
    assert str(error.value).startswith(f"--data.predict_users {str(path)!r}: the file starts with a UTF-16 "
                                       "(little-endian) byte-order mark, so it is UTF-16 text, not UTF-8")


def test_predict_users_in_latin1_is_a_data_error_naming_the_line(tmp_path):
    """It used to end in a UnicodeDecodeError traceback."""
    path = tmp_path / "users.txt"
    path.write_bytes(codecs.BOM_UTF8 + "5\n6\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        read_user_list(str(path), np.array([5]))
    assert str(error.value).startswith(f"--data.predict_users {str(path)!r}, line 3: byte 0xe9 is not valid UTF-8")
    assert "iconv -f latin1 -t utf-8 users.txt" in str(error.value)


def test_error_after_a_byte_order_mark_names_the_right_line(tmp_path):
    """The error path re-reads the file: a byte-order mark used to be reported as a bad JSON line 1."""
    path = _write(tmp_path / "log.jsonl", codecs.BOM_UTF8 + b'{"user": 1, "item": 2}\n{"user": 1, "item": \n')
    with pytest.raises(DataError, match=r"log\.jsonl, line 2: not valid JSON \(Expecting value"):
        load_interactions(path)
