"""The page at GET /, in a real headless browser (Debian's chromium, driven by playwright):
what a user sees in the catalogue, and what "try it" shows for a bundled scenario."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cds_service import scenarios

CHROMIUM = os.environ.get("MM_CDS_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags a closed network refuses chromium's own calls.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         # Every host but loopback resolves to nothing: the page may only talk to the service
         # under test, and chromium's own lookups of outside hosts never leave the machine.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
pytestmark = pytest.mark.browser

RECOMMENDATIONS = "https://myeloma-cds.example.org/fhir/CodeSystem/mm-tcell-recommendations"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A fresh profile for this run; playwright downloads no browser of its own.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield context
        context.close()


def title_of(kb, code: str, hook: str) -> str:
    return next(a.title for p in kb.plans.values() for a in p.actions if a.code["code"] == code and hook in a.hooks)


def choose_and_send(page, name: str) -> None:
    page.select_option("#scenario", label=name)
    page.wait_for_function("document.getElementById('request').value.includes('hookInstance')")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('expected cards')")
    page.click("#send")
    page.wait_for_function("document.getElementById('status').textContent.includes('card(s) from')")


def test_catalogue_and_try_it_in_a_real_browser(browser, loopback_service, kb, tmp_path):
    page = browser.new_page()
    page.goto(loopback_service(True) + "/")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    # the catalogue lists every recommendation code
    cells = page.locator("#catalogue table tbody tr td:first-child").all_inner_texts()
    shown = {cell.split(" (")[0] for cell in cells}  # "SCR-1 (in SCR)", "SCR (bundle)"
    codes = {c["code"] for c in kb.artifacts[RECOMMENDATIONS].resource["concept"]}
    assert shown == codes and len(codes) == 41  # 38 recommendations (24 + 14 of catalogue v2) and the 3 bundles
    assert "SCR (bundle)" in cells and "SCR-1 (in SCR)" in cells
    assert page.locator("#explain-off").count() == 0
    # a bundled scenario, sent to the service: the cards it expects, and the trace
    seq1 = scenarios.find(scenarios.DEFAULT_FOLDER / "seq-1.yaml", "SEQ-1 fires for a first teclistamab order")
    for name, expected in (
            # with ADM-5 (driving counselling at a first dose) in the step-up safety bundle
            ("SEQ-1 fires for a first teclistamab order",
             {title_of(kb, "SEQ-1", seq1.hook), "teclistamab step-up dose 1 of 3: 1 safety item"}),
            # INF-1 is a member of the supportive-care bundle: the card is INF-SC's, its title computed
            ("INF-1 fires for a bispecific order with no antiviral prophylaxis",
             {"Supportive care before teclistamab: start HSV/VZV prophylaxis",
              "teclistamab step-up dose 1 of 3: 1 safety item"})):
        choose_and_send(page, name)
        titles = page.locator("#cards article h4").all_inner_texts()
        assert {t.rsplit(" ", 1)[0] for t in titles} == expected  # title, then the indicator badge
    assert page.locator("#trace-section").is_visible()
    fired = page.locator("#trace-actions tbody tr", has_text="fired").first
    assert fired.locator("td").first.inner_text() == "INF-SC"  # the bundle fired (its members are listed in its row)
    assert page.locator("#trace-data tbody tr").count() > 10  # one row per data requirement
    screenshot = tmp_path / "try-it.png"
    page.screenshot(path=str(screenshot), full_page=True)
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_the_page_says_when_explain_is_off(browser, loopback_service):
    page = browser.new_page()
    page.goto(loopback_service(False) + "/")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    assert "MM_CDS_EXPLAIN_ENABLED=1" in page.locator("#explain-off").inner_text()
    choose_and_send(page, "SEQ-1 fires for a first teclistamab order")
    assert page.locator("#cards article h4").count() == 2  # SEQ-1 and the step-up safety card (ADM-5)
    assert "explain is off on this service" in page.locator("#no-trace").inner_text()


def test_card_detail_markdown_is_rendered_as_markdown_and_never_as_markup(browser, loopback_service):
    """CDS Hooks card detail is Markdown: the page shows links, emphasis and lists, and card
    text that holds HTML stays text (the page builds nodes, never innerHTML)."""
    page = browser.new_page()
    page.goto(loopback_service(False) + "/")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    detail = ("IgG **3.5 g/L**, see [the consensus](https://doi.org/10.1/x) and *local policy*.\n\n"
              "- first `step`\n- second <b>not bold</b>\n\n[no script](javascript:alert(1))")
    html = page.evaluate("(d) => markdown(d).map((n) => n.outerHTML).join('')", detail)
    assert html == (
        '<p>IgG <strong>3.5 g/L</strong>, see <a href="https://doi.org/10.1/x" target="_blank" '
        'rel="noopener noreferrer">the consensus</a> and <em>local policy</em>.</p>'
        '<ul><li>first <code>step</code></li><li>second &lt;b&gt;not bold&lt;/b&gt;</li></ul>'
        '<p>[no script](javascript:alert(1))</p>')
