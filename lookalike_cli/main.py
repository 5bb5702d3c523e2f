"""The ``lookalike`` command line: ingest a folder, search it, label an image, run the demo.

A thin shell: every command opens the library (``pipeline.library.Library``) and calls the core
(``pipeline.ingest``, ``pipeline.search``, ``pipeline.rollout``); TensorFlow loads only when a
command runs the model, and the store's client library only when it opens the store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline import maps, tags
from pipeline.backbones import REGISTRY, get_spec
from pipeline.backbones.trained import all_models as all_trained
from pipeline.decode import DecodeError
from pipeline.discover import ManifestError, SourceError, uri_to_path
from pipeline.document import AliasSwitch, IngestSummary, Label
from pipeline.embed import get_embedder
from pipeline.ingest import ingest as run_ingest
from pipeline.label import get_labeler
from pipeline.library import Library
from pipeline.rollout import rollback as run_rollback
from pipeline.rollout import rollout as run_rollout
from pipeline.samples import build_samples
from pipeline.search import (
    AssetNotFound,
    LabelFilter,
    RegionMatch,
    Searcher,
    SearchRequest,
    SearchResponse,
    analyse_image,
    detect_labels,
    parse_box,
    parse_metadata_filters,
    ranks_query_regions,
)
from pipeline.settings import get_settings
from pipeline.store import dump, mapping_files
from pipeline.store.base import StoreError
from pipeline.train import TrainConfig
from pipeline.train import identify_file as run_identify
from pipeline.train import train as run_train

app = typer.Typer(
    name="lookalike",
    help="Similarity search over your media library (settings: LOOKALIKE_* variables).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def _version(value: bool) -> None:
    if value:
        print(version("lookalike"))
        raise typer.Exit()


@app.callback()
def main(
    _v: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Lookalike: find similar images, offline."""


# `lookalike ingest` exit codes (documented in README.md): 2 is a usage error (a missing folder,
# a bad manifest), as for every command; 1 a run that failed (the store, or a bug).
EXIT_INDEXED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_QUARANTINED = 3
_EXIT_CODES = {"indexed": EXIT_INDEXED, "quarantined": EXIT_QUARANTINED}


