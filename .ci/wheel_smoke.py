"""Smoke test of an installed wheel (run by .ci/wheel-smoke in a fresh venv, outside the repo).

Everything must come from the installed package: the migrations (a new embedded PostgreSQL is
migrated), the page and the docs' assets, the check face, and the dlib model's conversion to
ONNX (a domain of dlib-resnet-v1 enrolls and recognizes). `facesearch --version` and the OpenAPI
document agree, and `facesearch doctor` passes.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata, resources
from pathlib import Path

import facesearch
from facesearch.client import ApiError, Client

KEY = "fsa_wheel_smoke_" + secrets.token_urlsafe(24)  # >= 32 characters, as serve requires


def step(text: str) -> None:
    print(f"wheel smoke: {text}", flush=True)


def main() -> None:
    package = Path(facesearch.__file__).resolve().parent
    assert "site-packages" in package.parts, f"facesearch imported from {package}, not the wheel"
    exe = Path(sys.executable).parent / "facesearch"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.split()[-1] == facesearch.__version__ == metadata.version("facesearch"), version
    step(f"{version.strip()} from {package}")
    check_face = resources.files("facesearch").joinpath("data", "check-face.png").read_bytes()

    home = Path(tempfile.mkdtemp(prefix="facesearch-wheel-"))
    env = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_ADMIN_KEY": KEY,
           "FACESEARCH_WORKERS": "1"}
    env.pop("FACESEARCH_DATABASE_URL", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (home / "server.log").open("wb")
    server = subprocess.Popen([exe, "serve", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        fs = Client(f"http://127.0.0.1:{port}", KEY, retries=120)
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (home / "server.log").read_text()
            try:
                fs.ready()  # retried while the workers load (503 + Retry-After)
                break
            except ApiError as exc:
                assert exc.code == "network_error" and time.monotonic() < deadline, exc
                time.sleep(0.5)
        step("server ready (embedded PostgreSQL migrated from the wheel's migrations)")
        page = fs._http.get("/")
        docs = fs._http.get("/docs")
        openapi = fs._http.get("/openapi.json").json()
        assert page.status_code == 200 and "app.js" in page.text
        assert docs.status_code == 200 and fs._http.get("/docs-assets/swagger-ui-bundle.js").is_success
        assert openapi["info"]["version"] == facesearch.__version__
        step("page, /docs and its assets served; OpenAPI version agrees")
        fs.create_domain("smoke", model="dlib-resnet-v1")  # converted to ONNX at first use
        enrolled = fs.enroll("smoke", "Check Face", [("check-face.png", check_face)])
        assert enrolled.enrolled == 1, enrolled
        match = fs.recognize("smoke", check_face).faces[0].matches[0]
        assert match.name == "Check Face" and match.distance < 0.01, match
        step("dlib model converted, check face enrolled and recognized")
    finally:
        server.terminate()
        server.wait(120)
        log.close()
    doctor = subprocess.run([exe, "doctor"], env=env, capture_output=True, text=True)
    print(doctor.stdout, doctor.stderr, sep="")
    assert doctor.returncode == 0, "facesearch doctor failed"
    step("ok")


if __name__ == "__main__":
    main()
