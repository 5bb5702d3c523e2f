"""The web page in a real headless Chromium (Debian's package, driven by Playwright).

Playwright never downloads a browser here: it starts /usr/bin/chromium, with the flags this
sandboxed machine needs (no sandbox as root, no GPU, and no background network traffic, which
the closed network refuses). `.ci/run` installs the package; without it these tests skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect
from support import CAT_COPIES, ingest_samples, serving, stem

from pipeline import maps, tags
from pipeline.document import Judgement
from pipeline.library import Library
from pipeline.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's chromium is not installed ({CHROMIUM}): "
        "`apt-get install -y chromium`, as .ci/run does",
    ),
]

# A shared, busy machine: assertions on the page wait for it (they pass as soon as they hold).
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module", params=["embedded", "opensearch"])
def served(
    request: pytest.FixtureRequest,
    sample_manifest: Path,
    embedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Settings]]:
    """The page served over the sample library, on the embedded store and on the real
    OpenSearch node (tests/nodes.py): its base URL and the library's settings (tests train
    tags and compute the map in that library, as the CLI would beside the server)."""
    home = tmp_path_factory.mktemp("web_home")
    if request.param == "embedded":
        settings = Settings(home=home, batch_size=8)
    else:
        node = request.getfixturevalue("opensearch_node")
        settings = node.settings(home, batch_size=8, table="web")
    with Library.open(settings) as library:
        index = library.index(embedder.model_id)
        if index.count():  # a node shared with an earlier session: index from scratch
            index.delete(list(index.states()))
            library.quarantine.remove([r.id for r in library.quarantine.records()])
        for tag in {j.tag for j in library.judgements.judgements()}:
            library.judgements.remove(tag)
        ingest_samples(library, sample_manifest, embedder)
    with serving(settings) as url:
        yield url, settings


@pytest.fixture(scope="module")
def base_url(served: tuple[str, Settings]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def settings(served: tuple[str, Settings]) -> Settings:
    return served[1]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url: str):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def result_stems(page) -> list[str]:
    uris = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.uri)")
    return [uri.rsplit("/", 1)[-1].rsplit(".", 1)[0] for uri in uris]


def wait_for_heading(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#heading').textContent === text"
        " && !document.body.classList.contains('busy')",
        arg=text,
    )


def test_upload_the_cat_see_its_copies_then_more_like_a_result(page, sample_manifest: Path) -> None:
    page.wait_for_selector("#grid .card")  # the library is listed before any query
    page.wait_for_selector("#chips .chip")  # label chips come from /labels
    page.set_input_files("#file", sample_manifest.parent / "originals" / "chelsea.jpg")
    wait_for_heading(page, "Similar images")
    found = result_stems(page)
    assert set(found[:6]) == CAT_COPIES, found
    first = page.locator("#grid .card").first
    assert first.locator(".score").text_content() == "1.000"
    assert "looks" in first.locator(".why").text_content()
    page.wait_for_function(  # its thumbnail really loads
        "() => { const img = document.querySelector('#grid .card img');"
        " return img.complete && img.naturalWidth > 0; }"
    )

    clicked = found[1]
    page.locator("#grid .card").nth(1).locator(".thumb").click()
    wait_for_heading(page, "More like this")
    similar = result_stems(page)
    assert clicked not in similar, "the query asset itself is left out"
    assert set(similar[:5]) == CAT_COPIES - {clicked}, similar
    assert page.locator("#query-caption").text_content().startswith("Chelsea the cat")


def test_label_chip_and_region_crop_narrow_the_search(page, sample_manifest: Path) -> None:
    page.set_input_files("#file", sample_manifest.parent / "originals" / "coffee.jpg")
    wait_for_heading(page, "Similar images")
    assert result_stems(page)[0] == "coffee"

    # Drag a box around the cup: the page sends the box with the whole file, the server cuts it.
    box = page.locator("#query-img").bounding_box()
    assert box is not None
    with page.expect_request(lambda r: r.url.endswith("/search") and r.method == "POST") as sent:
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.15)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.85, steps=4)
        page.mouse.up()
    assert sent.value.headers["content-type"].startswith("multipart/form-data")
    wait_for_heading(page, "Similar images")
    assert page.locator("#crop").is_visible()
    assert page.locator("#query-caption").text_content().startswith("Region ")
    assert result_stems(page)[0].startswith("coffee")

    page.locator("#chips .chip[data-label='Cat']").click()
    wait_for_heading(page, "Similar images")
    assert set(result_stems(page)) == CAT_COPIES
    assert page.locator("#grid .card .tag.matched").first.text_content().startswith("Cat ")


def test_region_search_finds_the_cat_inside_a_photo_and_draws_where(
    page, sample_manifest: Path, tmp_path: Path
) -> None:
    """The cat pasted small into the grass photo: asked what of the library is in it (the
    page sends `regions`), the cat comes right after the grass, and hovering its card draws
    the matched part on the query image."""
    originals = sample_manifest.parent / "originals"
    with Image.open(originals / "grass.png") as grass, Image.open(originals / "chelsea.jpg") as cat:
        scene = grass.convert("RGB").resize((900, 600))
        scene.paste(cat.convert("RGB").resize((240, 160)), (620, 400))
    scene.save(tmp_path / "scene.jpg", quality=92)
    page.set_input_files("#file", tmp_path / "scene.jpg")
    wait_for_heading(page, "Similar images")
    assert result_stems(page)[0] not in CAT_COPIES, "the whole scene looks like grass"
    with page.expect_response(lambda r: r.url.endswith("/search")) as answered:
        page.select_option("#regions", "query")
    hits = answered.value.json()["hits"]
    wait_for_heading(page, "Similar images")
    found = result_stems(page)
    # the grass itself is in the library and in the photo; the cat comes right after it
    assert found[0] == "grass" and found[1] in CAT_COPIES, found
    assert hits[1]["region"]["side"] == "query", hits[1]
    cat = page.locator("#grid .card").nth(1)
    assert "in your image" in cat.locator(".why").text_content()
    cat.hover()
    mark = page.locator("#match")
    assert mark.is_visible()
    img, drawn = page.locator("#query-img").bounding_box(), mark.bounding_box()
    assert img and drawn
    centre = (drawn["x"] + drawn["width"] / 2 - img["x"]) / img["width"]
    assert centre > 0.5, "the matched part is on the cat's side of the photo"
    page.locator("#heading").hover()
    assert not mark.is_visible()


def test_judging_with_the_thumbs_records_judgements(page, settings: Settings) -> None:
    """A new tag is started in the panel (a bad name is refused there, in the status line);
    each card then has a yes and a no button, and a click records the judgement in the store
    and counts it."""
    page.wait_for_selector("#grid .card")
    assert page.locator("#grid .card .judge-buttons").first.is_hidden(), "no tag chosen yet"

    page.fill("#judge-new", "Whole Room")
    page.click("#judge-new-form button")
    expect(page.locator("#judge-new")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#status.error")).to_contain_text("lower-case letters")

    page.fill("#judge-new", "whole_room")
    page.press("#judge-new", "Enter")
    expect(page.locator("#judge-tag")).to_have_value("whole_room")
    expect(page.locator("#judge-info")).to_contain_text("0 judgements of whole_room")
    cards = page.locator("#grid .card")
    first, second = cards.nth(0), cards.nth(1)
    first.get_by_role("button", name="Yes, whole_room").click()
    expect(first.locator("button.yes")).to_have_attribute("aria-pressed", "true")
    second.get_by_role("button", name="No, whole_room").click()
    expect(second.locator("button.no")).to_have_attribute("aria-pressed", "true")
    expect(first.locator("button.no")).to_have_attribute("aria-pressed", "false")
    info = page.locator("#judge-info")
    expect(info).to_contain_text("2 judgements of whole_room")
    expect(info).to_contain_text("lookalike tags train whole_room")

    with Library.open(settings) as library:
        stored = {j.asset_id: j for j in library.judgements.judgements("whole_room")}
    first_id, second_id = first.get_attribute("data-id"), second.get_attribute("data-id")
    assert set(stored) == {first_id, second_id}
    assert stored[first_id].judge == 1 and stored[second_id].judge == 0
    assert stored[first_id].source == "api"

    # a fresh page shows what the store holds on the cards
    page.reload()
    page.wait_for_selector("#grid .card")
    page.select_option("#judge-tag", "whole_room")
    card = page.locator(f"#grid .card[data-id='{first_id}']")
    expect(card.locator("button.yes")).to_have_attribute("aria-pressed", "true")


def test_a_trained_tag_is_a_filter_chip_and_a_badge(
    page, settings: Settings, sample_manifest: Path
) -> None:
    """A tag trained (pipeline.tags, as `lookalike tags train` does) from yes for the cat
    photos and no for others, and applied to the index: its chip keeps the assets passing it
    (shown with its badge), in a listing and in an image search, and clicked again leaves
    them out."""
    with Library.open(settings) as library:
        index = library.index()
        docs = index.get(sorted(index.states()))
        by_stem = {stem(doc.uri): doc for doc in docs.values()}
        others = sorted(set(by_stem) - CAT_COPIES)[:10]
        library.judgements.add(
            [
                Judgement(tag="cat", asset_id=by_stem[name].id, uri=by_stem[name].uri, judge=judge)
                for names, judge in ((CAT_COPIES, 1), (others, 0))
                for name in sorted(names)
            ]
        )
        tags.train("cat", library.judgements.judgements("cat"), index, settings)
        tags.apply(library, ["cat"])
        scored = index.get(sorted(index.states()))
    passing = {stem(doc.uri) for doc in scored.values() if doc.tags["cat"].passed}
    assert passing and passing < set(by_stem), passing
    assert "chelsea" in passing

    page.reload()
    page.wait_for_selector("#grid .card")  # the first search is done
    chip = page.locator("#tag-chips .chip[data-tag='cat']")
    expect(chip.locator("small")).to_have_text(str(len(passing)))
    with page.expect_request(lambda r: r.url.endswith("/search")) as sent:
        chip.click()
    assert sent.value.post_data_json["tags"] == ["cat"]
    wait_for_heading(page, "Library")
    assert set(result_stems(page)) == passing
    badge = page.locator("#grid .card .tag-badge[data-tag='cat']")
    expect(badge).to_have_count(len(passing))
    expect(badge.first).to_have_attribute("title", re.compile(r"^cat: score 0\.\d{3} "))

    # an upload sends the tags as form fields: only the assets passing are compared
    page.set_input_files("#file", sample_manifest.parent / "originals" / "coffee.jpg")
    wait_for_heading(page, "Similar images")
    assert set(result_stems(page)) == passing

    with page.expect_request(lambda r: r.url.endswith("/search")) as sent:
        chip.click()
    assert sent.value.headers["content-type"].startswith("multipart/form-data")
    wait_for_heading(page, "Similar images")
    shown = result_stems(page)
    assert shown[0] == "coffee" and not set(shown) & passing, shown


def test_the_map_draws_every_asset_and_a_click_searches(page, settings: Settings) -> None:
    """Before `lookalike map` the view says to run it; once computed (pipeline.maps), it has
    one point per asset, and a click on one is "more like this" for that asset."""
    page.wait_for_selector("#grid .card")
    with Library.open(settings) as library:
        maps.path(settings, library.index().model_id).unlink(missing_ok=True)
    page.click("#view-map")
    expect(page.locator("#map-message")).to_contain_text("lookalike map")
    expect(page.locator("#grid")).to_be_hidden()
    expect(page.locator("#status")).not_to_have_class("error")  # a missing map is no error

    with Library.open(settings) as library:
        computed = maps.build_map(library)
        maps.save_map(computed, settings)
        ids = set(library.index().states())
    page.click("#view-results")
    page.click("#view-map")
    page.wait_for_selector("#map .point")
    points = page.locator("#map .point")
    drawn = points.evaluate_all("points => points.map(p => p.dataset.id)")
    assert sorted(drawn) == sorted(ids)
    assert page.locator("#map-legend li").count() >= 2

    target = points.last  # drawn last: nothing covers it
    target_id = target.get_attribute("data-id")
    title = next(p.title for p in computed.points if p.id == target_id)
    target.click()
    wait_for_heading(page, "More like this")
    expect(page.locator("#map-view")).to_be_hidden()
    expect(page.locator("#grid")).to_be_visible()
    expect(page.locator("#query-caption")).to_contain_text(title)
    assert target_id not in page.locator("#grid .card").evaluate_all(
        "cards => cards.map(c => c.dataset.id)"
    )
