"""Figures of the analyses (labelspace.evaluation.analysis); each returns a matplotlib Figure.

Figures that compare the label space with its BCE baseline put the two side by side on the same axes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from labelspace.evaluation.plots import plt

HEAD_NAMES = {"labelspace": "label space", "bce": "BCE baseline"}
HEAD_COLOURS = {"labelspace": "tab:blue", "bce": "tab:orange"}
SWEEP_KEYS = ("C-F1", "O-F1")


def k_sweep(rows: list[dict[str, Any]], registered_k: int | None, note: str):
    """Top-3 and top-5 C-F1/O-F1 against k, one panel per top-k, the same y axis."""
    ks = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, top in zip(axes, (3, 5), strict=True):
        for key, marker in zip(SWEEP_KEYS, ("o", "s"), strict=True):
            ax.plot(ks, [100 * r[f"top{top}_{key}"] for r in rows], marker=marker, label=key)
        if registered_k is not None:
            ax.axvline(registered_k, color="grey", linestyle=":", label=f"registered model's k = {registered_k}")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (rows of A)")
        ax.set_title(f"top-{top}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test split (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle(f"k sweep: {note}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def row_diversity_histogram(values: np.ndarray, chance: float, top_n: int, k: int):
    """Histogram over test images of the rows' mean pairwise Jaccard, with its mean, std and chance."""
    mean, std = float(np.mean(values)), float(np.std(values))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=np.linspace(0, 1, 41), color="tab:blue", alpha=0.8)
    ax.axvspan(max(0.0, mean - std), min(1.0, mean + std), color="tab:blue", alpha=0.12, label="mean ± std")
    ax.axvline(mean, color="tab:blue", label=f"mean {mean:.3f} ± {std:.3f}")
    ax.axvline(chance, color="tab:red", linestyle="--", label=f"two random top-{top_n} sets: {chance:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"mean Jaccard of the top-{top_n} label sets of two rows of A")
    ax.set_ylabel("test images")
    ax.set_title(f"Diversity of the k = {k} rows (0 = disjoint, 1 = identical)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def label_map(labels: Sequence[str], xy: np.ndarray, method: str, held_out: Sequence[str],
              images: list[dict[str, Any]]):
    """The label vectors in 2-D (trained and held-out marked), then per test image the labels after
    its A: the distance from the image (the star) is exactly sqrt(D); a dashed circle is the decision threshold.

    images: [{"image": (S, S, 3) uint8, "xy": (L, 2), "distance": (L,), "true": [labels],
    "threshold": D or None, "title": str}]."""
    held = set(held_out)
    n = 1 + len(images)
    cols = min(2, n)  # two columns: the page shows the figure about 1000 px wide, names stay readable
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 5.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    ax = axes[0, 0]
    marked = np.array([label in held for label in labels])
    ax.scatter(xy[~marked, 0], xy[~marked, 1], c="tab:blue", label="trained label")
    if marked.any():
        ax.scatter(xy[marked, 0], xy[marked, 1], c="tab:red", marker="D", label="held out (zero-shot)")
    span = np.ptp(xy, axis=0) if len(xy) else np.ones(2)
    span = np.where(span > 0, span, 1.0)
    lo, hi = xy.min(axis=0) - 0.12 * span, xy.max(axis=0) + 0.12 * span
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1] + 0.18 * span[1])  # room for the legend
    _place_names(ax, xy, labels, ["tab:red" if m else "black" for m in marked], fontsize=9.5)
    ax.set_title(f"Label word vectors as the model measures them ({method})", fontsize=11)
    ax.legend(fontsize=9, loc="upper right")
    ax.set_xticks([])
    ax.set_yticks([])
    for ax, entry in zip(axes.ravel()[1:n], images, strict=True):
        _image_map(ax, labels, held, entry)
    if images:
        handles = [plt.Line2D([], [], marker="*", color="black", linestyle="", markersize=12, label="the image"),
                   plt.Line2D([], [], marker="o", color="tab:green", linestyle="", label="a label of the image"),
                   plt.Line2D([], [], marker="o", color="grey", linestyle="", label="another label"),
                   plt.Line2D([], [], marker="D", color="grey", linestyle="", label="held out (never trained on)")]
        if any(e.get("threshold") for e in images):
            handles.append(plt.Line2D([], [], color="tab:purple", linestyle="--", label="decision threshold"))
        height = fig.get_figheight()  # the legend and the note take the bottom 1.2 inches
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=10, frameon=False,
                   bbox_to_anchor=(0.5, 0.05 / height))
        fig.text(0.5, 0.72 / height, "In each image's map a label's distance from the star is exactly sqrt(D) = "
                 "||A w||: close = relevant.\nDirections are a 2-D projection of the A w.", ha="center", fontsize=10)
    with warnings.catch_warnings():  # the thumbnails are insets, which tight_layout leaves where they are
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(rect=(0, 1.25 / fig.get_figheight() if images else 0, 1, 1))
    return fig