@contextmanager
def _user_errors(failures: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Expected failures become one red line, not a traceback: exit code 1 for ``failures``
    (the command could not do its work), 2 for the others (the input was wrong)."""
    try:
        yield
    except (
        DecodeError,
        ManifestError,
        AssetNotFound,
        StoreError,
        SourceError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED if isinstance(exc, failures) else EXIT_USAGE) from None


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Folder of images, scanned recursively.")],
    manifest: Annotated[
        Path | None,
        typer.Option(help="CSV/Parquet with path, title, description, keywords, metadata."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index new and changed images, quarantine broken ones, remove deleted ones.

    Exit code: 0 every file is indexed; 3 the run finished but some files are quarantined (by
    this run or an earlier one: `lookalike quarantine` lists them); 1 the run failed; 2 the
    arguments are wrong."""
    with _user_errors(failures=(StoreError,)):
        summary = _run_with_progress(run_ingest, source, manifest, quiet=as_json)
    if as_json:
        out.print_json(data=summary.model_dump(mode="json"))
    else:
        _print_summary(summary)
    raise typer.Exit(_EXIT_CODES[summary.outcome])


@app.command()
def search(
    image: Annotated[Path | None, typer.Argument(help="Query image file.")] = None,
    asset_id: Annotated[str | None, typer.Option("--id", help="Query by an indexed asset.")] = None,
    text: Annotated[
        str | None, typer.Option(help="Full-text query (hybrid with an image).")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            help="Must have label NAME[:MIN_CONFIDENCE]; repeat for more (all must match)."
        ),
    ] = None,
    any_label: Annotated[
        list[str] | None, typer.Option(help="At least one of these labels NAME[:MIN_CONFIDENCE].")
    ] = None,
    not_label: Annotated[
        list[str] | None, typer.Option(help="None of these labels NAME[:MIN_CONFIDENCE].")
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(help="Metadata filter KEY=VALUE; repeat a key to accept several values."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Must pass custom tag NAME (`lookalike tags list`); repeat for more."),
    ] = None,
    not_tag: Annotated[
        list[str] | None, typer.Option(help="Must not pass custom tag NAME.")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Number of hits.")] = 10,
    min_score: Annotated[float | None, typer.Option(help="Drop hits scoring below this.")] = None,
    hybrid: Annotated[str, typer.Option(help="rrf or linear score fusion.")] = "rrf",
    box: Annotated[
        str | None,
        typer.Option(
            help="Search with this part of IMAGE (or of --id's image): X,Y,W,H as fractions "
            "0..1 of its width and height, e.g. 0.5,0,0.5,0.5 for the top right quarter."
        ),
    ] = None,
    regions: Annotated[
        str,
        typer.Option(
            help="Region search: library (find the query inside bigger images), query (find "
            "what appears in the query image), both, or off."
        ),
    ] = "off",
    as_json: JsonOpt = False,
) -> None:
    """Find images similar to IMAGE (or to --id), optionally narrowed by text and labels."""
    with _user_errors():
        if image is not None and asset_id is not None:
            raise ValueError("give a query IMAGE or --id, not both")
        part = parse_box(box) if box is not None else None
        if part is not None and image is None and asset_id is None:
            raise ValueError("--box is a part of a query image: give IMAGE or --id")
        request = SearchRequest(
            regions=regions,
            text=text,
            labels_all=[LabelFilter.parse(s) for s in label or []],
            labels_any=[LabelFilter.parse(s) for s in any_label or []],
            labels_none=[LabelFilter.parse(s) for s in not_label or []],
            metadata=parse_metadata_filters(meta or []),
            tags=tag or [],
            tags_none=not_tag or [],
            k=k,
            min_score=min_score,
            hybrid=hybrid,
        )
        with Library.open() as library:
            searcher = library.searcher()
            if asset_id is not None and part is None:
                response = searcher.similar(asset_id, request)
            elif image is None and asset_id is None:
                response = searcher.search(request)
            else:  # only an image query needs the model (and TensorFlow)
                if asset_id is not None:  # a part of an indexed asset: read its file
                    data = _asset_file(searcher, asset_id).read_bytes()
                    request.exclude_ids.append(asset_id)
                else:
                    data = image.read_bytes()
                embedder = get_embedder(searcher.index.model_id)
                query = analyse_image(
                    data, embedder, box=part, with_regions=ranks_query_regions(request)
                )
                response = searcher.search_image(request, query)
    if as_json:
        out.print_json(data=_hits_json(response))
    else:
        _print_hits(response)


@app.command()
def labels(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    min_confidence: Annotated[float, typer.Option(min=0, max=100)] = 55.0,
    max_labels: Annotated[int, typer.Option(min=1)] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Rekognition DetectLabels-style labels for one image."""
    with _user_errors():
        found = detect_labels(
            image.read_bytes(),
            get_embedder(get_settings().model),
            get_labeler(),
            min_confidence,
            max_labels,
        )
    if as_json:
        out.print_json(data={"Labels": [lab.to_rekognition() for lab in found]})
        return
    table = Table("Label", "Confidence", "Parents", title=str(image))
    for lab in found:
        table.add_row(lab.name, f"{lab.confidence:.1f}", ", ".join(lab.parents))
    out.print(table)


@app.command()
def quarantine(as_json: JsonOpt = False) -> None:
    """List files that could not be indexed, with the reason."""
    with _user_errors(), Library.open() as library:
        records = library.quarantine.records()
    if as_json:
        out.print_json(data={"quarantined": [{"uri": r.uri, "reason": r.reason} for r in records]})
        return
    table = Table("File", "Reason", title=f"{len(records)} quarantined")
    for r in records:
        table.add_row(r.uri, r.reason)
    out.print(table)


@app.command()
def runs(
    limit: Annotated[int, typer.Option("-n", min=1, help="How many runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent ingestion runs, newest first (what the DAG and `lookalike ingest` recorded), and
    the alias switches (rollouts, rollbacks)."""
    with _user_errors(), Library.open() as library:
        recent = library.runs.runs(limit)
        switches = library.runs.switches(limit)
    if as_json:
        out.print_json(
            data={
                "runs": [r.model_dump(mode="json") for r in recent],
                "switches": [s.model_dump(mode="json") for s in switches],
            }
        )
        return
    table = Table(
        "Started",
        "Model",
        "New",
        "Updated",
        "Deleted",
        "Quarantined",
        "Seconds",
        "Images/s",
        title=f"{len(recent)} runs",
    )
    for r in recent:
        table.add_row(
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            r.model,
            str(r.new),
            str(r.updated),
            str(r.deleted),
            str(len(r.quarantined)),
            f"{r.duration_s:.1f}",
            f"{r.images_per_s:.1f}",
        )
    out.print(table)
    if switches:
        moves = Table("When", "From", "To", "Why", "Embedded", title="alias switches")
        for switch in switches:
            moves.add_row(
                f"{switch.started_at:%Y-%m-%d %H:%M:%S}",
                switch.previous or "",
                switch.model,
                switch.trigger,
                str(switch.embedded),
            )
        out.print(moves)


@app.command()
def samples(
    dest: Annotated[
        Path | None, typer.Argument(help="Folder (default: $LOOKALIKE_HOME/samples).")
    ] = None,
) -> None:
    """Write the offline sample library (real photos, copies, odd formats, broken files)."""
    manifest = build_samples(dest or get_settings().samples_dir)
    out.print(f"samples written; manifest: {manifest}")


@app.command()
def demo() -> None:
    """Build the samples, ingest them into the embedded store and search for the cat photo."""
    settings = get_settings()
    manifest = build_samples(settings.samples_dir)
    console.print(f"[bold]1/3[/] sample library in {settings.samples_dir}")
    summary = _run_with_progress(run_ingest, settings.samples_dir, manifest, quiet=False)
    console.print(f"[bold]2/3[/] ingested into {settings.store_dir}")
    _print_summary(summary)
    query = settings.samples_dir / "originals" / "chelsea.jpg"
    console.print(f"[bold]3/3[/] lookalike search {query}")
    search(
        image=query,
        asset_id=None,
        text=None,
        label=None,
        any_label=None,
        not_label=None,
        meta=None,
        k=8,
        min_score=None,
        hybrid="rrf",
        as_json=False,
    )
    labels(image=query, min_confidence=55.0, max_labels=15, as_json=False)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: LOOKALIKE_API_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on (default: LOOKALIKE_API_PORT)."),
    ] = None,
) -> None:
    """Start the search API and its web page (uvicorn); the model loads before it listens."""
    # The API app's dependencies (FastAPI, uvicorn's protocols) load for this command only.
    from search_api import create_app
    from search_api.server import server_config

    settings = get_settings()
    app_ = create_app(settings)
    uvicorn.Server(
        server_config(app_, settings, host or settings.api_host, port or settings.api_port)
    ).run()


def _progress(quiet: bool) -> Progress:
    """Progress bars on stderr, for a terminal only (never in --json output or a pipe)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not sys.stderr.isatty(),
        transient=True,
    )


def _run_with_progress(run, source: Path, manifest: Path | None, quiet: bool) -> IngestSummary:
    with _progress(quiet) as progress:
        task = progress.add_task("ingest", total=None)
        return run(
            source,
            manifest,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )


def _print_summary(summary: IngestSummary) -> None:
    out.print(
        f"new {summary.new}, updated {summary.updated}, unchanged {summary.unchanged}, "
        f"deleted {summary.deleted}, quarantined {len(summary.quarantined)} "
        f"({summary.duration_s:.1f} s, {summary.images_per_s:.1f} images/s, {summary.model})"
    )
    for item in summary.quarantined:
        out.print(f"  [yellow]quarantined[/] {item.uri}: {item.reason}")
    if summary.quarantined_earlier:
        out.print(
            f"  {summary.quarantined_earlier} unchanged files stay quarantined "
            "(lookalike quarantine lists them)"
        )


def _hits_json(response: SearchResponse) -> dict:
    return {
        "hits": [
            {
                "id": h.id,
                "uri": h.document.uri,
                "score": h.score,
                "vector_score": h.vector_score,
                "text_score": h.text_score,
                "title": h.document.title,
                "labels": [lab.model_dump() for lab in h.document.labels],
                "tags": {name: t.model_dump() for name, t in h.document.tags.items()},
                "matched_labels": [lab.model_dump() for lab in h.matched_labels],
                "region": h.region.model_dump() if h.region else None,
            }
            for h in response.hits
        ],
        "note": response.note,
    }


def _specific(labels: list[Label], n: int = 3) -> list[Label]:
    """The most specific labels (no other label lists them as a parent): "Egyptian Cat" says
    more in a results table than its ancestors "Animal" and "Mammal" at 100 %."""
    ancestors = {p for lab in labels for p in lab.parents}
    return [lab for lab in labels if lab.name not in ancestors][:n]


def _print_hits(response: SearchResponse) -> None:
    if response.note:
        console.print(f"[yellow]note:[/] {response.note}")
    table = Table(
        "#", "Score", "File", "Title", "Top labels", "Region", title=f"{len(response.hits)} hits"
    )
    for rank, h in enumerate(response.hits, 1):
        top = ", ".join(f"{lab.name} {lab.confidence:.0f}" for lab in _specific(h.document.labels))
        table.add_row(
            str(rank),
            f"{h.score:.3f}",
            "/".join(h.document.uri.rsplit("/", 2)[-2:]),
            h.document.title or "",
            top,
            _region_text(h.region),
        )
    out.print(table)


def _region_text(region: RegionMatch | None) -> str:
    """``in hit 0.25,0,0.5,0.5``: where the match was (of the hit's image, or the query's)."""
    if region is None:
        return ""
    where = "in hit" if region.side == "library" else "in query"
    return f"{where} {','.join(f'{v:.2f}' for v in region.box)}"


def _asset_file(searcher: Searcher, asset_id: str) -> Path:
    """The local file of an indexed asset (to search with a part of it)."""
    doc = searcher.index.get([asset_id]).get(asset_id)
    if doc is None:
        raise AssetNotFound(f"no indexed asset with id {asset_id!r}")
    path = uri_to_path(doc.uri)
    if path is None or not path.is_file():
        raise ValueError(
            f"asset {asset_id}'s file {doc.uri} is not readable here: --box needs it to cut "
            "the part out"
        )
    return path


# -- lookalike index: templates, model-version indexes and the alias --------------------------

index_app = typer.Typer(
    help="Indexes per model version and the alias searches follow (every store); templates and "
    "pipelines (OpenSearch/Elasticsearch).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")


@index_app.command("apply")
def index_apply() -> None:
    """Put the index templates on the cluster (idempotent), for the configured model's vectors
    (as ``index export`` writes them)."""
    with _user_errors(), Library.open() as library:
        applied = library.backend.apply(get_spec(get_settings().model).dim)
    for item in applied:
        out.print(f"applied {item}")
    if not applied:
        out.print(f"the {get_settings().store} store needs no templates: nothing to apply")


@index_app.command("list")
def index_list(as_json: JsonOpt = False) -> None:
    """Every model version's index with its size; the active one is what searches use."""
    with _user_errors(), Library.open() as library:
        infos = library.catalogue.indexes()
    alias = get_settings().table
    if as_json:
        out.print_json(data={"alias": alias, "indexes": [asdict(i) for i in infos]})
        return
    table = Table("Model", "Index", "Documents", "Active", title=f"alias {alias!r}")
    for info in infos:
        table.add_row(info.model_id, info.name, str(info.count), "yes" if info.active else "")
    out.print(table)


@index_app.command("activate")
def index_activate(
    model_id: Annotated[
        str, typer.Argument(help="Model version to search, e.g. mobilenet_v2-imagenet@1.")
    ],
) -> None:
    """Point the alias at MODEL_ID's index in one atomic step (a rollout, or a rollback)."""
    with _user_errors(), Library.open() as library:
        known = {info.model_id for info in library.catalogue.indexes()}
        if model_id not in known:
            raise ValueError(
                f"no index for {model_id!r}; indexed model versions: {sorted(known) or 'none'}"
            )
        previous = library.catalogue.switch(model_id)
        library.runs.record(AliasSwitch(model=model_id, previous=previous, trigger="activate"))
    out.print(f"alias {get_settings().table!r}: {previous or 'none'} -> {model_id}")


@index_app.command("export")
def index_export(
    dest: Annotated[Path, typer.Argument(help="Folder to write the JSON files into.")] = Path(
        "mappings"
    ),
) -> None:
    """Write the index templates for the current settings as JSON files (``mappings/`` holds
    them for the defaults), to read or apply by hand."""
    settings = get_settings()
    dest.mkdir(parents=True, exist_ok=True)
    for name, body in mapping_files(settings, get_spec(settings.model).dim).items():
        (dest / name).write_text(dump(body))
        out.print(f"wrote {dest / name}")


# -- lookalike rollout / rollback: switch searches to another model version -------------------


@app.command()
def rollout(
    model: Annotated[
        str,
        typer.Argument(help="Registry name of the model version, e.g. mobilenet_v2-gem-imagenet."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Re-embed every indexed asset with MODEL into its own index, check it (same documents,
    quality gate) and switch searches to it atomically; the previous index is kept."""
    with _user_errors():
        done = run_rollout(model)
    if as_json:
        out.print_json(data=done.model_dump(mode="json"))
        return
    out.print(
        f"embedded {done.embedded} ({done.plan.resumed} already there); "
        f"{done.validation.gate.describe()}"
    )
    out.print(f"alias {get_settings().table!r}: {done.switch.previous} -> {done.switch.active}")


@app.command()
def rollback(
    to: Annotated[
        str | None,
        typer.Option(
            help="Model version to switch to (default: the one the last switch replaced)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch searches back to the previous model version's index (kept by every rollout)."""
    with _user_errors():
        switch = run_rollback(to=to)
    if as_json:
        out.print_json(data=switch.model_dump())
        return
    out.print(f"alias {get_settings().table!r}: {switch.previous} -> {switch.active}")


# -- fine-tuning ---------------------------------------------------------------------------------


@app.command()
def train(
    source: Annotated[
        Path,
        typer.Argument(help="A folder with one sub-folder per class, or the base of --manifest."),
    ],
    name: Annotated[str, typer.Option(help="Short name: the model is <backbone>-<head>-<name>.")],
    manifest: Annotated[
        Path | None, typer.Option(help="CSV/Parquet manifest naming the images instead.")
    ] = None,
    label_column: Annotated[
        str, typer.Option(help="The manifest column that holds each image's class.")
    ] = "label",
    head: Annotated[str, typer.Option(help="arcface (default) or triplet.")] = "arcface",
    base: Annotated[
        str, typer.Option(help="Built-in backbone to start from.")
    ] = "mobilenet_v2-imagenet",
    dim: Annotated[int, typer.Option(help="Embedding size.")] = 256,
    epochs: Annotated[int, typer.Option(help="Passes over the training features.")] = 40,
    views: Annotated[int, typer.Option(help="Augmented views per image.")] = 2,
    mirror: Annotated[
        bool,
        typer.Option(help="Mirror views too (--no-mirror where a mirror image is another class)."),
    ] = True,
    validation_share: Annotated[
        float, typer.Option(help="Share of the classes held out for validation.")
    ] = 0.25,
    target_precision: Annotated[
        float, typer.Option(help="Precision the open-set threshold is calibrated for.")
    ] = 0.9,
    seed: Annotated[int, typer.Option(help="Random seed (split, views, initialisation).")] = 0,
    self_supervised: Annotated[
        bool,
        typer.Option(
            "--self-supervised",
            help="No labels: every image under SOURCE is its own identity, its augmented views "
            "the positives (for copy detection).",
        ),
    ] = False,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Add a version to an existing model name.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the embedding for "the same thing" on labelled images: a new model version in
    the registry, judged on classes it never saw (roll it out with `lookalike rollout`)."""
    with _user_errors():
        config = TrainConfig(
            name=name,
            base=base,
            head=head,
            dim=dim,
            epochs=epochs,
            views=views,
            mirror=mirror,
            self_supervised=self_supervised,
            validation_share=validation_share,
            target_precision=target_precision,
            seed=seed,
        )
        with _progress(as_json) as progress:
            tasks: dict[str, int] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            done = run_train(
                source,
                config,
                manifest=manifest,
                label_column=label_column if manifest else None,
                new_version=new_version,
                progress=report,
            )
    if as_json:
        out.print_json(data=done.model_dump(mode="json"))
        return
    model, data = done.model, done.model.data
    out.print(
        f"[bold]{model.model_id}[/]: {data['images']} images, {data['classes']} classes "
        f"({data['validation_classes']} held out), {data['quarantined']} quarantined"
    )
    for problem in done.quarantined:
        out.print(f"  quarantined {problem.uri}: {problem.reason}")
    table = Table("on held-out classes", "P@1", "mAP", "open-set precision", "recall", "F1")
    for when in ("before", "after"):
        f = model.metrics[when]
        o = f["open_set"]
        table.add_row(
            model.base if when == "before" else model.model_id,
            *(f"{v:.3f}" for v in (f["P@1"], f["mAP"], o["precision"], o["recall"], o["f1"])),
        )
    out.print(table)
    loss = model.metrics["loss"]
    out.print(
        f"loss {loss['first']:.3f} -> {loss['last']:.3f}; match threshold "
        f"{model.match_threshold:.3f} (cosine, for precision {model.target_precision:g})"
    )
    out.print(f"next: lookalike rollout {model.model_id}")


@app.command()
def identify(
    image: Annotated[Path, typer.Argument(help="The image to identify.")],
    model: Annotated[
        str | None,
        typer.Option(help="Trained model (name or name@version; default LOOKALIKE_MODEL)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Say which known class an image shows, or that it is no known match (a trained model's
    nearest labelled image, at its calibrated threshold)."""
    with _user_errors():
        found = run_identify(image, model or get_settings().model)
    if as_json:
        out.print_json(data=found.model_dump())
        return
    if found.label is None:
        out.print(
            f"no known match (nearest: {found.nearest}, similarity {found.similarity:.3f} "
            f"< threshold {found.threshold:.3f})"
        )
    else:
        out.print(
            f"{found.label} (similarity {found.similarity:.3f} >= {found.threshold:.3f}; "
            f"{found.model})"
        )


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """The models LOOKALIKE_MODEL can name: built-in backbones and trained versions."""
    trained_models = all_trained(get_settings().model_dir)
    if as_json:
        out.print_json(
            data={
                "builtin": [spec.model_id for spec in REGISTRY.values()],
                "trained": [m.model_dump(mode="json", exclude={"config"}) for m in trained_models],
            }
        )
        return
    table = Table("model", "dim", "what")
    for spec in REGISTRY.values():
        table.add_row(spec.model_id, str(spec.dim), spec.description)
    for m in trained_models:
        after = m.metrics["after"]
        table.add_row(
            m.model_id,
            str(m.dim),
            f"{m.head} head on {m.base}: held-out P@1 {after['P@1']:.3f}, mAP "
            f"{after['mAP']:.3f}, open-set F1 {after['open_set']['f1']:.3f}",
        )
    out.print(table)


# -- lookalike tags: custom tags learned from yes/no judgements --------------------------------

tags_app = typer.Typer(
    help='Custom tags learned from yes/no judgements ("is this a whole-room photo?"): train, '
    "apply to the library, list, show, delete. Search with --tag NAME.",
    no_args_is_help=True,
)
app.add_typer(tags_app, name="tags")


@tags_app.command("train")
def tags_train(
    name: Annotated[str, typer.Argument(help="Tag name: lower-case letters, digits, _.")],
    judgements: Annotated[
        Path | None,
        typer.Option(help="CSV with a path (or asset_id) column and a judge column (1/0)."),
    ] = None,
    positives: Annotated[
        Path | None, typer.Option(help="A folder of images the tag applies to (judged 1).")
    ] = None,
    negatives: Annotated[
        Path | None, typer.Option(help="A folder of images it does not apply to (judged 0).")
    ] = None,
    features: Annotated[
        str, typer.Option(help="labels (label confidences), embedding, or both.")
    ] = "both",
    max_fpr: Annotated[
        float, typer.Option(help="Tolerated false-positive rate: fixes the threshold.")
    ] = 0.05,
    labels_per_class: Annotated[
        int, typer.Option(help="Label features: the most frequent among yes and among no.")
    ] = 50,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Train a new version of tag NAME from every judgement in the store (those made on the web
    page or by POST /assets/{id}/judgements) plus those of --judgements or --positives/--negatives
    (recorded in the store once training succeeds). Reports AUC across folds and the threshold
    and recall at --max-fpr, and writes the ROC curve as a PNG."""
    with _user_errors():
        tags.check_name(name)
        tags.check_fpr(max_fpr)
        if (positives is None) != (negatives is None):
            raise ValueError("give --positives and --negatives together")
        given = tags.read_judgements(name, judgements) if judgements else []
        if positives is not None and negatives is not None:
            given += tags.folder_judgements(name, positives, negatives)
        with Library.open() as library:
            index = library.index()
            stored = library.judgements.judgements(name)
            done = tags.train(
                name,
                [*stored, *given],
                index,
                library.settings,
                features=features,  # type: ignore[arg-type]  # checked by train
                max_fpr=max_fpr,
                labels_per_class=labels_per_class,
                folds=folds,
            )
            skipped = {j.asset_id for j in done.skipped}
            library.judgements.add([j for j in given if j.asset_id not in skipped])
    tag, metrics = done.classifier, done.classifier.metrics
    if as_json:
        out.print_json(
            data={
                **tag.model_dump(mode="json"),
                "folder": str(done.folder),
                "skipped": [j.model_dump(mode="json") for j in done.skipped],
            }
        )
        return
    for j in done.skipped:
        console.print(f"[yellow]skipped[/] {j.uri or j.asset_id}: not in {index.model_id}")
    out.print(
        f"[bold]{tag.key}[/] ({tag.features} features, {tag.model_id}): {tag.positives} yes, "
        f"{tag.negatives} no"
    )
    out.print(
        f"AUC {metrics.auc:.3f} ± {metrics.auc_std:.3f} over {metrics.folds} folds; at FPR <= "
        f"{metrics.max_fpr:g}: threshold {metrics.threshold:.3f}, recall {metrics.recall:.3f} "
        f"(FPR {metrics.fpr:.3f})"
    )
    out.print(f"ROC curve: {done.folder / 'roc.png'}")
    out.print(f"next: lookalike tags apply {name}")


@tags_app.command("apply")
def tags_apply(
    names: Annotated[
        list[str] | None, typer.Argument(help="Tags to apply (default: every tag).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the assets the newest version of each tag has not scored yet (new ingests are
    scored as they are written; this backfills after a training)."""
    with (
        _user_errors(failures=(StoreError,)),
        Library.open() as library,
        _progress(as_json) as progress,
    ):
        task = progress.add_task("tag", total=None)
        applied = tags.apply(
            library,
            names,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        out.print_json(data=applied.model_dump(mode="json"))
        return
    out.print(
        f"scored {applied.scored} assets of {applied.model} in {applied.duration_s:.1f} s; "
        + ", ".join(f"{n}: {c} pass" for n, c in applied.passing.items())
    )


@tags_app.command("list")
def tags_list(as_json: JsonOpt = False) -> None:
    """Every tag: newest version, figures, judgements so far, assets passing it."""
    with _user_errors(failures=(StoreError,)), Library.open() as library:
        infos = tags.overview(library)
    if as_json:
        out.print_json(data=[info.model_dump(mode="json") for info in infos])
        return
    table = Table("tag", "version", "AUC", "recall @ FPR", "threshold", "judged", "passing")
    for info in infos:
        trained = info.version is not None
        table.add_row(
            info.name + (" [yellow](retrain: other model)[/]" if info.stale else ""),
            str(info.version) if trained else "not trained",
            f"{info.auc:.3f} ± {info.auc_std:.3f}" if trained else "",
            f"{info.recall:.2f} @ {info.max_fpr:g}" if trained else "",
            f"{info.threshold:.3f}" if trained else "",
            str(info.judgements),
            str(info.passing) if trained else "",
        )
    out.print(table)


@tags_app.command("show")
def tags_show(
    name: Annotated[str, typer.Argument(help="Tag name.")],
    version: Annotated[int | None, typer.Option(help="Version (default: the newest).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One version of a tag: how it was trained and how well it does."""
    with _user_errors():
        settings = get_settings()
        tag = tags.find(tags.check_name(name), settings, version)
        if tag is None:
            which = f" version {version}" if version else ""
            raise ValueError(f"no trained tag {name!r}{which}")
    if as_json:
        out.print_json(data=tag.model_dump(mode="json"))
        return
    m = tag.metrics
    out.print(f"[bold]{tag.key}[/] trained {tag.created_at:%Y-%m-%d %H:%M} on {tag.model_id}")
    out.print(
        f"  features {tag.features} ({len(tag.vocabulary)} labels), judgements "
        f"{tag.judgements} ({tag.positives} yes, {tag.negatives} no)"
    )
    out.print(
        f"  AUC {m.auc:.3f} ± {m.auc_std:.3f} (folds: {', '.join(f'{a:.3f}' for a in m.fold_auc)})"
    )
    out.print(
        f"  threshold {m.threshold:.3f}: recall {m.recall:.3f} at FPR {m.fpr:.3f} "
        f"(tolerated {m.max_fpr:g})"
    )
    out.print(f"  ROC curve: {tags.folder(tag.name, tag.version, settings) / 'roc.png'}")


@tags_app.command("delete")
def tags_delete(
    name: Annotated[str, typer.Argument(help="Tag name.")],
    keep_judgements: Annotated[
        bool, typer.Option("--keep-judgements", help="Keep its judgements to train it again.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a tag: its versions, its scores on every asset, and its judgements."""
    with _user_errors(failures=(StoreError,)):
        tags.check_name(name)
        if not yes and not typer.confirm(f"delete tag {name!r} and its scores on every asset?"):
            raise typer.Exit(1)
        with Library.open() as library:
            untagged = tags.remove(library, name)
            removed = tags.delete(name, library.settings)
            judged = 0 if keep_judgements else library.judgements.remove(name)
    out.print(
        f"deleted {removed} version(s) of {name}, its scores on {untagged} asset(s) and "
        f"{judged} judgement(s)"
    )


@app.command("map")
def library_map(
    limit: Annotated[int, typer.Option(min=4, help="Map at most this many assets.")] = 5000,
    perplexity: Annotated[float, typer.Option(min=1, help="t-SNE perplexity.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed of the projection.")] = 0,
) -> None:
    """Compute the library map the web page shows (a 2-D t-SNE of the embeddings, with
    thumbnails where the images are): run it again after large ingests."""
    with _user_errors(failures=(StoreError,)), Library.open() as library:
        with console.status("mapping the library") as status:
            computed = maps.build_map(
                library,
                limit=limit,
                perplexity=perplexity,
                seed=seed,
                on_progress=lambda stage: status.update(stage),
            )
        path = maps.save_map(computed, library.settings)
    out.print(f"mapped {len(computed.points)} of {computed.assets} assets: {path}")
