"""Custom tags learned from people's yes/no judgements: "is this a whole-room photo?".

The features are what the index already holds for every asset, so a tag costs no model call:

* ``labels``: the confidences of the labels most frequent among the positives and among the
  negatives (``labels_per_class`` of each; absent labels count 0), the seed's recipe;
* ``embedding``: the image embedding;
* ``both``: the two side by side.

A logistic regression (balanced class weights, its regularisation chosen once by a
cross-validation on AUC over all judgements) is judged by stratified k-fold cross-validation:
AUC per fold, with its spread, and the pooled out-of-fold ROC curve, on which the score
threshold is read at the largest recall whose false-positive rate stays within ``max_fpr``. The
classifier kept is then fitted on all judgements with the same regularisation, so its scores
sit on the scale the threshold was read from. Everything else a fold learns (the label
vocabulary, the scaling, the weights) comes from its training part only.

Each training is a numbered version under ``<model_dir>/tags/<name>/<N>/``
(``pipeline/registry.py``): ``classifier.json`` (:class:`TagClassifier`: the features, the
threshold, the figures), ``weights.npz`` (one weight vector over the raw features, the scaling
folded in, and the bias: scoring is one dot product, in numpy), ``roc.png`` and
``judgements.csv`` (what it learned from). A classifier is tied to the model version whose
embeddings and labels it learned from; a rollout to another model needs a new training (``lookalike
tags train NAME`` again, from the same judgements).

``Tagger`` scores documents with the newest version of every tag (at ingest, in the mapper);
``apply`` scores the documents of an index that the newest versions have not scored yet (the
backfill), at store-read-and-write speed.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from pipeline import filters, registry
from pipeline.discover import IMAGE_EXTENSIONS, asset_id, path_to_uri
from pipeline.document import ASSET_FIELDS, TAG_NAME, AssetDocument, Judgement, TagScore
from pipeline.library import Library
from pipeline.settings import Settings
from pipeline.store.base import DocumentIndex

log = logging.getLogger(__name__)
# scikit-learn and matplotlib are imported inside the functions that train and draw
# (deliberately lazy): ingest imports this module for ``Tagger``, which needs only numpy.

Features = Literal["labels", "embedding", "both"]
FEATURES: tuple[Features, ...] = ("labels", "embedding", "both")
MIN_JUDGEMENTS = 10
MAX_FOLDS = 5
NAME = re.compile(TAG_NAME)
MARKER = "classifier.json"
# The regularisation strengths the inner cross-validation chooses from.
C_GRID = np.logspace(-3, 2, 6)
# Every tag model: classes weighted by their rarity (few yes among many no is the usual case).
BALANCED: dict[str, Any] = {"class_weight": "balanced", "max_iter": 5000}
# Documents per tag write of a backfill: each write is a store round trip (a LanceDB merge and
# index update costs about 0.13 s whether it carries 128 or 2,000 documents), and a cluster's
# read of the stored tags stays far below a search's 10,000-hit window.
WRITE_CHUNK = 2_000


class TagError(ValueError):
    """Judgements or options a tag cannot be trained or applied from; the message says why."""


def check_name(name: str) -> str:
    """A tag name: lower-case letters, digits and ``_``, starting with a letter, at most 40
    characters, and not the name of a document field (``tags.NAME`` sits beside them in the
    index, and a filter must never be ambiguous)."""
    if not NAME.fullmatch(name):
        raise TagError(
            f"tag name {name!r}: use lower-case letters, digits and _ (starting with a letter, "
            "at most 40 characters)"
        )
    if name in {spec.name for spec in ASSET_FIELDS}:
        raise TagError(f"tag name {name!r} is the name of a document field: choose another")
    return name


def check_fpr(max_fpr: float) -> float:
    if not 0 < max_fpr < 1:
        raise TagError(f"--max-fpr {max_fpr}: a false-positive rate between 0 and 1 (exclusive)")
    return max_fpr


# -- records -------------------------------------------------------------------------------------


class FoldCurve(BaseModel):
    """One ROC curve (false-positive rates, true-positive rates)."""

    fpr: list[float]
    tpr: list[float]


class TagMetrics(BaseModel):
    """How well the tag separates the judgements, measured out of fold."""

    folds: int
    auc: float = Field(description="Mean AUC over the folds.")
    auc_std: float = Field(description="Standard deviation of the folds' AUC.")
    fold_auc: list[float]
    max_fpr: float
    threshold: float = Field(description="Score from which the tag passes.")
    recall: float = Field(description="Out-of-fold recall of the positives at the threshold.")
    fpr: float = Field(description="Out-of-fold false-positive rate at the threshold.")


class TagClassifier(BaseModel):
    """One trained version of a tag, as ``classifier.json`` records it."""

    name: str
    version: int
    model_id: str = Field(description="The model version whose embeddings and labels it reads.")
    features: Features
    labels_per_class: int
    vocabulary: list[str] = Field(description="The label names of the label features, in order.")
    threshold: float
    metrics: TagMetrics
    positives: int
    negatives: int
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def judgements(self) -> int:
        """How many judgements it learned from."""
        return self.positives + self.negatives


@dataclass(frozen=True)
class Weights:
    """A fitted classifier: ``sigmoid(features @ coef + bias)``, over the raw features."""

    vocabulary: list[str]
    coef: np.ndarray
    bias: float

    def score(self, docs: Sequence[AssetDocument], features: Features) -> np.ndarray:
        matrix = feature_matrix(docs, features, self.vocabulary)
        return 1.0 / (1.0 + np.exp(-(matrix @ self.coef + self.bias)))


@dataclass
class Trained:
    """What ``train`` made: the version written, its weights, where its files are, and the
    judgements it skipped (unknown assets)."""

    classifier: TagClassifier
    weights: Weights
    folder: Path
    skipped: list[Judgement]


# -- features -------------------------------------------------------------------------------------


def vocabulary(docs: Sequence[AssetDocument], judges: np.ndarray, per_class: int) -> list[str]:
    """The ``per_class`` label names most frequent among the positives, then those among the
    negatives not already chosen (by frequency, ties by name)."""
    chosen: dict[str, None] = {}
    for wanted in (1, 0):
        counts = Counter(
            lab.name
            for doc, judge in zip(docs, judges, strict=True)
            if judge == wanted
            for lab in doc.labels
        )
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        chosen.update((name, None) for name, _ in ranked[:per_class])
    return list(chosen)


def feature_matrix(
    docs: Sequence[AssetDocument], features: Features, vocab: Sequence[str]
) -> np.ndarray:
    """One row per document: label confidences (0..1) over ``vocab``, the embedding, or both."""
    parts = []
    if features in ("labels", "both"):
        column = {name: n for n, name in enumerate(vocab)}
        labels = np.zeros((len(docs), len(vocab)), dtype=np.float64)
        for row, doc in enumerate(docs):
            for lab in doc.labels:
                if (n := column.get(lab.name)) is not None:
                    labels[row, n] = max(labels[row, n], lab.confidence / 100)
        parts.append(labels)
    if features in ("embedding", "both"):
        if any(doc.embedding is None for doc in docs):
            raise TagError("embedding features need the documents' embeddings")
        parts.append(np.asarray([doc.embedding for doc in docs], dtype=np.float64))
    return np.hstack(parts)


@dataclass
class Design:
    """What a logistic regression learns from: the label vocabulary, the feature matrix
    standardised to zero mean and unit variance, and that scaling (folded into the weights)."""

    vocabulary: list[str]
    scaled: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(
        cls, docs: Sequence[AssetDocument], judges: np.ndarray, features: Features, per_class: int
    ) -> Design:
        from sklearn.preprocessing import StandardScaler

        vocab = vocabulary(docs, judges, per_class) if features != "embedding" else []
        matrix = feature_matrix(docs, features, vocab)
        scaler = StandardScaler().fit(matrix)
        return cls(vocab, scaler.transform(matrix), scaler.mean_, scaler.scale_)


def regularisation(design: Design, judges: np.ndarray, seed: int) -> float:
    """The logistic regression's C, chosen by a 3-fold cross-validation on AUC when each class
    has three judgements for it, else the default (1). Chosen once, on all judgements, for the
    fold models and the kept one alike. Why: the threshold is read from the fold models'
    out-of-fold scores, and a model with another C puts its scores on another scale (when each
    fold chose its own, a threshold chosen within FPR 0.05 let 0.90 of new documents through on
    one vehicle task, docs/benchmarks.md section 7)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if min(np.bincount(judges, minlength=2)) < 3:
        return 1.0
    model = LogisticRegressionCV(
        Cs=C_GRID,
        cv=StratifiedKFold(3, shuffle=True, random_state=seed),
        scoring="roc_auc",
        l1_ratios=(0,),
        use_legacy_attributes=False,
        **BALANCED,
    ).fit(design.scaled, judges)
    return float(model.C_)


