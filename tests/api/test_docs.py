"""The API's own docs, /docs (Swagger UI) and /redoc, served by facesearch with no network, under
the page's CSP; and the OpenAPI document they read (errors, security schemes, version)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facesearch.service.openapi import documented_codes

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    r = server.client().get("/openapi.json")
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


def offline_page(browser, server, seen: dict):
    """A page whose every request off this machine's loopback is aborted (and recorded)."""
    page = browser.new_context().new_page()
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("console", lambda m: m.type == "error" and seen["console"].append(m.text))

    def route(r) -> None:
        if r.request.url.startswith((server.base, "data:", "blob:")):
            r.continue_()
        else:
            seen["elsewhere"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page


def test_swagger_ui_offline_lists_routes_and_tries_healthz(browser, server, openapi: dict) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    seen: dict[str, list[str]] = {"errors": [], "console": [], "elsewhere": []}
    page = offline_page(browser, server, seen)
    page.goto(server.base + "/docs")
    ops = page.locator(".opblock")
    expect(ops.first).to_be_visible(timeout=60_000)
    listed = {(op.locator(".opblock-summary-method").inner_text().lower(),
               op.locator(".opblock-summary-path").get_attribute("data-path"))
              for op in ops.all()}
    assert listed == {(m, p) for p, methods in openapi["paths"].items() for m in methods}
    expect(page.get_by_role("button", name=re.compile("Authorize"))).to_be_visible()

    health = page.locator("#operations-operations-healthz_healthz_get")
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    live = health.locator(".live-responses-table tbody tr.response")
    expect(live.locator("td.response-col_status")).to_have_text("200")
    expect(live.locator(".response-col_description")).to_contain_text('"status": "ok"')
    page.context.close()
    assert seen == {"errors": [], "console": [], "elsewhere": []}


def test_redoc_offline(browser, server) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    seen: dict[str, list[str]] = {"errors": [], "console": [], "elsewhere": []}
    page = offline_page(browser, server, seen)
    page.add_init_script("""document.addEventListener('securitypolicyviolation', e =>
        (window.refused = window.refused || []).push([e.violatedDirective, e.blockedURI, e.sourceFile]));""")
    page.goto(server.base + "/redoc")
    expect(page.get_by_role("heading", name="List Domains")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("menuitem", name="recognition")).to_be_visible()
    # ReDoc's styles are applied (its nonce is allowed): the menu is laid out beside the content.
    assert page.locator(".menu-content").bounding_box()["width"] > 100
    refused = page.evaluate("window.refused || []")
    page.context.close()
    assert seen["errors"] == [] and seen["elsewhere"] == []
    # What the CSP refuses: ReDoc's "by Redocly" logo (an image on its CDN, so never fetched), and
    # the two stylesheets its bundle inserts as it loads, before it can be given the nonce
    # (perfect-scrollbar's: the menu scrolls natively instead). Nothing else.
    logo = ["img-src", "https://cdn.redoc.ly/redoc/logo-mini.svg", ""]
    bundle = ["style-src-elem", "inline", server.base + "/docs-assets/redoc.standalone.js"]
    assert sorted(refused) == sorted([logo, bundle, bundle]), refused


def test_docs_are_served_under_the_page_csp(server) -> None:
    client = server.client()
    page_csp = client.get("/").headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-security-policy"] == page_csp
    assert "<script>" not in docs.text and "cdn" not in docs.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
        a = client.get("/" + asset)
        assert a.status_code == 200, asset
        assert a.headers["content-security-policy"] == page_csp, asset
    redoc = client.get("/redoc")
    nonce = re.search(r'data-nonce="([^"]+)"', redoc.text).group(1)
    csp = redoc.headers["content-security-policy"]
    assert csp == page_csp.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert client.get("/redoc").text != redoc.text  # a new nonce per response


def test_openapi_describes_errors_and_security(openapi: dict) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header",
                                 "name": "X-API-Key"}
    assert "HTTPValidationError" not in str(openapi)
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            public = path in ("/healthz", "/readyz")
            assert ("security" in op) is not public, (method, path)
            codes = documented_codes(openapi, method, path)
            assert codes[500] == ["internal_error"]
            if not public:
                assert "unauthorized" in codes[401], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    recognize = documented_codes(openapi, "post", "/v1/domains/{domain}/recognize")
    assert {"invalid_image", "invalid_name"} <= set(recognize[422])
    assert {"unsupported_image", "unsupported_media_type"} <= set(recognize[415])
    assert recognize[403] == ["forbidden"] and recognize[404] == ["not_found"]
    assert set(recognize[503]) == {"model_unavailable", "database_unavailable", "store_unavailable"}
    assert "conflict" in documented_codes(openapi, "post", "/v1/domains")[409]
    body = openapi["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["error"]


def test_version_agrees(openapi: dict) -> None:
    from importlib.metadata import version

    import facesearch

    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == openapi["info"]["version"] == facesearch.__version__
    assert version("facesearch") == facesearch.__version__
