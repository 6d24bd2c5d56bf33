"""The web page at / in a real browser: Debian's headless Chromium, driven by Playwright, against
the real server, enrolling and recognizing LFW photos as a person would (drop, file picker,
keyboard), reading the names off the page.

Set FACESEARCH_SCREENSHOT=path.png to also save the recognize view with the photo itself hidden
(docs/screenshot-recognize.png is made so).
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import photos_of
from .conftest import ADMIN_KEY, jpeg, pick_people, start_server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: the web page's browser tests need Debian's chromium package "
                "(apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
expect = sync_api.expect

DOMAIN = "web-ui"
TIMEOUT = 60_000  # ms: a photo waits for a model worker, which may be busy with other tests' work


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        # Never Playwright's own browser download: the system's Chromium.
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def people(lfw: Path, server) -> dict[str, list[Path]]:
    """Two LFW people with 4 photos or more (named with spaces): 3 to enroll, the 4th to recognize.
    Each of their photos shows one face to the default model (many LFW photos show a second
    person too, which enrollment rightly refuses without ``?face=``; not what this page tests)."""
    def one_face(photo: Path) -> bool:
        r = server.admin.post("/v1/detect", files={"photo": jpeg(photo)})
        return r.status_code == 200 and r.json()["faces_found"] == 1

    chosen = [name for name in pick_people(lfw, 4, 40, skip=3)
              if all(one_face(p) for p in photos_of(lfw, name)[:4])][:2]
    assert len(chosen) == 2
    return {name.replace("_", " "): photos_of(lfw, name)[:4] for name in chosen}


@pytest.fixture(scope="module")
def seen(server) -> dict[str, list[str]]:
    """What the pages of this module did: script errors, and requests to other hosts (none)."""
    return {"errors": [], "elsewhere": [], "origin": server.base}


def new_page(browser, seen: dict, **context: object):
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(TIMEOUT)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("request", lambda r: r.url.startswith((seen["origin"], "blob:", "data:"))
            or seen["elsewhere"].append(r.url))
    return page


@pytest.fixture(scope="module")
def page(browser, server, seen: dict):
    """A page signed in with the admin key, in the domain it created through the page."""
    page = new_page(browser, seen, viewport={"width": 1100, "height": 850})
    page.goto(server.base + "/#/domain")
    page.get_by_label("API key").fill("fsa_wrong_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That key was refused: unknown or revoked API key")
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("New domain").fill(DOMAIN)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#session-domain")).to_have_text(DOMAIN)
    expect(page.get_by_role("heading", name="People")).to_be_visible()
    return page


def add_person(page, name: str) -> None:
    page.get_by_role("link", name="People", exact=True).click()
    page.get_by_label("New person").fill(name)
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()


def drop(page, target: str, files: list[tuple[str, bytes]]) -> None:
    """Drop files on an element, as a drag from the desktop would (a DataTransfer of Files)."""
    payload = [{"name": name, "data": base64.b64encode(data).decode()} for name, data in files]
    transfer = page.evaluate_handle("""files => {
        const transfer = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], f.name, {type: 'image/jpeg'}));
        }
        return transfer;
    }""", payload)
    for event in ("dragenter", "dragover", "drop"):
        page.locator(target).dispatch_event(event, {"dataTransfer": transfer})


def collage(*photos: Path) -> bytes:
    """A photo we make: LFW portraits side by side."""
    canvas = Image.new("RGB", (250 * len(photos), 250))
    for i, photo in enumerate(photos):
        canvas.paste(Image.open(photo).convert("RGB"), (250 * i, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def enrolled(page, people: dict[str, list[Path]], server) -> dict[str, int]:
    """Both people enrolled through the page: the first by dropping 3 photos on the drop zone,
    the second through the file picker opened from the keyboard. Returns their ids."""
    first, second = people
    add_person(page, first)
    drop(page, "#enroll-drop", [(p.name, p.read_bytes()) for p in people[first][:3]])
    expect(page.locator("#enroll-count")).to_contain_text("3 of 3 photos done: 3 enrolled",
                                                          timeout=TIMEOUT)
    expect(page.locator("#faces-list img[src^='blob:']")).to_have_count(3)
    expect(page.locator("#person-faces")).to_have_text("3 faces")

    add_person(page, second)
    # Focus and key press in one step (locator.press): after a separate focus(), a CI run on a
    # busy machine once waited in vain for the file chooser.
    with page.expect_file_chooser() as chooser:
        page.locator("#enroll-drop").press("Enter")
    assert chooser.value.is_multiple()
    chooser.value.set_files(people[second][:3])
    expect(page.locator("#enroll-count")).to_contain_text("3 of 3 photos done: 3 enrolled",
                                                          timeout=TIMEOUT)
    expect(page.locator("#faces-list img[src^='blob:']")).to_have_count(3)

    listed = server.admin.get(f"/v1/domains/{DOMAIN}/people").json()["people"]
    assert {p["name"]: p["faces"] for p in listed} == {first: 3, second: 3}
    return {p["name"]: p["id"] for p in listed}


def test_people_list_search_and_thumbnails(page, enrolled: dict[str, int]) -> None:
    _, second = enrolled
    page.get_by_role("link", name="People", exact=True).click()
    cards = page.locator("#people-list .person-card")
    expect(cards).to_have_count(2)
    expect(page.locator("#people-list img[src^='blob:']")).to_have_count(2)  # fetched with the key
    page.get_by_label("Search by name").fill(second.split()[-1].lower())
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text(second)
    expect(cards.first).to_contain_text("3 faces")
    page.get_by_label("Search by name").fill("")
    expect(cards).to_have_count(2)


def test_recognize_shows_boxes_names_and_timings(page, enrolled: dict[str, int],
                                                 people: dict[str, list[Path]]) -> None:
    first, second = enrolled
    page.get_by_role("link", name="Recognize").click()
    # Dropped: one held-out photo.
    held_out = people[first][3]
    drop(page, "#recognize-drop", [(held_out.name, held_out.read_bytes())])
    expect(page.locator("#recognize-boxes .box")).to_have_count(1)
    expect(page.locator("#recognize-boxes .box .name")).to_have_text(first)
    expect(page.locator("#recognize-timings")).to_contain_text(re.compile(r"detect [\d.]+ ms .* total"))

    # Picked: two people side by side, each named on their own box.
    page.locator("#recognize-file").set_input_files(files=[{
        "name": "two.jpg", "mimeType": "image/jpeg",
        "buffer": collage(people[first][3], people[second][3])}])
    boxes = page.locator("#recognize-boxes .box")
    expect(boxes).to_have_count(2)
    expect(page.locator("#recognize-status")).to_contain_text("2 faces found, 2 recognized")
    names = {}
    for i in range(2):
        box = boxes.nth(i)
        left = box.bounding_box()["x"] - page.locator("#recognize-stage").bounding_box()["x"]
        names["left" if left < page.locator("#recognize-stage").bounding_box()["width"] / 2
              else "right"] = box.locator(".name").inner_text()
    assert names == {"left": first, "right": second}
    # The matches of a face show on hover, and in the list below the photo.
    boxes.first.hover()
    expect(boxes.first.locator(".popup")).to_be_visible()
    expect(boxes.first.locator(".popup")).to_contain_text(re.compile(r"distance 0\.\d{3}"))
    expect(page.locator("#recognize-faces li")).to_have_count(2)
    screenshot = os.environ.get("FACESEARCH_SCREENSHOT")
    if screenshot:
        # LFW's photos are not ours to publish, not even blurred: the photo is replaced by a plain
        # pattern; the boxes, names and timings are the page's real output.
        page.locator("#recognize-img").evaluate(
            "img => { img.style.opacity = '0'; img.parentElement.style.background ="
            " 'repeating-linear-gradient(45deg, #d9dde3 0 12px, #e8ebef 12px 24px)'; }")
        page.set_viewport_size({"width": 1000, "height": 720})
        boxes.first.hover()
        page.screenshot(path=screenshot)
        page.set_viewport_size({"width": 1100, "height": 850})


def test_threshold_and_matches_per_face(page, enrolled: dict[str, int],
                                        people: dict[str, list[Path]]) -> None:
    """The recognize view shows the domain's default threshold; a stricter one typed in, or
    fewer matches per face, recognizes the photo again with them."""
    first, second = enrolled
    page.get_by_role("link", name="Recognize").click()
    default = page.locator("#recognize-threshold").get_attribute("placeholder")
    assert float(default) > 0.1
    expect(page.locator("#recognize-threshold-hint")).to_contain_text(f"Domain default {default}")
    page.locator("#recognize-file").set_input_files(files=[{
        "name": "two.jpg", "mimeType": "image/jpeg",
        "buffer": collage(people[first][3], people[second][3])}])
    expect(page.locator("#recognize-status")).to_contain_text(f"2 recognized. Model sface-2021dec, "
                                                              f"threshold {default}")
    expect(page.locator("#recognize-notice")).to_be_hidden()  # both faces were matched
    # Fewer matches per face: each face's list has one (two people are enrolled).
    page.get_by_label("Matches per face").fill("1")
    page.get_by_label("Matches per face").press("Enter")
    page.get_by_label("Matches per face").blur()
    expect(page.locator("#recognize-boxes .box").first.locator(".popup li")).to_have_count(1)
    # A threshold nobody is under: both unknown, and the answer says which threshold it used.
    page.get_by_label("Threshold").fill("0.01")
    page.get_by_label("Threshold").blur()
    expect(page.locator("#recognize-status")).to_contain_text("0 recognized. Model sface-2021dec, "
                                                              "threshold 0.01")
    expect(page.locator("#recognize-boxes .box.unknown")).to_have_count(2)
    page.get_by_label("Threshold").fill("")  # back to the domain's default
    page.get_by_label("Matches per face").fill("5")
    page.get_by_label("Matches per face").blur()
    expect(page.locator("#recognize-status")).to_contain_text("2 recognized")


def test_phone_photo(page, enrolled: dict[str, int], people: dict[str, list[Path]]) -> None:
    """An HEIC photo (made here from the held-out LFW photo) is recognized through the page;
    Chromium cannot show HEIC, so the boxes are drawn on the photo's outline and the page says so."""
    from facesearch.imaging import _register_heif

    _register_heif()
    first, _ = enrolled
    buf = io.BytesIO()
    Image.open(people[first][3]).convert("RGB").save(buf, "HEIF", quality=90)
    page.get_by_role("link", name="Recognize").click()
    drop(page, "#recognize-drop", [("held-out.heic", buf.getvalue())])
    expect(page.locator("#recognize-boxes .box .name")).to_have_text(first)
    expect(page.locator("#recognize-status")).to_contain_text("1 face found, 1 recognized")


