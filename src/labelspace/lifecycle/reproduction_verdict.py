"""The verdict of a reproduction: how a retrained version compares with the registered one, and why.

Pure: two versions' lineage tags and test metrics in, a `Verdict` out (labelspace.lifecycle.reproduce
gathers them). Three answers:

* **bit-identical**: the retrained weights hash (`model.content_hash`) equals the recorded one;
* **within tolerance**: the weights differ, something the arithmetic runs on differs (named), and every
  test metric is within the tolerance that difference allows (TOLERANCES);
* **not reproduced**: the weights differ and a metric is off by more, or nothing recorded differs (then
  an op that is not deterministic is at work, and no tolerance applies), or the inputs themselves
  (data, vectors, params, code) differ.

What breaks bitwise equality, and the tolerance each allows on a test metric (a fraction, so 0.02 is two
points of top-3 O-F1): the torch thread count or the CPU model (another order of floating-point sums,
other vectorised kernels: 0.02, about what 1 against 2 threads moved a small run's top-3 O-F1); other
packages (torch, torchvision, numpy, or anything else installed: 0.03); another device, or a GPU on
either side (cuDNN picks kernels per run, some not deterministic, and CUDA's float order is not the
CPU's: 0.03). The largest applies when several differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BIT_IDENTICAL, WITHIN_TOLERANCE, NOT_REPRODUCED = "bit-identical", "within tolerance", "not reproduced"

# lineage tag -> the kind of difference it is
COMPARED = {
    "env.torch": "packages", "env.torchvision": "packages", "env.numpy": "packages", "env.python": "packages",
    "env.packages_hash": "packages", "env.lock_hash": "packages",
    "env.torch_threads": "threads", "env.train_processes": "threads",
    "env.cpu": "cpu",
    "env.device": "device", "env.gpu": "device", "env.cuda": "device", "env.cudnn": "device",
    "data.dataset_version": "inputs", "data.vectors_version": "inputs", "params.hash": "inputs",
    "code.source_hash": "inputs", "seed.train": "inputs",
}
TOLERANCES = {"threads": 0.02, "cpu": 0.02, "packages": 0.03, "device": 0.03, "gpu": 0.03}
NOT_RECORDED = ("", "unknown", None)


@dataclass
class Verdict:
    verdict: str
    tolerance: float
    differences: list[str] = field(default_factory=list)  # what differs, one line each
    kinds: list[str] = field(default_factory=list)  # packages, threads, cpu, device, gpu, inputs
    metrics: list[dict] = field(default_factory=list)  # {key, recorded, reproduced, delta}
    note: str = ""

    @property
    def max_delta(self) -> float:
        return max((abs(m["delta"]) for m in self.metrics), default=0.0)


def package_differences(recorded: dict[str, str] | None, reproduced: dict[str, str] | None, limit: int = 20) -> list[str]:
    """`name a -> b` for each package whose version differs ('-' where absent), at most `limit` named."""
    if not recorded or not reproduced:
        return []
    names = sorted(n for n in set(recorded) | set(reproduced) if recorded.get(n) != reproduced.get(n))
    shown = [f"{n} {recorded.get(n, '-')} -> {reproduced.get(n, '-')}" for n in names[:limit]]
    return shown + ([f"... and {len(names) - limit} more"] if len(names) > limit else [])


def lock_pins(text: str | None) -> dict[str, str]:
    """{package: pinned version} of a requirements.lock's `name==version` lines (`name==version \\` where
    the `--hash=sha256:...` lines follow)."""
    pins = {}
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.rstrip("\\ ").strip()
    return pins


def differences(recorded: dict[str, str], reproduced: dict[str, str], *, packages: list[str] = (),
                lock_changes: list[str] = ()) -> tuple[list[str], list[str]]:
    """(one line per differing input, the kinds that differ) between two versions' lineage tags.
    `packages`: installed package differences by name; `lock_changes`: requirements.lock pins that differ."""
    lines, kinds = [], []
    for tag, kind in COMPARED.items():
        a, b = recorded.get(tag), reproduced.get(tag)
        if a in NOT_RECORDED:
            if tag == "env.torch_threads":
                lines.append("threads: not recorded with the version (trained before env.* tags)")
            continue
        if b in NOT_RECORDED or a == b:
            continue
        detail = ""
        if tag == "env.packages_hash" and packages:
            detail = f" ({'; '.join(packages)})"
        if tag == "env.lock_hash" and lock_changes:
            detail = f" ({'; '.join(lock_changes)})"
        lines.append(f"{kind}: {tag.split('.', 1)[1]} {a} -> {b}{detail}")
        if kind not in kinds:
            kinds.append(kind)
    if "gpu" not in kinds and "cuda" in (recorded.get("env.device"), reproduced.get("env.device")):
        kinds.append("gpu")  # even the same GPU: cuDNN's kernel choice and atomics are not deterministic
    return lines, kinds


def compare_metrics(recorded: dict[str, float], reproduced: dict[str, float]) -> list[dict]:
    """Each test metric of both (fractions only: counts are left out), with reproduced - recorded."""
    keys = sorted(k for k in set(recorded) & set(reproduced) if 0.0 <= recorded[k] <= 1.0 and "n_images" not in k)
    return [{"key": k, "recorded": recorded[k], "reproduced": reproduced[k], "delta": reproduced[k] - recorded[k]}
            for k in keys]


def judge(recorded_tags: dict[str, str], reproduced_tags: dict[str, str], recorded_metrics: dict[str, float],
          reproduced_metrics: dict[str, float], *, packages: list[str] = (), lock_changes: list[str] = ()) -> Verdict:
    """The verdict (module doc) of a reproduction whose version carries `reproduced_tags`."""
    lines, kinds = differences(recorded_tags, reproduced_tags, packages=packages, lock_changes=lock_changes)
    metrics = compare_metrics(recorded_metrics, reproduced_metrics)
    tolerance = max((TOLERANCES[k] for k in kinds if k in TOLERANCES), default=0.0)
    same = recorded_tags.get("model.content_hash") == reproduced_tags.get("model.content_hash")
    if same:
        return Verdict(BIT_IDENTICAL, tolerance, lines, kinds, metrics)
    if "inputs" in kinds:
        return Verdict(NOT_REPRODUCED, tolerance, lines, kinds, metrics,
                       note="the reproduction did not train on the recorded inputs")
    if not kinds:
        return Verdict(NOT_REPRODUCED, 0.0, lines, kinds, metrics,
                       note="nothing recorded differs, yet the weights do: an operation that is not deterministic")
    if not metrics:
        return Verdict(NOT_REPRODUCED, tolerance, lines, kinds, metrics, note="no test metrics to compare")
    worst = max(metrics, key=lambda m: abs(m["delta"]))
    if abs(worst["delta"]) <= tolerance + 1e-9:
        return Verdict(WITHIN_TOLERANCE, tolerance, lines, kinds, metrics)
    return Verdict(NOT_REPRODUCED, tolerance, lines, kinds, metrics,
                   note=f"{worst['key']} moved {worst['delta']:+.4f}, more than the {tolerance:.2f} allowed")
