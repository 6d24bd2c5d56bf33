"""The page's Unknown and Audit views in a real browser (Debian's headless Chromium via
Playwright) against the real server: name a cluster of unknown LFW faces, merge two people the
audit says are the same, under the page's strict CSP (no inline script)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import photos_of
from .conftest import ADMIN_KEY, jpeg, pick_people
from .test_web import CHROMIUM, new_page

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
expect = sync_api.expect

DOMAIN = "web-unknown"


@pytest.fixture(scope="module")
def seen(server) -> dict:
    return {"errors": [], "elsewhere": [], "origin": server.base}


@pytest.fixture(scope="module")
def prepared(server, lfw: Path) -> dict:
    """web-unknown (keep_unknown): two unknown people of 3 photos each recognized (two clusters);
    a third person enrolled under two names (the audit's duplicate pair)."""
    assert server.admin.post("/v1/domains", json={"name": DOMAIN, "keep_unknown": True}).status_code == 201
    a, b, c = pick_people(lfw, 4, 3, skip=17)
    r = server.admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": "Twin"}, params={"face": "largest"},
                          files=[("photo", jpeg(p)) for p in photos_of(lfw, c)[:2]])
    assert r.status_code == 201
    r = server.admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": "Twin again"},
                          params={"face": "largest"},
                          files=[("photo", jpeg(p)) for p in photos_of(lfw, c)[2:4]])
    assert r.status_code == 201
    for person in (a, b):
        for photo in photos_of(lfw, person)[:3]:
            r = server.admin.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)},
                                  params={"max_faces": 1})
            assert r.json()["faces"][0]["unassigned_face_id"] is not None
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def page(server, seen: dict, prepared: dict):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = new_page(browser, seen, viewport={"width": 1100, "height": 850})
        page.goto(server.base + "/#/domain")  # the list, even when there is one domain
        page.get_by_label("API key").fill(ADMIN_KEY)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name=DOMAIN).click()
        expect(page.locator("#session-domain")).to_have_text(DOMAIN)
        yield page
        browser.close()


def faces_of_people(server) -> dict[str, int]:
    return {p["name"]: p["faces"] for p in server.admin.get(f"/v1/domains/{DOMAIN}/people").json()["people"]}


def test_name_a_cluster_on_the_unknown_view(page, server, seen: dict) -> None:
    page.get_by_role("link", name="Unknown").click()
    expect(page.locator("#unknown-clusters > li")).to_have_count(2)
    expect(page.locator("#unknown-clusters > li").first.locator("img[src^='blob:']")).to_have_count(3)
    first = page.locator("#unknown-clusters > li").first
    cluster = first.get_attribute("data-cluster")
    first.get_by_placeholder("Who is this?").fill("Found Someone")
    first.get_by_role("button", name="Name").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"Cluster {cluster} is Found Someone: 3 faces enrolled")
    expect(page.locator("#unknown-clusters > li")).to_have_count(1)
    people = faces_of_people(server)
    assert people["Found Someone"] == 3
    assert seen["errors"] == [] and seen["elsewhere"] == []


def test_merge_two_people_from_the_audit(page, server, seen: dict) -> None:
    page.get_by_role("link", name="Audit").click()
    row = page.locator("#audit-duplicates > li").filter(has_text="likely the same person")
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Merge into").click()
    page.locator("#confirm-ok").click()
    expect(page.get_by_role("status")).to_contain_text("merged into")
    expect(page.locator("#audit-duplicates")).to_contain_text("None found.")
    people = faces_of_people(server)
    assert sorted(people.values()) == [3, 4] and len(people) == 2
    assert seen["errors"] == [] and seen["elsewhere"] == []
