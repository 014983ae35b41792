"""The built book in a real browser: every page of book/_build/html opens in headless Chromium.

A page fails on a broken image, a broken internal link (missing file or missing anchor), a
JavaScript console error, an equation MathJax did not render (or rendered as an error), a table
wider than the article at a 1280 px window (or than the scrolling box the theme puts it in, which
hides its last columns behind a horizontal scroll), or a resource loaded from the network (the book must
work offline from index.html).

Needs selenium (the ``book`` extra) and Chromium with its driver (Debian: ``apt-get install
chromium chromium-driver``); the test skips with the reason when one is missing, and when no book
is built (``make book PROFILE=smoke``).  With ``FEDGRAD_REQUIRE_BROWSER=1`` (CI) a missing piece is
a failure instead.  ``FEDGRAD_CHROME`` / ``FEDGRAD_CHROMEDRIVER`` name the binaries when they are not
on the PATH.  The checks themselves are tested on a small hand-made site with one fault of each
kind (``test_checks_catch_each_fault``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "book" / "_build" / "html"
WIDTH = 1280

# Runs in the page after load: waits for MathJax, forces lazy images to load, then reports.
PAGE_REPORT_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  const report = {math: 0, unrendered: [], mathErrors: [], brokenImages: [], wideTables: [], links: [], remote: []};
  const maths = Array.from(document.querySelectorAll('.math'));
  report.math = maths.length;
  if (maths.length) {
    const t0 = Date.now();
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 10000) {
      await new Promise(r => setTimeout(r, 100));
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      try { await MathJax.startup.promise; } catch (e) { report.mathErrors.push(String(e)); }
    } else {
      report.mathErrors.push('MathJax did not load');
    }
    for (const m of maths) {
      if (!m.querySelector('mjx-container')) report.unrendered.push(m.textContent.trim().slice(0, 80));
    }
    for (const e of document.querySelectorAll('mjx-merror')) {
      report.mathErrors.push(e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80));
    }
  }
  const images = Array.from(document.images);
  images.forEach(i => { i.loading = 'eager'; });
  const results = await Promise.all(images.map(i => i.decode().then(() => null, () => i.getAttribute('src'))));
  report.brokenImages = results.filter(x => x !== null);
  const article = document.querySelector('article') || document.querySelector('main') || document.body;
  const limit = article.getBoundingClientRect().width;
  for (const t of document.querySelectorAll('article table, main table')) {
    const w = t.getBoundingClientRect().width;
    const head = (t.querySelector('tr') || t).textContent.trim().replace(/\\s+/g, ' ').slice(0, 60);
    // the theme wraps tables in a scrolling box: a table wider than that box hides its last columns
    const box = t.parentElement;
    if (w > limit + 1) {
      report.wideTables.push(`${Math.round(w)} px > ${Math.round(limit)} px: ${head}`);
    } else if (box && box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== 'visible') {
      report.wideTables.push(`${Math.round(w)} px in a ${box.clientWidth} px box, scrolled sideways: ${head}`);
    }
  }
  report.links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  report.remote = performance.getEntriesByType('resource').map(e => e.name).filter(n => /^https?:/.test(n));
  return report;
})().then(done, e => done({fatal: String(e)}));
"""


def _require() -> bool:
    return os.environ.get("FEDGRAD_REQUIRE_BROWSER") == "1"


