"""The docs: nbdev builds from the top-level _quarto.yml, and every page of the site renders in headless Chromium
with its API reference (a show_doc entry per exported name), its figures, and no broken local links."""
import html, os, re, shutil, subprocess, sys
from html.parser import HTMLParser
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "_docs"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), "--preview", "--no-readme", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out

def test_top_level_quarto_yml_is_what_nbdev_uses(site):
    "nbs/_quarto.yml links to the top-level file, and the processed copy nbdev renders from has the same content."
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()
    assert (ROOT / "_proc" / "_quarto.yml").read_text() == (ROOT / "_quarto.yml").read_text()

class Page(HTMLParser):
    def __init__(self):
        super().__init__(); self.links, self.imgs, self.tables, self.h1, self.h3 = [], [], 0, [], []
        self._in = None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"): self.links.append(a["href"])
        if tag == "img": self.imgs.append(a.get("src", ""))
        if tag == "table": self.tables += 1
        if tag in ("h1", "h3"): self._in = tag
    def handle_endtag(self, tag):
        if tag in ("h1", "h3"): self._in = None
    def handle_data(self, data):
        if self._in and data.strip(): getattr(self, self._in).append(data.strip())

def render(path: Path, tmp: Path) -> str:
    "The DOM of `path` after Chromium has loaded and run it."
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

need_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("LONGALIGN_REQUIRE_BROWSER"),
                                  reason="Chromium is not installed (.ci/run installs it and sets LONGALIGN_REQUIRE_BROWSER)")

@need_browser
def test_every_page_renders_with_api_reference_figures_and_links(site, tmp_path):
    notebooks = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    pages = sorted(p.stem for p in site.glob("*.html"))
    assert pages == notebooks, (pages, notebooks)
    modules = {p.stem: p for p in (ROOT / "nbs").glob("*.ipynb") if "#| default_exp" in p.read_text()}
    for name in pages:
        dom = render(site / f"{name}.html", tmp_path / name)
        page = Page(); page.feed(dom)
        assert page.h1, f"{name}: no title"
        for href in page.links:
            if re.match(r"^(https?:|mailto:|#|data:)", href): continue
            target = (site / href.split("#")[0]).resolve()
            assert target.exists(), f"{name}: broken local link {href}"
        assert any(l.endswith("index.html") for l in page.links), f"{name}: no navigation back to the index"
        if name in modules:
            # the API reference: every exported function or class has its show_doc entry
            mod = re.search(r"#\| default_exp ([\w.]+)", (ROOT / "nbs" / f"{name}.ipynb").read_text())[1]
            import importlib
            m = importlib.import_module(f"longalign.{mod}")
            for sym in getattr(m, "__all__", []):
                if not sym.startswith("_") and callable(getattr(m, sym)):
                    assert sym in page.h3, f"{name}: no API entry for {sym}"
        nb_text = (ROOT / "nbs" / f"{name}.ipynb").read_text()
        if '"image/png"' in nb_text:
            assert any(src.startswith("data:image/png") for src in page.imgs), f"{name}: a figure did not render"


# Leftovers of the machine a notebook ran on: warnings printed into outputs, absolute paths of a venv, a kernel's temp
# files or a home folder. None belongs in what readers see (README.md, the rendered pages).
LEFTOVERS = re.compile(r"(\.py:\d+: \w*Warning\b|TqdmWarning|site-packages|\.venv/lib|/tmp/ipykernel|/work/|/root/|/home/\w+)")

def _leftovers(text: str) -> list:
    return sorted({text[max(0, m.start() - 60):m.end() + 20].replace("\n", " ") for m in LEFTOVERS.finditer(text)})

def _split_tables(markdown: str) -> list:
    "Table rows that do not follow a header and a separator: what a blank line inside a table renders as text."
    bad, block = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"): block.append(line); continue
        if block and not (len(block) >= 2 and re.match(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$", block[1])): bad.append(block[0])
        block = []
    return bad

def test_leftover_and_table_checks_catch_what_they_are_for():
    assert _leftovers("x\n/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found")
    assert _leftovers("/tmp/ipykernel_3697/281810466.py:193: UserWarning: LongPromptEncoder")
    assert not _leftovers("Denscore of 32 images, `python bench/preference.py`, runs/05_rft.ipynb")
    assert not _leftovers("class SegmentsDroppedWarning(UserWarning): the API may name warning classes")
    assert _split_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n") == ["| 3 | 4 |"]
    assert _split_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n| c |\n|:---:|\n| 5 |\n") == []

def test_readme_has_no_machine_leftovers_and_whole_tables():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _leftovers(readme) == [], "README.md shows machine leftovers: regenerate it from a clean run of nbs/index.ipynb"
    assert _split_tables(readme) == [], "a table in README.md is split by a blank line (its rows render as text)"

def test_rendered_pages_have_no_machine_leftovers(site):
    for page in sorted(site.glob("*.html")):
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
        text = html.unescape(text)
        assert _leftovers(text) == [], f"{page.name} shows machine leftovers (re-run its notebook, or silence them at the source)"