def fit(design: Design, judges: np.ndarray, c: float) -> Weights:
    """A balanced logistic regression with regularisation ``c``, the scaling folded into the
    weights."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, **BALANCED).fit(design.scaled, judges)
    coef = model.coef_[0] / design.scale
    bias = float(model.intercept_[0] - np.dot(coef, design.mean))
    return Weights(design.vocabulary, coef, bias)


# -- training -------------------------------------------------------------------------------------


def root(settings: Settings) -> Path:
    return settings.model_dir / "tags"


def folder(name: str, version: int, settings: Settings) -> Path:
    return root(settings) / name / str(version)


def versions(name: str, settings: Settings) -> list[int]:
    return registry.versions(root(settings) / name, MARKER)


def find(name: str, settings: Settings, version: int | None = None) -> TagClassifier | None:
    """Version ``version`` of tag ``name`` (default: the newest), or None."""
    known = versions(name, settings)
    if not known or (version is not None and version not in known):
        return None
    path = folder(name, version or known[-1], settings) / MARKER
    return TagClassifier.model_validate_json(path.read_text())


def all_tags(settings: Settings) -> list[TagClassifier]:
    """The newest version of every tag, by name."""
    found = [find(name, settings) for name in registry.names(root(settings))]
    return [tag for tag in found if tag is not None]


def load_weights(tag: TagClassifier, settings: Settings) -> Weights:
    with np.load(folder(tag.name, tag.version, settings) / "weights.npz") as saved:
        return Weights(tag.vocabulary, saved["coef"], float(saved["bias"]))


def delete(name: str, settings: Settings) -> int:
    """Remove every version of tag ``name``; return how many there were."""
    count = len(versions(name, settings))
    shutil.rmtree(root(settings) / name, ignore_errors=True)
    return count


def known_judgements(
    judgements: Sequence[Judgement], index: DocumentIndex, chunk: int = 500
) -> tuple[list[Judgement], list[Judgement], dict[str, AssetDocument]]:
    """The judgements of assets in ``index`` (the latest per asset), those of assets it does
    not hold, and the judged documents with their embeddings."""
    latest = {j.asset_id: j for j in sorted(judgements, key=lambda j: j.judged_at)}
    ids = sorted(latest)
    docs: dict[str, AssetDocument] = {}
    for start in range(0, len(ids), chunk):
        docs.update(index.get(ids[start : start + chunk], with_embedding=True))
    known = [latest[i] for i in ids if i in docs]
    unknown = [latest[i] for i in ids if i not in docs]
    return known, unknown, docs


def train(
    name: str,
    judgements: Sequence[Judgement],
    index: DocumentIndex,
    settings: Settings,
    *,
    features: Features = "both",
    max_fpr: float = 0.05,
    labels_per_class: int = 50,
    folds: int = MAX_FOLDS,
    seed: int = 0,
) -> Trained:
    """Train, measure and write a new version of tag ``name`` from ``judgements`` of the
    documents in ``index`` (judgements of other assets are skipped and returned). Checks
    everything before writing anything: ``TagError`` says what is wrong."""
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.model_selection import StratifiedKFold

    check_name(name)
    check_fpr(max_fpr)
    if features not in FEATURES:
        raise TagError(f"features {features!r}: one of {', '.join(FEATURES)}")
    if labels_per_class < 1:
        raise TagError("labels per class: at least 1")
    known, unknown, docs = known_judgements([j for j in judgements if j.tag == name], index)
    if len(known) < MIN_JUDGEMENTS:
        unknown_note = f"; {len(unknown)} more name assets not in the index" if unknown else ""
        raise TagError(
            f"tag {name!r}: {len(known)} judgement(s) of indexed assets, at least "
            f"{MIN_JUDGEMENTS} are needed{unknown_note}"
        )
    judges = np.array([j.judge for j in known], dtype=np.int64)
    positives, negatives = int(judges.sum()), int(len(judges) - judges.sum())
    if not positives or not negatives:
        only = "yes" if positives else "no"
        raise TagError(
            f"tag {name!r}: every judgement says {only}; a tag needs both examples that have it "
            "and examples that do not"
        )
    if min(positives, negatives) < 2:
        raise TagError(
            f"tag {name!r}: {positives} yes and {negatives} no; cross-validation needs at least "
            "two of each"
        )
    ordered = [docs[j.asset_id] for j in known]
    n_folds = min(folds, positives, negatives)
    out_of_fold = np.zeros(len(known))
    fold_auc, curves = [], []
    kept = Design.of(ordered, judges, features, labels_per_class)
    c = regularisation(kept, judges, seed)
    splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(judges, judges)
    for train_rows, test_rows in splits:
        fold = Design.of(
            [ordered[i] for i in train_rows], judges[train_rows], features, labels_per_class
        )
        weights = fit(fold, judges[train_rows], c)
        scores = weights.score([ordered[i] for i in test_rows], features)
        out_of_fold[test_rows] = scores
        fold_auc.append(float(roc_auc_score(judges[test_rows], scores)))
        fpr, tpr, _ = roc_curve(judges[test_rows], scores)
        curves.append(FoldCurve(fpr=fpr.tolist(), tpr=tpr.tolist()))
    threshold, recall, fpr_at = operating_point(judges, out_of_fold, max_fpr)
    fpr, tpr, _ = roc_curve(judges, out_of_fold)
    pooled = FoldCurve(fpr=fpr.tolist(), tpr=tpr.tolist())
    weights = fit(kept, judges, c)
    version = (versions(name, settings) or [0])[-1] + 1
    classifier = TagClassifier(
        name=name,
        version=version,
        model_id=index.model_id,
        features=features,
        labels_per_class=labels_per_class,
        vocabulary=weights.vocabulary,
        threshold=threshold,
        metrics=TagMetrics(
            folds=n_folds,
            auc=float(np.mean(fold_auc)),
            auc_std=float(np.std(fold_auc)),
            fold_auc=fold_auc,
            max_fpr=max_fpr,
            threshold=threshold,
            recall=recall,
            fpr=fpr_at,
        ),
        positives=positives,
        negatives=negatives,
    )
    target = folder(name, version, settings)
    with registry.new_version(target) as tmp:
        np.savez(tmp / "weights.npz", coef=weights.coef, bias=np.float64(weights.bias))
        roc_figure(classifier, curves, pooled, tmp / "roc.png")
        with (tmp / "judgements.csv").open("w", newline="") as out:
            rows = csv.writer(out)
            rows.writerow(["asset_id", "uri", "judge", "source", "judged_at"])
            rows.writerows(
                (j.asset_id, j.uri, j.judge, j.source, j.judged_at.isoformat()) for j in known
            )
        (tmp / MARKER).write_text(classifier.model_dump_json(indent=1))
    return Trained(classifier, weights, target, unknown)


def operating_point(
    judges: np.ndarray, scores: np.ndarray, max_fpr: float
) -> tuple[float, float, float]:
    """The threshold, recall and false-positive rate of the ROC point with the most recall
    whose false-positive rate is at most ``max_fpr`` (a score passes from the threshold up)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(judges, scores)
    allowed = np.flatnonzero(fpr <= max_fpr)
    best = allowed[np.argmax(tpr[allowed])]
    raw = thresholds[best]  # the first point of a curve is "nothing passes": +inf
    threshold = float(raw) if math.isfinite(raw) else float(np.nextafter(scores.max(), np.inf))
    return threshold, float(tpr[best]), float(fpr[best])


