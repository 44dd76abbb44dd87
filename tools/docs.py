"""Build the docs site into _docs/ and README.md from nbs/index.ipynb.

Where Quarto is installed this is `nbdev_docs`. Where it is not (Quarto's PyPI package downloads from GitHub at
build time, so it cannot be installed on every machine), it runs the same nbdev pre-processing that `nbdev_proc_nbs`
does (site config, sidebar, module index, `_proc/` with show_doc tables and directives) and renders the processed
notebooks to HTML with nbconvert, honouring the Quarto cell options nbdev writes (`include`, `echo`, `output: asis`),
with a sidebar from `sidebar.yml`. It is a preview: no search, no cross-reference links.

    python tools/docs.py            # Quarto if present, else the preview
    python tools/docs.py --preview  # force the preview build
"""
import argparse, html, re, shutil, subprocess, sys
from pathlib import Path

import nbformat, yaml


def _directives(src: str):
    "Split a cell's `#| key: value` lines from its code."
    opts, rest = {}, []
    for line in src.splitlines():
        m = re.match(r"^#\|\s*([\w-]+)\s*:\s*(.*)$", line)
        if m and not rest: opts[m[1]] = m[2].strip()
        elif line.startswith("#|") and not rest: continue
        else: rest.append(line)
    return opts, "\n".join(rest).strip("\n")


def prepare_nb(nb):
    "Apply the Quarto cell options of a processed notebook; returns (notebook, front matter)."
    front, cells = {}, []
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("---"):
            front.update(yaml.safe_load(cell.source.strip().strip("-")) or {})
            continue
        if cell.cell_type != "code": cells.append(cell); continue
        opts, src = _directives(cell.source)
        if opts.get("include") == "false": continue
        cell.source = src
        if opts.get("echo") == "false" or opts.get("output") == "asis" or not src:
            cell.metadata.setdefault("transient", {})["remove_source"] = True
        if opts.get("output") == "false": cell.outputs = []
        if opts.get("output") == "asis":   # show_doc: markdown to render, not to show as text
            md = "".join(o.get("data", {}).get("text/markdown", "") or o.get("text", "") for o in cell.outputs)
            md = re.sub(r'\{target="_blank"[^}]*\}', "", md)   # Quarto link attributes
            cells.append(nbformat.v4.new_markdown_cell(md)); continue
        cells.append(cell)
    nb.cells = cells
    return nb, front


def _nav(sidebar, current):
    items = []
    for f in sidebar:
        name = Path(f).with_suffix(".html").name
        label = "Home" if name == "index.html" else Path(f).stem
        cls = ' class="active"' if name == current else ""
        items.append(f'<li{cls}><a href="{name}">{html.escape(label)}</a></li>')
    return f'<nav class="la-sidebar"><a class="la-title" href="index.html">longalign</a><ul>{"".join(items)}</ul></nav>'


_CSS = """<style>
body { margin: 0; } .la-sidebar { position: fixed; top: 0; left: 0; width: 13rem; height: 100%; overflow: auto;
padding: 1rem; background: #f7f7f9; border-right: 1px solid #ddd; font-family: sans-serif; }
.la-sidebar ul { list-style: none; padding: 0; } .la-sidebar li { margin: .3rem 0; } .la-sidebar .active a { font-weight: bold; }
.la-title { font-size: 1.3rem; font-weight: bold; text-decoration: none; } .la-main { margin-left: 15rem; padding: 1rem; }
.la-description { font-style: italic; opacity: .7; font-size: 1.2rem; }
</style>"""


