"""The benchmark scripts on tiny configurations, so they cannot rot unnoticed: metrics checked
on cases with a known answer, the quality run end to end with the real model, the store
benchmark's filtered searches returning k hits, and missing packages skipped with a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import sources
from benchmarks.datasets import CategoryConfig, NearDupConfig
from benchmarks.metrics import category_metrics, exact_top_k, recall_at, target_ranks
from benchmarks.variants import VariantSpec, fit


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_near_dup_recall_has_known_answers() -> None:
    refs = unit(np.random.default_rng(0).standard_normal((50, 16)))
    # Exact duplicates: every target is ranked first.
    ranks = target_ranks(refs[:10], refs, np.arange(10))
    assert ranks.tolist() == [0] * 10 and recall_at(ranks, 1) == 1.0
    # Query 0 is a copy of reference 1 but names reference 0 as its target: rank >= 1.
    ranks = target_ranks(refs[1:2], refs, np.array([0]))
    assert ranks[0] >= 1 and recall_at(ranks, 1) == 0.0
    assert recall_at(np.array([0, 3, 12]), 10) == pytest.approx(2 / 3)


def test_category_metrics_have_known_answers() -> None:
    # Two tight, far-apart classes: every neighbour is right.
    jitter = np.array([0.01, 0.02, 0.03])[:, None]
    a = np.array([1.0, 0.0, 0.0]) + jitter * [0, 1, 0]
    b = np.array([0.0, 0.0, 1.0]) + jitter * [1, 0, 0]
    perfect = category_metrics(unit(np.vstack([a, b])), list("aaabbb"))
    assert perfect.summary["P@1"] == 1.0 and perfect.summary["mAP"] == pytest.approx(1.0)
    # Query 0's ranking is [b, a]: its only relevant item at rank 2 -> AP 0.5, P@1 0.
    vectors = unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    scores = category_metrics(vectors, ["x", "x", "y"], np.array([True, False, False]))
    assert scores.summary["queries"] == 1
    assert scores.average_precision[0] == pytest.approx(0.5)
    assert scores.summary["P@1"] == 0.0 and scores.summary["R@5"] == 1.0


def test_exact_top_k_respects_the_filter() -> None:
    vectors = unit(np.random.default_rng(1).standard_normal((100, 8)))
    mask = np.arange(100) >= 50
    top, few = exact_top_k(vectors, vectors[[70, 10]], mask, 5)
    assert top[0] == 70 and set(top.tolist()) <= set(range(50, 100)) and len(top) == 5
    assert 10 not in few.tolist() and len(few) == 5
    sims = vectors[50:] @ vectors[10]
    assert few.tolist() == (50 + np.argsort(-sims)[:5]).tolist()
    # Fewer matching rows than k: only those come back.
    assert len(exact_top_k(vectors, vectors[:1], np.arange(100) < 3, 5)[0]) == 3


def test_variants_project_to_unit_vectors_and_whiten() -> None:
    corpus = unit(np.abs(np.random.default_rng(2).standard_normal((300, 64))))
    assert fit(VariantSpec("raw"), corpus) is None
    pca = fit(VariantSpec("pca 16", centre=True, dims=16), corpus)
    out = pca(corpus)
    assert out.shape == (300, 16) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    whiten = fit(VariantSpec("w", centre=True, dims=16, whiten=1.0), corpus)
    raw = (corpus - whiten.mean) @ whiten.components.T * whiten.scale
    assert np.allclose(np.cov(raw, rowvar=False), np.eye(16), atol=1e-3)


def test_missing_debian_package_skips_with_a_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sources, "TUXPAINT_DIR", tmp_path / "absent")
    monkeypatch.setattr(sources, "OPENCV_DIR", tmp_path / "absent")
    with pytest.raises(sources.SourceUnavailable, match="tuxpaint-stamps-default"):
        sources.tuxpaint_stamps()
    pool = sources.photo_pool()
    assert (
        "opencv-doc" in pool.skipped and "apt-get install opencv-doc" in pool.skipped["opencv-doc"]
    )
    assert pool.photos, "scikit-image and scikit-learn photos need no Debian package"


@pytest.mark.slow
def test_region_modes_take_the_best_of_their_legs() -> None:
    """The region benchmark scores a pair as the Searcher does: each mode the best of the
    whole-image cosine and its region legs, never below the whole-image one."""
    from benchmarks.regions import similarities

    rng = np.random.default_rng(3)

    def unit(shape: tuple[int, ...]) -> np.ndarray:
        x = rng.normal(size=shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    queries, docs = (unit((4, 8)), unit((4, 3, 8))), (unit((5, 8)), unit((5, 3, 8)))
    got = similarities(queries, docs)
    whole = queries[0] @ docs[0].T
    library = np.array([[np.max(docs[1][j] @ q) for j in range(5)] for q in queries[0]])
    query = np.array([[np.max(r @ d) for d in docs[0]] for r in queries[1]])
    assert np.allclose(got["off"], whole)
    assert np.allclose(got["library"], np.maximum(whole, library))
    assert np.allclose(got["query"], np.maximum(whole, query))
    assert np.allclose(got["both"], np.maximum(got["library"], got["query"]))


def test_quality_benchmark_tiny(embedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Exact copies are found first under every variant; both sets produce their figures."""
    from benchmarks import quality

    # Skip the wallpapers (tens of megapixels each): faster, and it exercises the skip path.
    monkeypatch.setattr(sources, "WALLPAPER_DIR", tmp_path / "no-wallpapers")
    specs = [
        VariantSpec("raw"),
        VariantSpec("centred", centre=True),
        VariantSpec("pca 8", centre=True, dims=8, whiten=0.5),
    ]
    result = quality.run(
        tmp_path / "bench",
        embedder,
        near_dup=NearDupConfig(
            edits=("exact copy", "mirror"), distractors=12, max_references=4, natural_pairs=False
        ),
        category=CategoryConfig(max_stamps=24),
        specs=specs,
        min_class_size=2,
    )
    near = result["datasets"]["near_dup"]
    assert near["originals"] == 4 and near["distractors"] == 12
    assert "plasma-workspace-wallpapers" in near["skipped"]
    # raw + 2 learned variants, each fitted on the index and (with both sets) on the other set
    both_sets = sources.TUXPAINT_DIR.is_dir()
    assert len(result["variants"]) == (5 if both_sets else 3)
    for row in result["variants"]:
        assert row["near_dup"]["per_group"]["exact copy"]["R@1"] == 1.0
        assert 0.0 <= row["near_dup"]["copies_R@10"] <= 1.0
    if both_sets:
        category = result["variants"][0]["category"]["subcategory"]
        assert category["queries"] > 0 and 0.0 < category["mAP"] <= 1.0
    else:
        assert "tuxpaint-stamps-default" in result["datasets"]["category"]["skipped"]
    # The second run reuses the built files and the cached embeddings.
    again = quality.run(
        tmp_path / "bench",
        embedder,
        sets=("near_dup",),
        near_dup=NearDupConfig(
            edits=("exact copy", "mirror"), distractors=12, max_references=4, natural_pairs=False
        ),
        specs=specs[:1],
    )
    assert (
        again["variants"][0]["near_dup"]["copies_R@1"]
        == result["variants"][0]["near_dup"]["copies_R@1"]
    )