def roc_figure(
    tag: TagClassifier, curves: Sequence[FoldCurve], pooled: FoldCurve, path: Path
) -> None:
    """The ROC curves of the folds and the pooled out-of-fold curve, the tolerated
    false-positive rate, and the operating point chosen on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = tag.metrics
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=110)
    for n, curve in enumerate(curves):
        ax.plot(curve.fpr, curve.tpr, color="0.7", lw=1, label="folds" if n == 0 else None)
    ax.plot(pooled.fpr, pooled.tpr, color="C0", lw=2, label="out of fold, pooled")
    ax.plot([0, 1], [0, 1], color="0.85", lw=1, ls=":")
    ax.axvline(metrics.max_fpr, color="C3", lw=1, ls="--", label=f"max FPR {metrics.max_fpr:g}")
    ax.plot(metrics.fpr, metrics.recall, "o", color="C3", ms=8)
    ax.annotate(
        f"threshold {metrics.threshold:.3f}\nrecall {metrics.recall:.2f}",
        (metrics.fpr, metrics.recall),
        xytext=(12, -28),
        textcoords="offset points",
    )
    ax.set(
        xlabel="false-positive rate",
        ylabel="true-positive rate (recall)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        title=f"{tag.key}: AUC {metrics.auc:.3f} ± {metrics.auc_std:.3f} "
        f"({metrics.folds} folds)\n{tag.positives} yes, {tag.negatives} no, "
        f"{tag.features} features",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- judgements from files ------------------------------------------------------------------------


def judgement(tag: str, path_or_id: str, judge: int, source: str, base: Path) -> Judgement:
    """A judgement naming an asset by id (32 hex characters) or by the path of its file
    (relative paths from ``base``)."""
    if re.fullmatch(r"[0-9a-f]{32}", path_or_id):
        return Judgement(tag=tag, asset_id=path_or_id, uri="", judge=judge, source=source)
    path = Path(path_or_id)
    uri = path_to_uri(path if path.is_absolute() else base / path)
    return Judgement(tag=tag, asset_id=asset_id(uri), uri=uri, judge=judge, source=source)


def read_judgements(tag: str, path: Path) -> list[Judgement]:
    """Judgements from a CSV with a ``path`` (or ``asset_id``) column and a ``judge`` column
    (1/0, also yes/no, true/false); ``TagError`` listing the rows that are not."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TagError(f"cannot read judgements from {path}: {exc}") from exc
    columns = set(rows[0]) if rows else set()
    key = next((c for c in ("path", "asset_id", "id") if c in columns), None)
    if key is None or "judge" not in columns:
        raise TagError(f"{path}: needs a 'path' (or 'asset_id') column and a 'judge' column")
    found, bad = [], []
    for line, row in enumerate(rows, start=2):
        judge = _judge(row.get("judge"))
        target = (row.get(key) or "").strip()
        if judge is None or not target:
            bad.append(f"line {line}: {row.get(key)!r}, judge {row.get('judge')!r}")
            continue
        found.append(judgement(tag, target, judge, "file", path.parent))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise TagError(f"{path}: rows without a file or a judge of 1/0: {'; '.join(bad[:5])}{more}")
    return found