def _missing(reason: str):
    if _require():
        pytest.fail(f"{reason} (FEDGRAD_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _binary(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).exists() else None
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed: pip install -e '.[book]'")
    chrome = _binary("FEDGRAD_CHROME", ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
    chromedriver = _binary("FEDGRAD_CHROMEDRIVER", ("chromedriver",))
    if chrome is None or chromedriver is None:
        _missing("no headless browser: apt-get install chromium chromium-driver (or set FEDGRAD_CHROME, FEDGRAD_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},900", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium never tries to download one.
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_script_timeout(30)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@lru_cache(maxsize=None)
def _ids(path: Path) -> frozenset[str]:
    text = path.read_text(errors="replace")
    return frozenset(re.findall(r'\bid="([^"]+)"', text)) | frozenset(re.findall(r'\bname="([^"]+)"', text))


def link_problem(href: str, site: Path) -> str | None:
    """Why an internal (file://) link is broken, or None; links off the site are not followed
    (the book is read offline), only checked to be well formed."""
    parts = urlsplit(href)
    if parts.scheme in ("http", "https", "mailto"):
        return None if (parts.netloc or parts.scheme == "mailto") else f"malformed link {href}"
    if parts.scheme in ("javascript", "data"):
        return None
    if parts.scheme != "file":
        return f"unexpected link {href}"
    target = Path(unquote(parts.path))
    if target.is_dir():
        target = target / "index.html"
    if not target.exists():
        return f"missing file {href}"
    fragment = unquote(parts.fragment)
    if fragment and target.suffix == ".html" and fragment not in _ids(target):
        return f"missing anchor #{fragment} in {target.relative_to(site) if target.is_relative_to(site) else target}"
    return None


REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.I)


def page_problems(browser, page: Path, site: Path) -> list[str]:
    """Everything wrong with one page, as readable lines (empty when the page is fine).

    A redirect page (Jupyter Book's index.html) only needs its target to exist."""
    redirect = REDIRECT.search(page.read_text(errors="replace"))
    if redirect:
        why = link_problem((page.parent / redirect.group(1)).resolve().as_uri(), site)
        return [f"broken redirect: {why}"] if why else []
    for _attempt in range(3):
        browser.get_log("browser")  # drop what earlier pages left
        browser.get(page.as_uri())
        report = browser.execute_async_script(PAGE_REPORT_JS)
        # On a loaded machine Chromium now and then swaps the document while the check awaits the
        # images (document.body is null, measured on the smoke and the site builds): check again.
        if "fatal" not in report:
            break
    problems = []
    if "fatal" in report:
        return [f"the page check itself failed (3 times): {report['fatal']}"]
    problems += [f"console error: {e['message']}" for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"broken image {src}" for src in report["brokenImages"]]
    problems += [f"equation not rendered: {text}" for text in report["unrendered"]]
    problems += [f"MathJax error: {text}" for text in report["mathErrors"]]
    problems += [f"table wider than the page at {WIDTH} px: {t}" for t in report["wideTables"]]
    problems += [f"loads {url} from the network (the book must work offline)" for url in report["remote"]]
    for href in sorted(set(report["links"])):
        why = link_problem(href, site)
        if why:
            problems.append(f"broken link: {why}")
    return problems


def book_pages() -> list[Path]:
    skip = {"_static", "_sources", "_images", "_sphinx_design_static"}
    return sorted(p for p in BUILD.rglob("*.html") if not skip & set(p.relative_to(BUILD).parts))


# --------------------------------------------------------------------------- the checks, checked


def test_link_problem_by_hand(tmp_path):
    # Prepare: two pages, one anchor
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1>')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("<p>sub</p>")
    uri = (tmp_path / "a.html").as_uri()
    # Execute / Assert
    assert link_problem(uri, tmp_path) is None
    assert link_problem(uri + "#top", tmp_path) is None
    assert link_problem((tmp_path / "sub").as_uri(), tmp_path) is None
    assert "missing anchor #nowhere" in link_problem(uri + "#nowhere", tmp_path)
    assert "missing file" in link_problem((tmp_path / "b.html").as_uri(), tmp_path)
    assert link_problem("https://example.org/x", tmp_path) is None  # not followed offline
    assert "malformed" in link_problem("https:///x", tmp_path)
    # redirect pages (index.html of a Jupyter Book) are checked without a browser
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=a.html" />')
    (tmp_path / "old.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    assert page_problems(None, tmp_path / "index.html", tmp_path) == []
    assert "broken redirect: missing file" in page_problems(None, tmp_path / "old.html", tmp_path)[0]


def _mathjax_dir() -> Path | None:
    """MathJax 3 as shipped by sphinx-mathjax-offline (the book's own copy), if installed."""
    from importlib.util import find_spec

    spec = find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static" / "mathjax"
    return folder if (folder / "tex-chtml.js").exists() else None


def test_checks_catch_each_fault(driver, tmp_path):
    # Prepare: a clean page and one page with one fault of each kind
    mathjax = _mathjax_dir()
    if mathjax is None:
        _missing("sphinx-mathjax-offline is not installed: pip install -e '.[book]'")
    shutil.copytree(mathjax, tmp_path / "mathjax")
    head = '<script defer src="mathjax/tex-chtml.js"></script>'
    # a valid 1 x 1 PNG
    (tmp_path / "ok.png").write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    ))
    image_tag = '<img src="ok.png">'
    (tmp_path / "good.html").write_text(
        f"<html><head>{head}</head><body><article style='width: 800px'>"
        f'<p id="here">fine</p><span class="math">\\(x^2 + \\frac{{1}}{{2}}\\)</span>{image_tag}'
        '<table><tr><td>narrow</td></tr></table><a href="good.html#here">self</a></article></body></html>'
    )
    (tmp_path / "bad.html").write_text(
        f"<html><head>{head}</head><body><article style='width: 800px'>"
        '<span class="math">\\(\\frac{1}\\)</span>'  # TeX error: frac needs two arguments
        '<span class="math">x^2</span>'  # no delimiters: MathJax leaves it alone
        '<img src="missing.png">'
        '<table style="width: 2000px"><tr><td>wide</td></tr></table>'
        '<div style="overflow-x: auto; width: 300px"><table style="width: 500px"><tr><td>clipped</td></tr></table></div>'
        '<a href="good.html#nowhere">gone</a><a href="absent.html">absent</a>'
        "<script>console.error('boom')</script></article></body></html>"
    )
    # Execute
    good = page_problems(driver, tmp_path / "good.html", tmp_path)
    bad = "\n".join(page_problems(driver, tmp_path / "bad.html", tmp_path))
    # Assert
    assert good == []
    for expected in ["MathJax error", "equation not rendered: x^2", "broken image", "missing.png",
                     "table wider than the page", "scrolled sideways: clipped", "missing anchor #nowhere", "missing file", "absent.html", "console error", "boom"]:
        assert expected in bad, f"{expected!r} not reported in:\n{bad}"


# --------------------------------------------------------------------------- the book


def test_every_page_of_the_book(driver):
    if not (BUILD / "index.html").exists():
        _missing(f"no built book at {BUILD.relative_to(ROOT)}/index.html: run make book PROFILE=smoke")
    pages = book_pages()
    assert len(pages) >= 5, f"only {len(pages)} pages in {BUILD}"
    problems = {}
    for page in pages:
        found = page_problems(driver, page, BUILD)
        if found:
            problems[str(page.relative_to(BUILD))] = found
    report = "\n".join(f"{page}:\n  " + "\n  ".join(lines) for page, lines in problems.items())
    assert not problems, f"{len(problems)} of {len(pages)} pages have problems:\n{report}"
