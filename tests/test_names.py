from __future__ import annotations

import pytest

from facesearch import names
from facesearch.errors import InvalidName


@pytest.mark.parametrize("name", ["slovenia", "serbia", "t1", "acme.eu-west_2", "A" * 63])
def test_good_domains(name: str) -> None:
    assert names.domain_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "../etc", "x/y", "é", "a" * 64, "a;DROP TABLE faces",
                                  "tab\there", "nul\x00"])
def test_bad_domains(name: str) -> None:
    with pytest.raises(InvalidName, match="domain"):
        names.domain_name(name)


@pytest.mark.parametrize("name, stored", [
    ("George_W_Bush", "George_W_Bush"),
    ("  Željko Ivanović ", "Željko Ivanović"),
    ("Robert'); DROP TABLE people;--", "Robert'); DROP TABLE people;--"),
    ("李小龙", "李小龙"),
    ("e\u0301", "\u00e9"),  # NFC: one stored spelling per name
])
def test_good_people(name: str, stored: str) -> None:
    assert names.person_name(name) == stored


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "new\nline", "nul\x00", "bell\x07",
                                  "evil\u202eexe.jpg"])
def test_bad_people(name: str) -> None:
    with pytest.raises(InvalidName):
        names.person_name(name)