def render_preview(proc: Path, out: Path):
    "Render every processed notebook in `proc` to `out/<name>.html` with a sidebar."
    from nbconvert import HTMLExporter, MarkdownExporter
    from traitlets.config import Config
    c = Config(); c.TagRemovePreprocessor.enabled = True
    c.HTMLExporter.exclude_input_prompt = True; c.HTMLExporter.exclude_output_prompt = True
    sidebar = yaml.safe_load((proc / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    for f in sorted(proc.glob("**/*.ipynb")):
        nb, front = prepare_nb(nbformat.read(f, as_version=4))
        for cell in nb.cells:
            if cell.metadata.get("transient", {}).get("remove_source"): cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
        exp = HTMLExporter(config=c, template_name="lab")
        exp.exclude_input = False
        for cell in nb.cells:   # hidden inputs: drop them (nbconvert keeps them in the DOM otherwise)
            if cell.metadata.get("jupyter", {}).get("source_hidden"): cell.source = ""
        body, _ = exp.from_notebook_node(nb)
        body = re.sub(r'<script[^>]+src="https?://[^"]+"[^>]*>\s*</script>', "", body)  # no network for the preview
        body = re.sub(r'href="([^"#:]+)\.ipynb', r'href="\1.html', body)
        name = f.relative_to(proc).with_suffix(".html")
        title = front.get("title", f.stem)
        head = f'<h1 class="title">{html.escape(str(title))}</h1>'
        if front.get("description"): head += f'<p class="la-description">{html.escape(str(front["description"]))}</p>'
        body = body.replace("<body", "<body data-la-page", 1)
        body = re.sub(r"(<body[^>]*>)", lambda m: m[1] + _nav(sidebar, name.name) + '<div class="la-main">' + head, body, count=1)
        body = body.replace("</body>", "</div></body>").replace("</head>", _CSS + "</head>", 1)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(body, encoding="utf-8")
    for extra in ("styles.css",):
        if (proc / extra).exists(): shutil.copy(proc / extra, out / extra)


def readme_preview(proc: Path, root: Path, readme_nb="index.ipynb"):
    "README.md from the processed index notebook (what `nbdev_readme` does with Quarto)."
    from nbconvert import MarkdownExporter
    nb, front = prepare_nb(nbformat.read(proc / readme_nb, as_version=4))
    for cell in nb.cells:
        if cell.metadata.get("transient", {}).get("remove_source"): cell.source = ""
    md, _ = MarkdownExporter(exclude_input_prompt=True).from_notebook_node(nb)
    md = re.sub(r"```\w*\s*\n\s*```\n?", "", md)   # empty code fences of hidden inputs
    md = re.sub(r"\]\(([^)#:/]+)\.ipynb\)", lambda m: f"](nbs/{m[1]}.ipynb)", md)   # links that work on the repo page
    header = f"# {front.get('title', 'longalign')}\n\n" + (f"> {front['description']}\n\n" if front.get("description") else "")
    (root / "README.md").write_text(header + re.sub(r"\n{3,}", "\n\n", md).strip() + "\n", encoding="utf-8")


def proc_notebooks():
    "The pre-processing of `nbdev_proc_nbs`, without its Quarto install step."
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    cfg = get_config()
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
    return Path(proc_nbs(cfg.nbs_path, n_workers=2)), cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preview", action="store_true", help="build the preview even where Quarto is installed")
    ap.add_argument("--out", default=None, help="folder for the preview site (default: doc_path of settings.ini)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md (used by the tests)")
    a = ap.parse_args()
    if shutil.which("quarto") and not a.preview:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        kept = readme.read_bytes() if a.no_readme and readme.exists() else None
        try: subprocess.run(["nbdev_docs"], check=True)   # it rewrites README.md too: put it back under --no-readme
        finally:
            if kept is not None: readme.write_bytes(kept)
        return
    proc, cfg = proc_notebooks()
    out = Path(a.out) if a.out else cfg.config_path / cfg.doc_path.name
    render_preview(proc, out)
    if not a.no_readme: readme_preview(proc, cfg.config_path, cfg.readme_nb)
    print(f"preview docs in {out} (Quarto not found or --preview; with Quarto, `nbdev_docs` builds the full site)")


if __name__ == "__main__":
    main()
