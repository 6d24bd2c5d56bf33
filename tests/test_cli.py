"""The ``facesearch`` command end to end: real photos, real model workers, real PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from facesearch.models import DEFAULT_MODEL, DLIB_MODEL, SFACE_MODEL, default_thresholds

from .conftest import photos_of

DOMAIN = "lfw-cli"


def pick_people(lfw: Path, min_photos: int, count: int, exactly: bool = False) -> list[str]:
    """A deterministic spread of LFW people (every n-th by name), not the first alphabetically."""
    found = sorted(
        d.name for d in lfw.iterdir()
        if (n := len(list(d.glob("*.jpg")))) == min_photos or (not exactly and n >= min_photos))
    step = max(1, len(found) // count)
    return found[::step][:count]


@pytest.fixture(scope="module")
def enrolled(lfw: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> dict:
    """24 people with >= 5 photos: 4 enrolled through the CLI (DeepFace's folder layout, made of
    links to LFW), the 5th held out."""
    root = tmp_path_factory.mktemp("db_path")
    held_out = {}
    for person in pick_people(lfw, 5, 24):
        photos = photos_of(lfw, person)
        (root / person).mkdir()
        for p in photos[:4]:
            (root / person / p.name).symlink_to(p)
        held_out[person] = photos[4]
    (root / "ds_model_arcface_detector_opencv.pkl").write_bytes(b"DeepFace cache: ignored")
    proc = cli("enroll", root, "--domain", DOMAIN, "--json")
    return {"root": root, "held_out": held_out, "summary": json.loads(proc.stdout)}


def recognize(cli, photo: Path, *args: str) -> dict:
    return json.loads(cli("recognize", photo, "--domain", DOMAIN, "--json", *args).stdout)


def faces_in_db(db, domain: str = DOMAIN) -> int:
    return db.execute(
        "SELECT count(*) FROM faces f JOIN domains d ON d.id = f.domain_id WHERE d.name = %s",
        (domain,)).fetchone()[0]


def test_enroll_summary(enrolled: dict) -> None:
    s = enrolled["summary"]
    assert s["photos"] == 96 and s["people"] == 24
    assert (s["domain"], s["model"]) == (DOMAIN, DEFAULT_MODEL)  # a new domain: the default model
    assert s["enrolled"] + s["no_face"] + s["unreadable"] == 96
    assert s["enrolled"] >= 90 and s["already_enrolled"] == 0


def recognize_many(cli, photos: list[Path]) -> list[dict]:
    """Several photos in one run: one JSON object per line, in order."""
    out = cli("recognize", *photos, "--domain", DOMAIN, "--json").stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["photo"] for r in results] == [str(p) for p in photos]
    return results


def test_held_out_photos_are_recognized(enrolled: dict, cli) -> None:
    people = list(enrolled["held_out"])
    results = recognize_many(cli, [enrolled["held_out"][p] for p in people])
    right = 0
    for person, result in zip(people, results, strict=True):
        assert result["model"] == DEFAULT_MODEL
        assert result["threshold"] == default_thresholds(DEFAULT_MODEL)[0]
        faces = result["faces"]
        right += bool(faces and faces[0]["matches"] and faces[0]["matches"][0]["person"] == person)
    assert right / len(people) >= 0.95, f"{right}/{len(people)} right"


def test_strangers_match_nobody(enrolled: dict, cli, lfw: Path) -> None:
    strangers = pick_people(lfw, 1, 24, exactly=True)
    assert not set(strangers) & set(enrolled["held_out"])
    results = recognize_many(cli, [photos_of(lfw, p)[0] for p in strangers])
    unmatched = sum(all(not f["matches"] for f in r["faces"]) for r in results)
    assert unmatched / len(strangers) >= 0.90, f"{unmatched}/{len(strangers)} unmatched"


def test_one_bad_photo_among_many(enrolled: dict, cli, lfw: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    good = photos_of(lfw, "Tony_Blair")[0]
    proc = cli("recognize", good, bad, "--domain", DOMAIN, "--json", check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and "1 of 2 photos" in proc.stderr
    assert "faces" in lines[0] and lines[1]["error"]["code"] == "unsupported_image"


def test_recognize_json_shape_and_options(enrolled: dict, cli) -> None:
    person, photo = next(iter(enrolled["held_out"].items()))
    result = recognize(cli, photo, "--top-k", "3", "--threshold", "0.5")
    face = result["faces"][0]
    assert set(face["box"]) == {"x", "y", "w", "h"} and face["score"] > 0
    matches = face["matches"]
    assert 1 <= len(matches) <= 3 and matches[0]["person"] == person
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert all(m["distance"] < 0.5 and abs(m["similarity"] - (1 - m["distance"])) < 1e-4
               for m in matches)
    assert result["threshold"] == 0.5 and set(result["timings_ms"]) >= {"decode", "detect", "embed"}
    text = cli("recognize", photo, "--domain", DOMAIN).stdout
    assert person in text


def test_reenrolling_is_a_no_op(enrolled: dict, cli, db) -> None:
    before = faces_in_db(db)
    again = json.loads(cli("enroll", enrolled["root"], "--domain", DOMAIN, "--json").stdout)
    assert again["enrolled"] == 0
    assert again["already_enrolled"] == enrolled["summary"]["enrolled"]
    assert faces_in_db(db) == before


def test_enroll_photos_as_person_rename_and_delete(enrolled: dict, cli, db, lfw: Path) -> None:
    photos = photos_of(lfw, "Gerhard_Schroeder")[:3]
    out = json.loads(cli("enroll", *photos, "--domain", DOMAIN, "--person", "Gerhard", "--json").stdout)
    assert out["enrolled"] == 3
    people = json.loads(cli("people", "list", "--domain", DOMAIN, "--json").stdout)
    assert {"name": "Gerhard", "faces": 3} in [{k: p[k] for k in ("name", "faces")} for p in people]

    cli("people", "rename", "--domain", DOMAIN, "Gerhard", "Gerhard Schröder")
    result = recognize(cli, photos_of(lfw, "Gerhard_Schroeder")[5])
    assert result["faces"][0]["matches"][0]["person"] == "Gerhard Schröder"

    # Ids are numbered per domain: each check names the domain.
    in_domain = "domain_id = (SELECT id FROM domains WHERE name = %s)"
    pid = db.execute(f"SELECT id FROM people WHERE {in_domain} AND name = 'Gerhard Schröder'",
                     (DOMAIN,)).fetchone()[0]
    cli("people", "delete", "--domain", DOMAIN, "Gerhard Schröder")
    assert db.execute(f"SELECT count(*) FROM faces WHERE {in_domain} AND person_id = %s",
                      (DOMAIN, pid)).fetchone() == (0,)
    assert db.execute(f"SELECT count(*) FROM people WHERE {in_domain} AND id = %s",
                      (DOMAIN, pid)).fetchone() == (0,)
    result = recognize(cli, photos_of(lfw, "Gerhard_Schroeder")[5])
    assert all(m["person"] != "Gerhard Schröder" for m in result["faces"][0]["matches"])


def test_verify(enrolled: dict, cli, lfw: Path) -> None:
    a, b = photos_of(lfw, "Tony_Blair")[:2]
    same = json.loads(cli("verify", a, b, "--json").stdout)
    assert same["same_person"] is True and same["distance"] < same["threshold"]
    assert (same["model"], same["threshold"]) == (DEFAULT_MODEL, default_thresholds(DEFAULT_MODEL)[1])
    other = json.loads(cli("verify", a, photos_of(lfw, "Colin_Powell")[0], "--json").stdout)
    assert other["same_person"] is False and other["distance"] >= other["threshold"]
    assert "same person" in cli("verify", a, b).stdout
    # With another model, or a domain's: that model, at its own threshold.
    dlib = json.loads(cli("verify", a, b, "--model", DLIB_MODEL, "--json").stdout)
    assert (dlib["model"], dlib["threshold"]) == (DLIB_MODEL, default_thresholds(DLIB_MODEL)[1])
    assert dlib["same_person"] is True and dlib["distance"] != same["distance"]
    mine = json.loads(cli("verify", a, b, "--domain", DOMAIN, "--json").stdout)
    assert mine["model"] == DEFAULT_MODEL and mine["distance"] == same["distance"]
    proc = cli("verify", a, b, "--model", "nope", check=False)
    assert proc.returncode == 1 and "unknown model 'nope'" in proc.stderr and DLIB_MODEL in proc.stderr
    proc = cli("verify", a, b, "--domain", DOMAIN, "--model", DLIB_MODEL, check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_detect(cli, lfw: Path) -> None:
    out = json.loads(cli("detect", lfw / "Tony_Blair" / "Tony_Blair_0001.jpg", "--json").stdout)
    assert out["faces_found"] >= 1 and len(out["faces"][0]["landmarks"]) == 5


def test_domains(enrolled: dict, cli) -> None:
    assert "(model sface-2021dec)" in cli("domains", "create", "cli-temp").stdout
    cli("domains", "create", "cli-temp-dlib", "--model", DLIB_MODEL)
    listed = {d["name"]: d for d in json.loads(cli("domains", "list", "--json").stdout)}
    assert listed[DOMAIN]["people"] >= 24 and listed["cli-temp"]["faces"] == 0
    assert (listed[DOMAIN]["model"], listed["cli-temp"]["model"], listed["cli-temp-dlib"]["model"]) == (
        DEFAULT_MODEL, DEFAULT_MODEL, DLIB_MODEL)
    assert f"cli-temp-dlib\t{DLIB_MODEL}\t0 people" in cli("domains", "list").stdout
    proc = cli("domains", "create", "cli-temp-bad", "--model", "arcface", check=False)
    assert proc.returncode == 1 and "unknown model 'arcface'" in proc.stderr
    assert SFACE_MODEL in proc.stderr and "deepface:ArcFace" in proc.stderr
    cli("domains", "delete", "cli-temp-dlib", "--yes")
    proc = cli("domains", "create", "cli-temp", check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert "deleted domain cli-temp" in cli("domains", "delete", "cli-temp", "--yes").stdout
    proc = cli("domains", "delete", DOMAIN, check=False)  # no --yes, no terminal: refused
    assert proc.returncode != 0


# -- bad input: a clear message, exit 1 (2 for usage), nothing stored changes -------------------

def bad_files(tmp: Path, lfw: Path) -> dict[str, Path]:
    jpeg = (lfw / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    files = {
        "empty.jpg": b"",
        "text.jpg": b"this is not a photo\n" * 50,
        "truncated.jpg": jpeg[: len(jpeg) // 3],
    }
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 180, 160)).save(buf, "PNG")
    files["noface.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buf, "PNG")  # 50 MP, tiny file
    files["huge.png"] = buf.getvalue()
    out = {}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        out[name] = tmp / name
    return out


@pytest.mark.parametrize("name, message", [
    ("empty.jpg", "empty"),
    ("text.jpg", "not a supported image"),
    ("truncated.jpg", "truncated or corrupt"),
    ("huge.png", "megapixels, over the limit"),
])
def test_bad_photos(enrolled: dict, cli, db, lfw: Path, tmp_path: Path, name: str,
                    message: str) -> None:
    path = bad_files(tmp_path, lfw)[name]
    before = faces_in_db(db)
    for args in (("recognize", path, "--domain", DOMAIN),
                 ("enroll", path, "--domain", DOMAIN, "--person", "Bad Input"),
                 ("verify", path, path), ("detect", path)):
        proc = cli(*args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert faces_in_db(db) == before


def test_photo_without_face(enrolled: dict, cli, db, lfw: Path, tmp_path: Path) -> None:
    path = bad_files(tmp_path, lfw)["noface.png"]
    before = faces_in_db(db)
    result = recognize(cli, path)
    assert result["faces"] == [] and result["faces_found"] == 0
    proc = cli("enroll", path, "--domain", DOMAIN, "--person", "Nobody", check=False)
    assert proc.returncode == 1 and "no face" in proc.stderr
    proc = cli("verify", path, lfw / "Tony_Blair" / "Tony_Blair_0001.jpg", check=False)
    assert proc.returncode == 1 and "no face found in" in proc.stderr
    assert faces_in_db(db) == before
    assert "Nobody" not in cli("people", "list", "--domain", DOMAIN).stdout


def test_unknown_domain_and_person(enrolled: dict, cli, lfw: Path) -> None:
    photo = lfw / "Tony_Blair" / "Tony_Blair_0001.jpg"
    proc = cli("recognize", photo, "--domain", "no-such-domain", check=False)
    assert proc.returncode == 1 and "unknown domain 'no-such-domain'" in proc.stderr
    proc = cli("people", "delete", "--domain", DOMAIN, "No Such Person", check=False)
    assert proc.returncode == 1 and "no person named" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("recognize", "/nonexistent.jpg", "--domain", DOMAIN), "does not exist"),
    (("recognize",), "Missing argument"),
    (("recognize", "x.jpg", "--domain", DOMAIN, "--top-k", "0"), "top-k"),
    (("frobnicate",), "No such command"),
])
def test_usage_errors_exit_2(cli, args: tuple[str, ...], message: str) -> None:
    proc = cli(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.parametrize("domain, person", [
    ("../../etc", "x"), ("a b", "x"), (DOMAIN, "bad\x07bell"), (DOMAIN, "x" * 300),
])
def test_hostile_names(enrolled: dict, cli, db, lfw: Path, domain: str, person: str) -> None:
    before = faces_in_db(db)
    proc = cli("enroll", lfw / "Tony_Blair" / "Tony_Blair_0001.jpg", "--domain", domain,
               "--person", person, check=False)
    assert proc.returncode == 1 and "name" in proc.stderr and "Traceback" not in proc.stderr
    assert faces_in_db(db) == before


def test_faces_list_and_delete(enrolled: dict, cli, db) -> None:
    person = next(iter(enrolled["held_out"]))
    faces = json.loads(cli("faces", "list", "--domain", DOMAIN, "--person", person, "--json").stdout)
    assert len(faces) == 4
    assert all(f["person"] == person and f["model"] == DEFAULT_MODEL for f in faces)
    cli("faces", "delete", "--domain", DOMAIN, str(faces[0]["id"]))
    gone = db.execute("SELECT count(*) FROM faces WHERE domain_id ="
                      " (SELECT id FROM domains WHERE name = %s) AND id = %s", (DOMAIN, faces[0]["id"]))
    assert gone.fetchone() == (0,)
    left = json.loads(cli("faces", "list", "--domain", DOMAIN, "--person", person, "--json").stdout)
    assert [f["id"] for f in left] == [f["id"] for f in faces[1:]]
    proc = cli("faces", "delete", "--domain", DOMAIN, str(faces[0]["id"]), check=False)
    assert proc.returncode == 1 and "no face" in proc.stderr
    # Enrolling that photo again restores the face (the deletion forgot its hash too).
    again = json.loads(cli("enroll", enrolled["root"], "--domain", DOMAIN, "--json").stdout)
    assert again["enrolled"] == 1


def test_enroll_stores_thumbnails_unless_turned_off(enrolled: dict, cli, db, lfw: Path) -> None:
    count = ("SELECT count(*), count(thumbnail), max(length(thumbnail)) FROM faces f"
             " JOIN domains d ON d.id = f.domain_id WHERE d.name = %s")
    faces, thumbnails, largest = db.execute(count, (DOMAIN,)).fetchone()
    assert faces == thumbnails > 0 and largest < 8000  # a JPEG crop of a few KB with every face
    photo = photos_of(lfw, "Tony_Blair")[0]
    cli("enroll", photo, "--domain", "cli-no-thumbs", "--person", "Tony", env={"FACESEARCH_THUMBNAILS": "0"})
    assert db.execute(count, ("cli-no-thumbs",)).fetchone()[:2] == (1, 0)
    bad = cli("enroll", photo, "--domain", "cli-no-thumbs", "--person", "Tony",
              env={"FACESEARCH_THUMBNAILS": "maybe"}, check=False)
    assert bad.returncode == 1 and "FACESEARCH_THUMBNAILS must be 1 or 0" in bad.stderr


# -- a domain moved to another model -----------------------------------------------------------

def test_set_model_moves_a_domain_by_enrolling_its_photos_again(cli, db, lfw: Path,
                                                                  tmp_path: Path) -> None:
    """4 people on dlib-resnet-v1 (3 photos each), moved to sface-2021dec from a folder with 4
    photos of 3 of them: refused without --yes (one person would be left without a face) with the
    domain still answering on dlib-resnet-v1, then done: same people and ids, only sface faces,
    recognize answers with sface; the left-out person is named."""
    domain = "cli-move"
    people = pick_people(lfw, 8, 4)
    before, after = tmp_path / "before", tmp_path / "after"
    for name in people:
        (before / name).mkdir(parents=True)
        for p in photos_of(lfw, name)[:3]:
            (before / name / p.name).symlink_to(p)
        if name != people[-1]:
            (after / name).mkdir(parents=True)
            for p in photos_of(lfw, name)[:4]:
                (after / name / p.name).symlink_to(p)
    held_out = {name: photos_of(lfw, name)[6] for name in people[:3]}

    def recognized(threshold: float | None = None) -> list[dict]:
        extra = () if threshold is None else ("--threshold", str(threshold))
        out = cli("recognize", *held_out.values(), "--domain", domain, "--json", *extra).stdout
        return [json.loads(line) for line in out.splitlines()]

    def ids() -> dict[str, int]:
        return {p["name"]: p["id"] for p in json.loads(
            cli("people", "list", "--domain", domain, "--json").stdout)}

    def models() -> dict[str, int]:
        return dict(db.execute("SELECT m.name, count(*) FROM faces f JOIN models m ON m.id = f.model_id"
                               " JOIN domains d ON d.id = f.domain_id WHERE d.name = %s GROUP BY 1",
                               (domain,)).fetchall())

    cli("domains", "create", domain, "--model", DLIB_MODEL)
    enrolled = json.loads(cli("enroll", before, "--domain", domain, "--json").stdout)
    assert enrolled["model"] == DLIB_MODEL and enrolled["enrolled"] >= 11
    people_ids = ids()
    assert {r["model"] for r in recognized()} == {DLIB_MODEL}

    refused = cli("domains", "set-model", domain, SFACE_MODEL, after, check=False)
    assert refused.returncode == 1
    assert f"no photo enrolled under {SFACE_MODEL}: {people[-1]}" in refused.stderr
    # Not switched: the domain answers on its old model; the new faces wait beside the old ones.
    assert {r["model"] for r in recognized()} == {DLIB_MODEL}
    assert models() == {DLIB_MODEL: enrolled["enrolled"], SFACE_MODEL: 12}

    proc = cli("domains", "set-model", domain, "nope", after, check=False)
    assert proc.returncode == 1 and "unknown model 'nope'" in proc.stderr

    # Again, with --yes: resumes (nothing is embedded twice), switches, deletes the old faces.
    moved = json.loads(cli("domains", "set-model", domain, SFACE_MODEL, after, "--yes", "--json").stdout)
    assert (moved["model"], moved["previous_model"]) == (SFACE_MODEL, DLIB_MODEL)
    assert (moved["photos"], moved["enrolled"], moved["already_enrolled"], moved["refused"]) == (12, 0, 12, 0)
    assert moved["deleted"] == {DLIB_MODEL: enrolled["enrolled"]}
    assert moved["people_without_faces"] == [people[-1]]
    assert models() == {SFACE_MODEL: 12} and ids() == people_ids  # same people, same ids
    listed = {d["name"]: d for d in json.loads(cli("domains", "list", "--json").stdout)}
    assert listed[domain]["model"] == SFACE_MODEL
    results = recognized()
    assert all(r["model"] == SFACE_MODEL and r["threshold"] == default_thresholds(SFACE_MODEL)[0]
               for r in results)
    named = [r["faces"][0]["matches"][0]["person"] if r["faces"] and r["faces"][0]["matches"] else None
             for r in results]
    assert named == list(held_out), named
    # The human summary names who is left without a face.
    text = cli("domains", "set-model", domain, SFACE_MODEL, after, "--yes")
    assert f"is on {SFACE_MODEL}" in text.stdout
    assert f"no face under {SFACE_MODEL}: {people[-1]}" in text.stderr
    cli("domains", "delete", domain, "--yes")
