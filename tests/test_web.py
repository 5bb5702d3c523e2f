"""The web page in a real headless Chromium (Debian's package, driven by Playwright).

Playwright never downloads a browser here: it starts /usr/bin/chromium, with the flags this
sandboxed machine needs (no sandbox as root, no GPU, and no background network traffic, which
the closed network refuses). `.ci/run` installs the package; without it these tests skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from support import CAT_COPIES, serving

from pipeline.ingest import ingest
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


@pytest.fixture(scope="module", params=["embedded", "opensearch"])
def base_url(
    request: pytest.FixtureRequest,
    sample_manifest: Path,
    embedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The page served over the sample library, on the embedded store and on the real
    OpenSearch node (tests/nodes.py)."""
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
        ingest(
            sample_manifest.parent,
            sample_manifest,
            library=library,
            embedder=embedder,
            settings=settings,
        )
    with serving(settings) as url:
        yield url


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
