"""`labelspace export-vectors`: the packaged GloVe 6B 50-d vectors, once, in word2vec format."""

from __future__ import annotations

import argparse

from labelspace.config import load_config
from labelspace.data.word_vectors import export_glove


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output file (default: vectors.path in params.yaml)")
    p.add_argument("--limit", type=int, help="keep only the N most frequent words (default: vectors.limit)")
    p.add_argument("--text", action="store_true", help="write the text format instead of binary")


def run_cli(args: argparse.Namespace) -> int:
    vectors = load_config().vectors if (args.out is None or args.limit is None) else None
    out = args.out or vectors.path
    limit = args.limit if args.limit is not None else vectors.limit
    n = export_glove(out, limit=limit, binary=not args.text)
    print(f"wrote {n} GloVe 6B 50-d vectors to {out} ({'text' if args.text else 'binary'} word2vec)")
    return 0