def test_more_faces_than_processed_is_noticed(browser, server, home: Path, seen: dict,
                                              enrolled: dict[str, int], people: dict[str, list[Path]],
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second replica on the same database that matches 1 face per photo
    (FACESEARCH_MAX_FACES=1): the page says a photo of two had one face left out."""
    first, second = enrolled
    key = server.admin.post(f"/v1/domains/{DOMAIN}/keys", json={"name": "replica"}).json()["key"]
    log = tmp_path_factory.mktemp("replica") / "server.log"
    replica = start_server(home, log, "--workers", "1", env={"FACESEARCH_MAX_FACES": "1"})
    try:
        page = new_page(browser, {**seen, "origin": replica.base})
        page.goto(replica.base + "/#/recognize")
        page.get_by_label("API key").fill(key)
        page.get_by_label("API key").press("Enter")
        expect(page.locator("#session-domain")).to_have_text(DOMAIN)
        page.goto(replica.base + "/#/recognize")
        page.locator("#recognize-file").set_input_files(files=[{
            "name": "two.jpg", "mimeType": "image/jpeg",
            "buffer": collage(people[first][3], people[second][3])}])
        notice = page.get_by_role("note")
        expect(notice).to_have_text("This photo has 2 faces: only the 1 largest were matched (the "
                                    "server's limit, FACESEARCH_MAX_FACES).")
        expect(page.locator("#recognize-boxes .box")).to_have_count(1)
        page.context.close()
    finally:
        replica.stop()


def test_errors_read_as_messages(page, enrolled: dict[str, int], people: dict[str, list[Path]]) -> None:
    first, second = enrolled
    page.get_by_role("link", name="Recognize").click()
    page.locator("#recognize-file").set_input_files(files=[{
        "name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    expect(page.get_by_role("alert")).to_contain_text("not a supported image")
    # The server out of reach: a message, not a blank page.
    page.route("**/recognize", lambda route: route.abort())
    try:
        page.locator("#recognize-file").set_input_files(people[first][3])
        expect(page.get_by_role("alert")).to_contain_text("Cannot reach the facesearch server")
    finally:
        page.unroute("**/recognize")
    # Enrolling a photo of two people without saying which face: refused, with the reason.
    page.goto(f"{page.url.split('#')[0]}#/people/{enrolled[first]}")
    drop(page, "#enroll-drop", [("two.jpg", collage(people[first][3], people[second][3]))])
    expect(page.locator("#enroll-results li").first).to_contain_text(
        "refused: 2 faces in the photo: tick “enroll the largest”")
    expect(page.locator("#person-faces")).to_have_text("3 faces")


def test_rename_and_delete_a_face(page, enrolled: dict[str, int], server) -> None:
    first, _ = enrolled
    page.goto(f"{page.url.split('#')[0]}#/people/{enrolled[first]}")
    name = page.get_by_label("Name", exact=True)
    expect(name).to_have_value(first)  # the view rendered: a late render would undo the edit
    name.fill(f"{first} (renamed)")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("heading", name=f"{first} (renamed)")).to_be_visible()
    face = page.locator("#faces-list .face-card").first
    face.get_by_role("button", name=re.compile(r"Delete face \d+")).click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#person-faces")).to_have_text("2 faces")
    expect(page.locator("#faces-list .face-card")).to_have_count(2)
    person = server.admin.get(f"/v1/domains/{DOMAIN}/people/{enrolled[first]}").json()
    assert person["faces"] == 2 and person["name"] == f"{first} (renamed)"


def test_delete_a_person_with_confirmation(page, enrolled: dict[str, int], server) -> None:
    _, second = enrolled
    page.goto(f"{page.url.split('#')[0]}#/people/{enrolled[second]}")
    expect(page.get_by_role("heading", name=second)).to_be_visible()
    page.get_by_role("button", name="Delete person…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Delete {second} and their 3 faces?")
    page.keyboard.press("Escape")  # changed their mind
    expect(dialog).to_be_hidden()
    assert server.admin.get(f"/v1/domains/{DOMAIN}/people/{enrolled[second]}").status_code == 200
    page.get_by_role("button", name="Delete person…").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="People")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text(f"Deleted {second} and 3 faces")
    expect(page.locator("#people-list .person-card")).to_have_count(1)
    assert server.admin.get(f"/v1/domains/{DOMAIN}/people/{enrolled[second]}").status_code == 404


def test_domain_key_at_phone_width(browser, server, seen: dict, enrolled: dict[str, int]) -> None:
    """A domain key's holder is taken to its domain (GET /v1/whoami), with no domain to type or
    change. The page fits a phone's width."""
    key = server.admin.post(f"/v1/domains/{DOMAIN}/keys", json={"name": "web"}).json()["key"]
    page = new_page(browser, seen, viewport={"width": 375, "height": 740}, is_mobile=True)
    page.goto(server.base)
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#session-domain")).to_have_text(DOMAIN)
    expect(page.get_by_role("heading", name="Recognize")).to_be_visible()
    expect(page.locator("#change-domain")).to_be_hidden()
    page.get_by_role("link", name="People", exact=True).click()
    expect(page.locator("#people-list .person-card")).to_have_count(1)
    page.goto(server.base + "/#/domain")  # no domain list for this key: back to its own
    expect(page.get_by_role("heading", name="People")).to_be_visible()
    page.reload()  # still signed in, in the same domain (sessionStorage)
    expect(page.locator("#people-list .person-card")).to_have_count(1)
    for view in ("#/people", "#/recognize", f"#/people/{next(iter(enrolled.values()))}"):
        page.goto(server.base + "/" + view)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375, view
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0
    page.context.close()


def test_page_is_self_contained(server, seen: dict) -> None:
    """Served from the package with a strict CSP; nothing fetched from elsewhere, no script error."""
    r = server.client().get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' blob: data:" in csp
    for asset in ("/static/app.js", "/static/app.css"):
        a = server.client().get(asset)
        assert a.status_code == 200 and a.headers["content-security-policy"] == csp
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", a.text), asset
    assert seen["errors"] == [] and seen["elsewhere"] == []