_OFFSETS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
            (-4, -3, "right", "top"), (0, 8, "center", "bottom"), (0, -8, "center", "top"))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place_names(ax, xy: np.ndarray, labels: Sequence[str], colours: Sequence[str], fontsize: float = 8,
                 avoid: Sequence[Sequence[float]] = ()) -> None:
    """Name every point, each name at the first of a few offsets where it covers no name or point yet."""
    scale = ax.figure.dpi / 72
    points = ax.transData.transform(xy) if len(xy) else np.zeros((0, 2))
    dots = [(px - 4 * scale, py - 4 * scale, px + 4 * scale, py + 4 * scale) for px, py in points]
    for px, py in ax.transData.transform(np.asarray(avoid, dtype=float).reshape(-1, 2)):  # e.g. the star
        dots.append((px - 9 * scale, py - 9 * scale, px + 9 * scale, py + 9 * scale))
    placed: list[tuple[float, ...]] = []
    for i, ((px, py), label) in enumerate(zip(points, labels, strict=True)):
        w, h = 0.62 * fontsize * scale * len(label), 1.25 * fontsize * scale
        best = None
        for dx, dy, ha, va in _OFFSETS:
            x0 = px + dx * scale - {"left": 0, "right": w, "center": w / 2}[ha]
            y0 = py + dy * scale - (h if va == "top" else 0)
            box = (x0, y0, x0 + w, y0 + h)
            cost = sum(_overlap(box, b) for b in placed) + sum(_overlap(box, d) for j, d in enumerate(dots) if j != i)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, box)
            if cost == 0:
                break
        _, dx, dy, ha, va, box = best
        placed.append(box)
        ax.annotate(label, xy[i], xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                    color=colours[i])


def _image_map(ax, labels: Sequence[str], held: set[str], entry: dict[str, Any]) -> None:
    from mpl_toolkits.axes_grid1.inset_locator import inset_axes

    xy, true = entry["xy"], set(entry["true"])
    relevant = np.array([label in true for label in labels])
    zero_shot = np.array([label in held for label in labels])
    for mask, marker in ((~zero_shot, "o"), (zero_shot, "D")):
        for rel, colour in ((relevant, "tab:green"), (~relevant, "grey")):
            sel = mask & rel
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], c=colour, marker=marker, s=36, zorder=2)
    ax.scatter([0], [0], marker="*", s=240, c="black", zorder=3)
    threshold = entry.get("threshold")
    if threshold is not None and threshold > 0:
        ax.add_patch(plt.Circle((0, 0), float(np.sqrt(threshold)), fill=False, linestyle="--", color="tab:purple"))
    limit = 1.2 * max(float(np.abs(xy).max()) if len(xy) else 0.0, float(np.sqrt(threshold or 0)), 1e-6)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, 1.5 * limit)  # the top band holds the thumbnail
    ax.set_aspect("equal", adjustable="box")
    _place_names(ax, xy, labels, ["tab:green" if r else "dimgrey" for r in relevant], fontsize=9.5, avoid=[(0, 0)])
    ax.set_title(entry["title"], fontsize=10.5)
    ax.set_xticks([])
    ax.set_yticks([])
    thumb = inset_axes(ax, width="22%", height="22%", loc="upper left", borderpad=0.4)
    thumb.imshow(entry["image"], interpolation="nearest")
    thumb.set_xticks([])
    thumb.set_yticks([])


