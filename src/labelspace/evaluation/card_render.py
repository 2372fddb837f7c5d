"""The model card of one registered version: Markdown, and a self-contained HTML page (images as data URIs).

Built from plain inputs (`CardInputs`: the version's tags, its run's metrics report, the analyses and
their plots, the bundle's spec and labels), so it needs neither MLflow nor the data; the MLflow glue
that gathers them is labelspace.lifecycle.version_record. One list of blocks renders to both formats.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelspace.evaluation.card_content import sections


@dataclass
class CardInputs:
    model_name: str
    version: str
    aliases: list[str]
    created: str  # when the version was registered (ISO 8601, UTC)
    run_id: str
    tracking_uri: str
    tags: dict[str, str]
    spec: dict[str, Any]  # labelspace.model.spec.ModelSpec.to_dict()
    labels: list[str]  # the training labels
    calibration: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)  # the run's params
    epochs: int | None = None  # epochs in the bundle's history (when the run holds no training params)
    report: dict[str, Any] | None = None  # the run's reports/metrics.json
    analysis: dict[str, Any] | None = None  # the run's analysis/analysis.json (labelspace analyze)
    plots: dict[str, bytes] = field(default_factory=dict)  # PNG bytes by file name


@dataclass
class Card:
    markdown: str
    html: str
    images: dict[str, bytes]  # the PNGs the Markdown links to (plots/<name>)

    def write(self, folder: str | Path) -> list[Path]:
        """model_card.md, model_card.html and plots/*.png under `folder`; returns the files."""
        folder = Path(folder)
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        written = [folder / "model_card.md", folder / "model_card.html"]
        written[0].write_text(self.markdown, encoding="utf-8")
        written[1].write_text(self.html, encoding="utf-8")
        for name, data in self.images.items():
            path = folder / "plots" / name
            path.write_bytes(data)
            written.append(path)
        return written


def build_card(inputs: CardInputs) -> Card:
    blocks = sections(inputs)
    images = {b["name"]: inputs.plots[b["name"]] for b in blocks if b["kind"] == "img"}
    title = f"Model card: {inputs.model_name} version {inputs.version}"
    return Card(markdown=to_markdown(title, blocks), html=to_html(title, blocks, inputs.plots), images=images)


# ---------------------------------------------------------------- rendering


def to_markdown(title: str, blocks: list[dict[str, Any]]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        kind = b["kind"]
        if kind == "h2":
            out += [f"## {b['text']}", ""]
        elif kind == "h3":
            out += [f"### {b['text']}", ""]
        elif kind == "p":
            out += [b["text"], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in b["items"]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(b["header"]) + " |")
            out.append("|" + "|".join("---" for _ in b["header"]) + "|")
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in b["rows"]]
            out += ([f"\n{b['caption']}"] if b.get("caption") else []) + [""]
        elif kind == "img":
            out += [f"![{b['caption']}](plots/{b['name']})", "", f"*{b['caption']}*", ""]
        elif kind == "pre":
            out += ["```", b["text"], "```", ""]
    return "\n".join(out).rstrip() + "\n"


_STYLE = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1d1d1f; margin: 0;
       background: #f4f5f7; line-height: 1.45; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e5e8; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p, li { font-size: 14.5px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13.5px; }
th, td { border: 1px solid #d5d8dc; padding: 4px 9px; text-align: left; }
th { background: #eef1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.caption { font-size: 12.5px; color: #555; margin: 2px 0 10px; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e5e8; }
figcaption { font-size: 13px; color: #444; margin-top: 4px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12.5px; }
code { background: #f0f2f4; padding: 0 3px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #dde8f6; margin-right: 4px;
         font-size: 13px; }
"""


def to_html(title: str, blocks: list[dict[str, Any]], plots: dict[str, bytes]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><main>",
             f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        kind = b["kind"]
        if kind in ("h2", "h3"):
            parts.append(f"<{kind}>{_inline(b['text'])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b['text'])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b["items"]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b["header"])
            head = f"<thead><tr>{head}</tr></thead>" if any(b["header"]) else ""  # a key-value table: no header
            body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in b["rows"])
            parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
            if b.get("caption"):
                parts.append(f'<p class="caption">{_inline(b["caption"])}</p>')
        elif kind == "img":
            data = base64.b64encode(plots[b["name"]]).decode("ascii")
            caption = html.escape(b["caption"])
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                         f"<figcaption>{caption}</figcaption></figure>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(b['text'])}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _cell(value: Any) -> str:
    text = str(value)
    numeric = text.replace(".", "", 1).replace("-", "", 1).replace("%", "").replace("×", "").strip().isdigit()
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{_inline(text)}</td>"


def _inline(text: str) -> str:
    """HTML of a line of Markdown-ish text: `code` and **bold**, everything else escaped."""
    escaped = html.escape(str(text))
    out, code, bold = [], False, False
    i = 0
    while i < len(escaped):
        if escaped[i] == "`":
            out.append("</code>" if code else "<code>")
            code = not code
            i += 1
        elif escaped.startswith("**", i) and not code:
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
            i += 2
        else:
            out.append(escaped[i])
            i += 1
    return "".join(out) + ("</code>" if code else "") + ("</strong>" if bold else "")


def inputs_to_json(inputs: CardInputs) -> str:
    """The card's inputs without the images, for debugging a card."""
    plain = {k: v for k, v in inputs.__dict__.items() if k != "plots"}
    return json.dumps({**plain, "plots": sorted(inputs.plots)}, indent=1, default=str)
