"""Import speed of ``facesearch import-pkl``: a DeepFace PKL file of N synthetic faces.

Writes a generation-3 file (DeepFace's list of dicts, raw embeddings as lists of floats, scaled
like an unnormalized model output) of ``--faces`` 512-d ArcFace-sized faces, imports it end to
end (``facesearch import-pkl`` in a subprocess, start-up of the embedded PostgreSQL included) into
a fresh data directory, again (everything already there), and into a data directory that an
earlier command set up. Its temporary files (~2 GB a round) are deleted at the end.
Run: ``python -m bench.bench_import [--faces 25000] [--dim 512] [--per-person 5] [--rounds 1]``.

``--baseline-src DIR`` also imports the same file with another checkout's code (``DIR`` its ``src``,
put first on ``PYTHONPATH``; e.g. ``git archive <commit> src | tar -x -C /tmp/base``) into fresh
data directories, alternating with this tree's code round by round, so both see the same machine
load. Each fresh import is followed by a recall check of the domain's index through facesearch's
own ``Gallery.search`` (300 queries near random people, person-level recall@1 and @10 against
exact search, bench_scale's protocol) and shows the server's time for each statement over 0.1 s
(COPY, INSERT, CREATE INDEX, ANALYZE), from the embedded server's log.

``--index-variants`` instead times the HNSW build alone on the same faces (a scratch table in a
fresh embedded server, same expression and opclass as facesearch's index) with 0, 1 and 2
parallel workers and ef_construction 64 (pgvector's default, facesearch's) and 32, and measures
each graph's person-level recall@1 and recall@10 against exact search (300 queries, ef_search 100).
With ``--halfvec``, the same graph (2 workers) over ``halfvec`` copies of the vectors, alternating
with float32's: what a half-precision index would save of the build (not what facesearch builds).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from facesearch.deepface_pkl import export_filename

from .lfw import cpu_model
from .synthetic import clustered

MODELS = {128: "Facenet", 512: "ArcFace", 4096: "VGG-Face"}


def gallery_faces(faces: int, dim: int, per_person: int, seed: int = 0
                  ) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """The file's people: (the generator, drawn on for the scales), centres, faces[people, per]."""
    rng = np.random.default_rng(seed)
    centres, embeddings = clustered(rng, -(-faces // per_person), per_person, dim)
    return rng, centres, embeddings


def write_pkl(path: Path, faces: int, dim: int, per_person: int, seed: int = 0) -> int:
    """A generation-3 DeepFace file of ``faces`` rows (one face per photo); returns people."""
    rng, _, embeddings = gallery_faces(faces, dim, per_person, seed)
    people = len(embeddings)
    scale = rng.uniform(5, 30, size=(people, per_person))  # DeepFace keeps raw, unnormalized output
    rows = []
    for p in range(people):
        for k in range(per_person):
            if len(rows) == faces:
                break
            identity = f"/srv/db_path/person_{p:05d}/photo_{k}.jpg"
            rows.append({"identity": identity, "hash": f"{p:020x}{k:020x}",
                         "embedding": (embeddings[p, k].astype(np.float64) * scale[p, k]).tolist(),
                         "target_x": 10, "target_y": 12, "target_w": 100, "target_h": 110})
    with path.open("wb") as f:
        pickle.dump(rows, f, protocol=4)
    return people


def index_variants(faces: int, dim: int, per_person: int, home: Path, halfvec: bool = False) -> None:
    from facesearch.config import Settings
    from facesearch.store import connect, database_url

    from .synthetic import near

    rng = np.random.default_rng(0)
    people = -(-faces // per_person)
    centres, embeddings = clustered(rng, people, per_person, dim)
    vectors = embeddings.reshape(-1, dim)[:faces]
    person = np.repeat(np.arange(people), per_person)[:faces]
    picked = np.random.default_rng(2).integers(0, people, 300)
    queries = near(np.random.default_rng(1), centres[picked])

    def ranked_people(order: Iterable[int]) -> list[int]:
        seen: list[int] = []
        for j in order:
            if person[j] not in seen:
                seen.append(int(person[j]))
        return seen[:10]

    truth = [ranked_people(np.argsort(-(vectors @ q))[:200]) for q in queries]
    conn = connect(database_url(Settings(home=home)))
    conn.execute("CREATE TABLE scratch (id serial, model_id int, embedding vector)")
    with conn.cursor().copy("COPY scratch (model_id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["integer", "vector"])
        for v in vectors:
            copy.write_row((1, v))
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute("SET hnsw.ef_search = 100")
    variants = [("vector", w, ef) for w, ef in ((0, 64), (1, 64), (2, 64), (1, 32), (1, 64), (2, 64),
                                                 (0, 64))]
    if halfvec:  # the same graph over half-precision copies of the vectors, against float32
        variants = [(t, 2, 64) for _ in range(3) for t in ("vector", "halfvec")]
    for kind, workers, ef in variants:
        expr = f"embedding::{kind}({dim})"
        conn.execute("DROP INDEX IF EXISTS scratch_hnsw")
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        conn.execute(f"ALTER TABLE scratch SET (parallel_workers = {max(workers, 1)})")
        t = time.perf_counter()
        conn.execute(f"CREATE INDEX scratch_hnsw ON scratch USING hnsw (({expr}) {kind}_cosine_ops)"
                     f" WITH (ef_construction = {ef}) WHERE model_id = 1")
        seconds = time.perf_counter() - t
        at1 = at10 = 0.0
        for q, want in zip(queries, truth, strict=True):
            ids = [r[0] - 1 for r in conn.execute(
                f"SELECT id FROM scratch WHERE model_id = 1 ORDER BY {expr} <=> %s::{kind} LIMIT 40",
                (q,))]
            got = ranked_people(ids)
            at1 += got[:1] == want[:1]
            at10 += len(set(got) & set(want)) / 10
        print(f"index build ({kind}), {workers} parallel workers, ef_construction {ef}: {seconds:.1f} s; "
              f"recall@1 {at1 / len(queries):.3f}, recall@10 (people) {at10 / len(queries):.3f}",
              flush=True)
    conn.close()


def index_recall(home: Path, faces: int, dim: int, per_person: int, queries: int = 300
                 ) -> dict[str, float]:
    """Person-level recall@1 and @10 of the imported domain's search (Gallery.search: its HNSW
    index, ef_search 100, top_k 10) against exact search over the file's faces."""
    from facesearch.config import Settings
    from facesearch.store import BlockingGallery, database_url

    from .bench_scale import OPEN_THRESHOLD, exact_people, recall
    from .synthetic import near

    _, centres, embeddings = gallery_faces(faces, dim, per_person)
    matrix = embeddings.reshape(-1, dim)[:faces]
    person_of = np.repeat(np.arange(len(centres)), per_person)[:faces]
    picked = np.random.default_rng(2).integers(0, len(centres), queries)
    q = near(np.random.default_rng(1), centres[picked])
    truth = exact_people(matrix, person_of, q)
    with BlockingGallery(database_url(Settings(home=home))) as gallery:
        dom = gallery.get_domain("bench")
        found = [[int(m.person.rpartition("_")[2]) for m in ms]
                 for ms in gallery.search(dom, dom.model, list(q), k=10, threshold=OPEN_THRESHOLD)]
    return {"recall_at_1": recall(found, truth, 1), "recall_at_10": recall(found, truth, 10)}


# Statements of an import, as the server's log names them (--baseline-src runs).
_STEPS = {"COPY faces": "COPY into faces", "COPY new_faces": "COPY to staging",
          "WITH added AS (INSERT": "INSERT from staging", "CREATE INDEX": "HNSW build",
          "ANALYZE": "ANALYZE"}


def server_steps(home: Path) -> dict[str, float]:
    """The import's slow statements (over 0.1 s) and their server-side seconds, from its log."""
    steps: dict[str, float] = {}
    for line in (home / "pgdata" / "log").read_text(errors="replace").splitlines():
        m = re.search(r"duration: ([0-9.]+) ms\s+statement: (.*)", line)
        if m:
            what = next((v for k, v in _STEPS.items() if m[2].startswith(k)), m[2][:30])
            steps[what] = steps.get(what, 0.0) + float(m[1]) / 1000
    return steps


def run(exe: Path, pkl: Path, home: Path, *args: str, src: Path | None = None) -> tuple[float, dict]:
    """``facesearch ARGS`` on ``home``: its time and JSON output. With ``src``, that checkout's
    code, and the server logs each statement over 0.1 s (server_steps)."""
    env = {**os.environ, "FACESEARCH_HOME": str(home)}
    env.pop("FACESEARCH_DATABASE_URL", None)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
        env["PGOPTIONS"] = "-c log_min_duration_statement=100"  # superuser: the embedded server's
    t = time.perf_counter()
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, (json.loads(out) if "--json" in args else {})


def compare(exe: Path, pkl: Path, work: Path, args: argparse.Namespace) -> None:
    """Fresh imports with this tree's code and ``args.baseline_src``'s, alternating, with recall."""
    here = Path(__file__).resolve().parents[1] / "src"
    codes = {"this tree": here, "baseline": args.baseline_src.resolve()}
    times: dict[str, list[float]] = {k: [] for k in codes}
    steps: dict[str, dict[str, list[float]]] = {k: {} for k in codes}
    for r in range(args.rounds):
        order = list(codes) if r % 2 == 0 else list(codes)[::-1]
        for label in order:
            home = work / f"{label.replace(' ', '-')}{r}"
            seconds, s = run(exe, pkl, home, "import-pkl", str(pkl), "--domain", "bench", "--json",
                             src=codes[label])
            times[label].append(seconds)
            server = server_steps(home)
            for what in ("read and check", "store and index"):
                steps[label].setdefault(what, []).append(s["seconds"][what.split()[0]])
            for what, t in server.items():
                steps[label].setdefault(what, []).append(t)
            rec = json.loads(subprocess.run(  # its own process: the server stops when it exits
                [sys.executable, "-m", "bench.bench_import", "--recall-of", str(home), "--faces",
                 str(args.faces), "--dim", str(args.dim), "--per-person", str(args.per_person)],
                capture_output=True, text=True, check=True).stdout)
            print(f"round {r + 1}, {label}, fresh data directory: {seconds:.1f} s whole command "
                  f"(read and check {s['seconds']['read']} s, store and index "
                  f"{s['seconds']['store']} s; imported {s['imported']}); server: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in server.items())
                  + f"; recall@1 {rec['recall_at_1']:.3f}, recall@10 "
                  f"{rec['recall_at_10']:.3f}; load {load_average()}", flush=True)
            if label == "this tree":
                again, s2 = run(exe, pkl, home, "import-pkl", str(pkl), "--domain", "bench", "--json")
                print(f"round {r + 1}, {label}, again (all already there): {again:.1f} s; imported "
                      f"{s2['imported']}, already there {s2['already_there']}", flush=True)
            shutil.rmtree(home, ignore_errors=True)
    # Each round's two imports ran back to back: their ratio is what load drift spoils least.
    ratios = [a / b for a, b in zip(times["this tree"], times["baseline"], strict=True)]
    print(f"median whole command: this tree {np.median(times['this tree']):.1f} s, baseline "
          f"{np.median(times['baseline']):.1f} s; median of the rounds' ratios (this tree / "
          f"baseline) {np.median(ratios):.2f}")
    for label in codes:
        print(f"{label}, medians: " + ", ".join(f"{k} {np.median(v):.2f} s ({len(v)})"
                                                for k, v in steps[label].items()))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faces", type=int, default=25_000)
    ap.add_argument("--dim", type=int, default=512, choices=sorted(MODELS))
    ap.add_argument("--per-person", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="Repeat on new data directories.")
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="Another checkout's src: time its fresh imports alongside, with recall.")
    ap.add_argument("--halfvec", action="store_true",
                    help="With --index-variants: float32 vs halfvec graphs, 2 workers, alternating.")
    ap.add_argument("--recall-of", type=Path, metavar="HOME", help=argparse.SUPPRESS)
    ap.add_argument("--index-variants", action="store_true",
                    help="Time the index build alone: workers and ef_construction, with recall.")
    args = ap.parse_args(argv)
    if args.recall_of is not None:  # compare()'s recall check of one data directory
        print(json.dumps(index_recall(args.recall_of, args.faces, args.dim, args.per_person)))
        return
    work = Path(tempfile.mkdtemp(prefix="facesearch-import-"))
    # Registered first, so it runs last: after the embedded servers this process started stop.
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    if args.index_variants:
        print(f"command: python -m bench.bench_import --index-variants --faces {args.faces} "
              f"--dim {args.dim}" + (" --halfvec" if args.halfvec else ""))
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
        index_variants(args.faces, args.dim, args.per_person, work / "home", args.halfvec)
        return
    pkl = work / export_filename(MODELS[args.dim])
    t = time.perf_counter()
    people = write_pkl(pkl, args.faces, args.dim, args.per_person)
    print(f"command: python -m bench.bench_import --faces {args.faces} --dim {args.dim} "
          f"--per-person {args.per_person} --rounds {args.rounds}"
          + (f" --baseline-src {args.baseline_src}" if args.baseline_src else ""))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print(f"file: {args.faces} rows, {people} people, {pkl.stat().st_size / 1e6:.0f} MB "
          f"(written in {time.perf_counter() - t:.1f} s)")
    exe = Path(sys.executable).parent / "facesearch"
    if args.baseline_src is not None:
        compare(exe, pkl, work, args)
        return
    import_args = ("import-pkl", str(pkl), "--domain", "bench", "--json")
    for r in range(args.rounds):
        # A new data directory (initdb and first start inside the timed command), imported twice;
        # then one whose server was set up by an earlier command (`domains list`).
        fresh, ready = work / f"fresh{r}", work / f"ready{r}"
        runs = [("fresh data directory", fresh), ("again (all already there)", fresh)]
        run(exe, pkl, ready, "domains", "list")
        runs.append(("data directory set up by an earlier command", ready))
        for label, home in runs:
            seconds, s = run(exe, pkl, home, *import_args)
            print(f"round {r + 1}, {label}: {seconds:.1f} s whole command (read and check "
                  f"{s['seconds']['read']} s, store and index {s['seconds']['store']} s); imported "
                  f"{s['imported']}, already there {s['already_there']}, index {s['index']}",
                  flush=True)


if __name__ == "__main__":
    main()