def folder_judgements(tag: str, positives: Path, negatives: Path) -> list[Judgement]:
    """Every image under ``positives`` judged 1, every one under ``negatives`` judged 0."""
    found = []
    for where, judge in ((positives, 1), (negatives, 0)):
        if not where.is_dir():
            raise TagError(f"{where} is not a folder")
        found += [
            judgement(tag, str(path), judge, "file", Path.cwd())
            for path in sorted(where.rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
    return found


def _judge(value: str | None) -> int | None:
    text = (value or "").strip().lower()
    if text in ("1", "yes", "true", "y"):
        return 1
    if text in ("0", "no", "false", "n"):
        return 0
    return None


# -- applying -------------------------------------------------------------------------------------


class Tagger:
    """Scores documents with the newest version of every tag trained on one model version."""

    def __init__(self, tags: Sequence[tuple[TagClassifier, Weights]]) -> None:
        self.tags = list(tags)

    @classmethod
    def load(cls, model_id: str, settings: Settings, names: Iterable[str] | None = None) -> Tagger:
        """The tags (``names``, default all) whose newest version reads ``model_id``'s
        documents; tags trained on another model are left out, with a warning."""
        wanted = set(names) if names is not None else None
        tags = []
        for tag in all_tags(settings):
            if wanted is not None and tag.name not in wanted:
                continue
            if tag.model_id != model_id:
                log.warning(
                    "tag %s was trained on %s, not %s: retrain it (lookalike tags train %s)",
                    tag.key,
                    tag.model_id,
                    model_id,
                    tag.name,
                )
                continue
            tags.append((tag, load_weights(tag, settings)))
        return cls(tags)

    def __bool__(self) -> bool:
        return bool(self.tags)

    def __call__(self, docs: Sequence[AssetDocument]) -> list[AssetDocument]:
        """The documents with each tag's score (other tags they carry are kept)."""
        if not self.tags or not docs:
            return list(docs)
        scored: list[dict[str, TagScore]] = [dict(doc.tags) for doc in docs]
        for tag, weights in self.tags:
            for verdicts, score in zip(scored, weights.score(docs, tag.features), strict=True):
                verdicts[tag.name] = TagScore(
                    score=float(score), passed=bool(score >= tag.threshold), version=tag.version
                )
        return [doc.model_copy(update={"tags": v}) for doc, v in zip(docs, scored, strict=True)]

    def stale(self) -> filters.Filter | None:
        """The documents some tag's newest version has not scored."""
        return filters.any_of(
            [filters.Not(filters.Term("tag_versions", (tag.key,))) for tag, _ in self.tags]
        )


class Applied(BaseModel):
    """What ``apply`` did: documents scored, and how many pass each tag now."""

    model: str
    scored: int
    passing: dict[str, int]
    duration_s: float


def rewrite(
    index: DocumentIndex,
    where: filters.Filter | None,
    change: Callable[[list[AssetDocument]], list[AssetDocument]],
    chunk: int,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    with_embedding: bool = False,
) -> int:
    """Read the documents passing ``where`` (their embedding only ``with_embedding``, their
    region vectors never) ``chunk`` at a time, ``change`` their tags and write the tags back
    (``set_tags``) ``WRITE_CHUNK`` at a time; return how many. The ids are listed first, so
    documents that no longer pass once changed do not shift the pages."""
    total = index.count(where)
    ids: list[str] = []
    while len(ids) < total:
        page = index.scan(where, len(ids), min(chunk * 4, 10_000))
        if not page:
            break
        ids += page
    done = 0
    pending: list[AssetDocument] = []
    if on_progress:
        on_progress(0, len(ids))
    for start in range(0, len(ids), chunk):
        found = index.get(ids[start : start + chunk], with_embedding=with_embedding)
        # Only the tags are written: the embedding is dropped so that pending documents stay
        # small (a 1,280-d vector as Python floats is about 40 KB).
        pending += [d.model_copy(update={"embedding": None}) for d in change(list(found.values()))]
        done += len(found)
        if len(pending) >= WRITE_CHUNK:
            index.set_tags(pending)
            pending = []
        if on_progress:
            on_progress(min(start + chunk, len(ids)), len(ids))
    index.set_tags(pending)
    index.optimize()
    return done


def apply(
    library: Library,
    names: Sequence[str] | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> Applied:
    """Score the documents of the active index that the newest version of each tag (``names``,
    default all) has not scored yet. ``TagError`` for a named tag with no version for the
    active model."""
    settings = library.settings
    started = datetime.now(UTC)
    index = library.index()
    for name in names or []:
        tag = find(check_name(name), settings)
        if tag is None:
            raise TagError(f"no tag {name!r}: train it first (lookalike tags train {name})")
        if tag.model_id != index.model_id:
            raise TagError(
                f"tag {tag.key} was trained on {tag.model_id}, searches use {index.model_id}: "
                f"train it again (lookalike tags train {name})"
            )
    tagger = Tagger.load(index.model_id, settings, names)
    scored = 0
    if tagger:
        scored = rewrite(
            index,
            tagger.stale(),
            tagger,
            settings.batch_size * 4,
            on_progress,
            with_embedding=any(tag.features != "labels" for tag, _ in tagger.tags),
        )
    passing = {
        tag.name: index.count(filters.Term("tag_names", (tag.name,))) for tag, _ in tagger.tags
    }
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return Applied(model=index.model_id, scored=scored, passing=passing, duration_s=elapsed)


def remove(library: Library, name: str) -> int:
    """Take tag ``name`` off the documents of every index; return how many carried it."""
    settings = library.settings
    keys = tuple(f"{name}@{v}" for v in range(1, (versions(name, settings) or [0])[-1] + 1))
    if not keys:
        return 0

    def without(docs: list[AssetDocument]) -> list[AssetDocument]:
        return [
            doc.model_copy(update={"tags": {k: v for k, v in doc.tags.items() if k != name}})
            for doc in docs
        ]

    where = filters.Term("tag_versions", keys)
    return sum(
        rewrite(library.index(info.model_id), where, without, settings.batch_size * 4)
        for info in library.catalogue.indexes()
    )


class TagInfo(BaseModel):
    """A tag as ``lookalike tags list`` and ``GET /tags`` show it: its newest version (none for
    a tag judged but never trained) and its figures, its judgements, the assets passing it."""

    name: str
    version: int | None = None
    model: str | None = Field(None, description="The model version it reads.")
    features: Features | None = None
    threshold: float | None = None
    auc: float | None = None
    auc_std: float | None = None
    recall: float | None = None
    max_fpr: float | None = None
    positives: int | None = Field(None, description="Yes judgements it was trained on.")
    negatives: int | None = Field(None, description="No judgements it was trained on.")
    judgements: int = Field(0, description="Judgements in the store now (train learns from).")
    passing: int | None = Field(None, description="Assets of the active index passing it.")
    stale: bool = Field(
        False, description="Trained on another model than searches use now: train it again."
    )


def overview(library: Library) -> list[TagInfo]:
    """Every trained or judged tag, by name."""
    index = library.index()
    judged = Counter(j.tag for j in library.judgements.judgements())
    trained = {tag.name: tag for tag in all_tags(library.settings)}
    infos = []
    for name in sorted(set(judged) | set(trained)):
        info = TagInfo(name=name, judgements=judged.get(name, 0))
        if (tag := trained.get(name)) is not None:
            info = info.model_copy(
                update={
                    "version": tag.version,
                    "model": tag.model_id,
                    "features": tag.features,
                    "threshold": tag.threshold,
                    "auc": tag.metrics.auc,
                    "auc_std": tag.metrics.auc_std,
                    "recall": tag.metrics.recall,
                    "max_fpr": tag.metrics.max_fpr,
                    "positives": tag.positives,
                    "negatives": tag.negatives,
                    "passing": index.count(filters.Term("tag_names", (name,))),
                    "stale": tag.model_id != index.model_id,
                }
            )
        infos.append(info)
    return infos


def roc_path(name: str, settings: Settings, version: int | None = None) -> Path | None:
    """The ROC figure of a version of ``name`` (default: the newest), if there is one."""
    tag = find(name, settings, version)
    if tag is None:
        return None
    path = folder(name, tag.version, settings) / "roc.png"
    return path if path.is_file() else None