def test_store_benchmark_tiny(tmp_path: Path) -> None:
    """Filtered searches return k hits with exact recall; the script writes its JSON."""
    from benchmarks import store

    result = store.run_size(
        3000,
        tmp_path,
        dim=16,
        clusters=20,
        queries=15,
        bulk_batch=1000,
        small_batches=2,
        settings_overrides={"ann_min_rows": 1000},  # build the IVF index even at this size
    )
    conditions = {c["condition"]: c for c in result["queries"]}
    assert all(c["fewer_than_k"] == 0 for c in conditions.values())
    for share in ("1 %", "20 %"):
        assert conditions[f"vector, filter {share}"]["recall@k"] == 1.0
    assert result["writes"]["bulk"]["documents"] == 3000 - 2 * 2 * store.SMALL_BATCH
    out = tmp_path / "store.json"
    store.main(
        [
            "--sizes",
            "1500",
            "--dim",
            "8",
            "--queries",
            "5",
            "--data-dir",
            str(tmp_path),
            "--results",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["machine"]["nproc"] >= 1 and saved["sizes"][0]["documents"] == 1500


def test_junk_references_count_neither_for_nor_against() -> None:
    from benchmarks.datasets import junk
    from benchmarks.metrics import ranks_in

    queries = [{"background": "a.jpg"}, {}]
    refs = [{"kind": "original"}, {"background": "a.jpg"}, {"background": "b.jpg"}]
    ignore = junk(queries, refs)
    assert ignore.tolist() == [[False, True, False], [False, False, False]]
    scores = np.array([[0.5, 0.9, 0.1], [0.5, 0.9, 0.1]])
    assert ranks_in(scores, np.array([0, 0])).tolist() == [1, 1]
    assert ranks_in(scores, np.array([0, 0]), ignore).tolist() == [0, 1]


def test_multi_object_scenes_tiny(embedder, tmp_path: Path) -> None:
    """Every stamp sits in exactly one scene with one to three others, and the region
    benchmark scores both directions on them."""
    if not sources.TUXPAINT_DIR.is_dir():
        pytest.skip("needs the Debian package tuxpaint-stamps-default (installed by .ci/run)")
    from benchmarks.datasets import SceneConfig, build_scenes
    from benchmarks.regions import MODES, scenes

    config = SceneConfig(max_stamps=7, objects=(2, 3))
    manifest = build_scenes(tmp_path / "scenes", config)
    refs, items = manifest.items["references"], manifest.items["scenes"]
    assert len(refs) == 7 and all(2 <= len(s["objects"]) <= 3 for s in items[:-1])
    placed = [o for s in items for o in s["objects"]]
    assert sorted(placed) == sorted(r["path"] for r in refs), "each stamp in one scene"
    result = scenes(tmp_path, embedder, config)
    for mode in MODES:
        for row in ("scene -> objects", "object -> scene"):
            assert 0.0 <= result[mode][row]["R@1"] <= result[mode][row]["R@10"] == 1.0


def test_tags_benchmark_tiny(embedder, tmp_path: Path) -> None:
    """The tasks judge folders and photos as documented (and name folders and photos that
    exist), a separable case gives AUC 1 at every size, and a tiny library runs end to end."""
    from benchmarks import tags
    from pipeline.document import AssetDocument, Label
    from pipeline.library import Library
    from pipeline.settings import Settings

    animal, plant, vehicle = tags.TASKS

    def judged(task: tags.Task, *folders: str) -> list[int | None]:
        return [task.judge({"kind": "stamp", "subcategory": f}) for f in folders]

    assert judged(animal, "animals/birds", "food/fruit", "seasonal/easter") == [1, 0, None]
    assert judged(plant, "plants", "plants/trees", "food/fruit") == [1, 1, None]
    assert judged(vehicle, "military/vehicles", "military", "space/moon") == [1, 0, None]
    cat, apple = ({"kind": "photo", "name": n} for n in ("skimage/chelsea", "opencv/apple"))
    assert (animal.judge(cat), vehicle.judge(cat), plant.judge(apple)) == (1, 0, None)
    # Every folder and photo a task names exists (unless its package is missing here).
    if sources.TUXPAINT_DIR.is_dir():
        folders = {s.subcategory for s in sources.tuxpaint_stamps()}
        for task in tags.TASKS:
            for named in (*task.yes, *task.left_out):
                assert any(f == named or f.startswith(named + "/") for f in folders), named
    pool = sources.photo_pool()
    known = {p.name for p in (*pool.photos, *pool.backgrounds)}
    package = {"opencv": "opencv-doc", "wallpaper": "plasma-workspace-wallpapers"}
    for task in tags.TASKS:
        for name in task.yes_photos | task.left_out_photos:
            assert name in known or package.get(name.split("/")[0]) in pool.skipped, name

    # Separable: yes documents carry their own label and sit in their own direction.
    rng = np.random.default_rng(4)
    judges = np.array([1] * 20 + [0] * 40)
    vectors = unit(rng.normal(size=(60, 8)) * 0.02 + np.eye(8)[judges])
    docs = [
        AssetDocument(
            id=f"{i:032x}",
            uri=f"file:///lib/{i}.jpg",
            sha256="0",
            fingerprint="0",
            width=10,
            height=10,
            format="JPEG",
            labels=[Label(name="Yes" if j else "No", confidence=90)],
            embedding=v.tolist(),
            model="test",
            model_version="1",
        )
        for i, (j, v) in enumerate(zip(judges, vectors, strict=True))
    ]
    settings = Settings(home=tmp_path / "home")
    with Library.open(settings) as library:
        index = library.index("test@1")
        index.upsert(docs)
        for features in ("labels", "embedding"):
            curve = tags.learning_curve(
                "separable", docs, judges, index, settings, features, (10, 20, 50), 2, 0
            )
            assert [p["judgements"] for p in curve] == [10, 20, 45], "a quarter stays held out"
            assert all(p["auc"] == 1.0 and p["roc_recall"] == 1.0 for p in curve)
            assert tags.verdict(curve)["judgements_to_auc_0.9"] == 10
    rows = tags.stratified(judges, 10, np.random.default_rng(0))
    assert len(set(rows.tolist())) == 10 and judges[rows].sum() == 3  # the 1/3 yes share

    # A tiny library end to end, with the real model.
    if not sources.TUXPAINT_DIR.is_dir():
        pytest.skip("needs the Debian package tuxpaint-stamps-default (installed by .ci/run)")
    config = tags.Config(
        sizes=(10,),
        seeds=1,
        features=("embedding",),
        tasks=("animal",),
        apply_docs=150,
        max_stamps=30,
        max_photos=6,
    )
    result = tags.run(tmp_path / "bench", embedder, config)
    assert result["library"] == {"documents": 36, "stamps": 30, "photos": 6}
    task = result["tasks"]["animal"]
    assert task["yes"] + task["no"] + task["left_out"] == 36 and task["yes"] >= 3
    assert 0.0 <= task["features"]["embedding"]["curve"][0]["auc"] <= 1.0
    for variant in ("regions", "no regions"):
        applied = result["apply"][variant]
        assert applied["scored"] == 150 and applied["documents"] == 150
    assert result["apply"]["regions"]["regions_per_document"] > 0
    assert result["apply"]["no regions"]["regions_per_document"] == 0
    tags.figure(result, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.slow
def test_throughput_benchmark_tiny_compares_the_backends(
    embedder, reference, tmp_path: Path
) -> None:
    """Both backends are measured in the same rounds; every figure has its own backend's."""
    from benchmarks import throughput
    from benchmarks.datasets import LibraryConfig

    result = throughput.run(
        tmp_path,
        {"onnx": embedder, "tensorflow": reference},
        LibraryConfig(files=4, sizes=((640, 480), (320, 240))),
        [(1, 2)],
        rounds=1,
        decode_files=2,
        model_batches=1,
    )
    assert [m["backend"] for m in result["model_only"]] == ["onnx", "tensorflow"]
    assert [(r["backend"], r["images"]) for r in result["ingest_best"]] == [
        ("onnx", 4),
        ("tensorflow", 4),
    ]
    for ceiling in result["cpu_bound_ceiling"].values():
        assert ceiling["images_per_s"] > 0 and 0 < ceiling["share_of_model_only"] < 1
    throughput.print_report(result)


@pytest.mark.slow
def test_api_latency_benchmark_tiny(embedder, tmp_path: Path) -> None:
    """Both servers (micro-batched and not) answer every query; the figures are written."""
    from benchmarks import api_latency

    out = tmp_path / "api.json"
    api_latency.main(
        ["--clients", "1,3", "--requests", "6", "--warmup", "1", "--results", str(out)]
    )
    saved = json.loads(out.read_text())
    levels = saved["levels"]
    assert [(r["server"], r["query"], r["clients"]) for r in levels] == [
        ("batched", "image upload", 1),
        ("batched", "image upload", 3),
        ("batched", "asset (no model)", 1),
        ("batched", "asset (no model)", 3),
        ("unbatched", "image upload", 1),
        ("unbatched", "image upload", 3),
    ]
    assert all(r["errors"] == 0 for r in levels)
    assert saved["model_only"]["images_per_s"] > 0 and saved["backend"] == "onnx"
    assert saved["images_per_model_call"]["unbatched"]["mean"] == 1.0
