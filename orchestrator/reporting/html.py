"""report.html: a report's markdown as one self-contained page (images inlined as data: URIs, no script,
nothing fetched), so it opens from a mail or a copied folder as it does in place.

markdown-it-py (rich's own markdown parser) renders the markdown, tables on; the page shows exactly
what report.md says, with its plots and galleries.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.5em 0; border: 1px solid #eee; }
code { background: #f5f5f5; padding: 0 0.2em; }
blockquote { border-left: 4px solid #c33; margin: 0; padding: 0.2em 1em; background: #fff4f4; }
"""
_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _inline(src: str, folder: Path) -> str | None:
    """A data: URI of an image beside the report; None when it is not a readable local file."""
    if "://" in src or src.startswith("data:"):
        return None
    path = folder / src
    kind = _TYPES.get(path.suffix.lower())
    if kind is None or not path.is_file():
        return None
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """The page: every image path relative to `folder` inlined; a missing image is left as its alt text."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown_text)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                uri = _inline(str(child.attrGet("src") or ""), Path(folder))
                if uri is None:
                    child.type, child.content, child.children = "text", f"[{child.content}]", None
                else:
                    child.attrSet("src", uri)
    body = md.renderer.render(tokens, md.options, {})
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}</body></html>\n")


def write_html(folder: Path, markdown_text: str, title: str, name: str = "report.html") -> Path:
    """`name` in `folder`, from the markdown beside it."""
    path = Path(folder) / name
    path.write_text(html_page(markdown_text, Path(folder), title))
    return path