def per_class_f1_side_by_side(labels: Sequence[str], f1_by_head: dict[str, np.ndarray], k: int,
                              positives: Sequence[int]):
    """Per-class top-k F1, one panel per head, the same axes; classes without a test positive blank."""
    heads = list(f1_by_head)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads) + 1.5, 0.38 * len(labels) + 1.6),
                             sharex=True, sharey=True, squeeze=False)
    y = np.arange(len(labels))
    names = [f"{label} ({n})" for label, n in zip(labels, positives, strict=True)]
    for ax, head in zip(axes[0], heads, strict=True):
        f1 = 100 * np.asarray(f1_by_head[head], dtype=float)
        ax.barh(y, np.nan_to_num(f1), color=HEAD_COLOURS.get(head, "tab:grey"))
        for yi, value in zip(y, f1, strict=True):
            ax.text(min(np.nan_to_num(value), 100) + 1, yi, "n/a" if np.isnan(value) else f"{value:.0f}",
                    va="center", fontsize=8)
        ax.set_title(HEAD_NAMES.get(head, head), fontsize=10)
        ax.set_xlim(0, 110)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel(f"top-{k} F1 (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, names, fontsize=8)
    axes[0, 0].invert_yaxis()
    fig.suptitle(f"Per-class top-{k} F1 on the test split (test positives in brackets)", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_heatmaps(confusion_by_head: dict[str, dict[str, Any]], kind_by_head: dict[str, str]):
    """The confusion between frequent labels, one panel per head, the same labels and colour scale."""
    heads = list(confusion_by_head)
    labels = confusion_by_head[heads[0]]["labels"]
    n = len(labels)
    size = 0.5 * n + 2.0
    fig, axes = plt.subplots(1, len(heads), figsize=(size * len(heads) + 1.6, size + 0.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax, head in zip(axes[0], heads, strict=True):
        matrix = 100 * np.asarray(confusion_by_head[head]["matrix"], dtype=float)
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="Blues")
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                ax.text(j, i, "–" if np.isnan(value) else f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 60 else "black")
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1))
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_title(f"{HEAD_NAMES.get(head, head)} ({kind_by_head[head]})", fontsize=10)
    axes[0, 0].set_ylabel("true")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="% of the images holding the true label\n"
                                                              "(off the diagonal: and not the predicted one)")
    fig.suptitle("Confusion between frequent labels: diagonal = recall, off it = a wrong label predicted",
                 fontsize=10)
    return fig


def contact_sheet(entries: list[dict[str, Any]], cols: int = 3):
    """The worst test images: each with its loss, true labels and the model's top-3 (green = right).

    entries: [{"image": uint8 (S, S, 3), "loss": float, "true": [str], "held_out": [str],
    "predicted": [(label, D, correct)], "image_id": str}]."""
    n = len(entries)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    cell_w, image_h, title_h, text_h, header = 3.4, 2.5, 0.45, 1.25, 0.6  # inches
    width, height = cols * cell_w, rows * (title_h + image_h + text_h) + header
    fig = plt.figure(figsize=(width, height))
    fig.suptitle("Worst test images by the label space's loss; its top-3 labels: ✓ right, ✗ wrong", fontsize=11,
                 y=1 - 0.18 / height)
    for i, entry in enumerate(entries):
        r, c = divmod(i, cols)
        top = height - header - r * (title_h + image_h + text_h)
        left = c * cell_w + (cell_w - image_h) / 2
        ax = fig.add_axes((left / width, (top - title_h - image_h) / height, image_h / width, image_h / height))
        ax.imshow(entry["image"], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{entry['image_id']}   loss {entry['loss']:.3f}", fontsize=9.5)
        true = ", ".join(entry["true"]) or "(no trained label)"
        lines = [("true: " + true, "black")]
        if entry["held_out"]:
            lines.append(("held out: " + ", ".join(entry["held_out"]), "dimgrey"))
        lines += [(f"{'✓' if ok else '✗'} {label}   D = {d:.3f}", "tab:green" if ok else "tab:red")
                  for label, d, ok in entry["predicted"]]
        for j, (text, colour) in enumerate(lines):
            y = top - title_h - image_h - 0.08 - 0.22 * j
            fig.text(left / width, y / height, text, fontsize=9, color=colour, va="top")
    return fig
