"""`labelspace analyze [--version N|@ALIAS] [--budget short|full] [--dataset DIR]`: the paper's analyses
of a registered version (committee, row diversity, label map, k sweep, per-class F1 of both heads,
confusion, worst images) on any NUS-WIDE-layout dataset, written to `analyze.out` and logged to the
version's MLflow run."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", help="N or @ALIAS (default: @ the register.alias of params.yaml, e.g. @challenger)")
    p.add_argument("--model", help="registered model name (default: register.model_name)")
    p.add_argument("--budget", choices=("short", "full"), help="k sweep budget (default: analyze.budget)")
    p.add_argument("--dataset", help="a NUS-WIDE-layout dataset folder (default: ingest.dataset)")
    p.add_argument("--vectors", help="word2vec-format vectors (default: vectors.path)")
    p.add_argument("--out", help="output folder (default: analyze.out)")
    p.add_argument("--no-sweep", action="store_true", help="leave out the k sweep (it trains a model per k)")
    p.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")


def run_cli(args: argparse.Namespace) -> int:
    import time

    from labelspace.app import prepare_environment

    started = time.perf_counter()
    prepare_environment()
    from labelspace.config import load_config

    config = load_config()
    from labelspace.data.dvc_versions import dataset_version
    from labelspace.data.prepared import PreparedData
    from labelspace.data.splits import split_indices
    from labelspace.data.word_vectors import load_word_vectors, resolve_label_vectors
    from labelspace.evaluation.analysis_plots import k_sweep as sweep_figure
    from labelspace.evaluation.analysis_run import (
        analyze_model,
        committee_text,
        diversity_text,
        dvc_metrics,
        k_sweep,
        sweep_text,
        write_analysis,
    )
    from labelspace.lifecycle.version_record import flat_analysis_metrics, load_version, log_analysis
    from labelspace.pipelines.past_runs import load_baseline
    from labelspace.training.fit import held_out_for, training_labels

    name = args.model or config.register.model_name
    ref = args.version or f"@{config.register.alias}"
    record = load_version(ref, name)
    model = record.bundle
    print(f"analysing {name} version {record.version.version} ({ref}), run {record.run_id}")
    dataset = config.resolve(args.dataset or config.ingest.dataset)
    if not dataset.exists():
        raise FileNotFoundError(f"dataset {dataset} does not exist: run `dvc repro sample` or pass --dataset")
    version = dataset_version(dataset, config.root)
    data = PreparedData(dataset=str(dataset), version=version, image_size=model.spec.image_size,
                        cache_dir=str(config.resolve(config.ingest.cache_dir)),
                        shard_size=config.ingest.shard_size, labels=config.ingest.labels)  # the pipeline's own cache
    data.ensure()
    manifest, concepts = data.manifest()
    images = data.images()
    vectors_path = config.resolve(args.vectors or config.vectors.path)
    kv = load_word_vectors(vectors_path, limit=config.vectors.limit)
    resolved = resolve_label_vectors(kv, concepts, config.embedding.aliases, vectors_name=str(vectors_path))
    concept_vectors = resolved.matrix.copy()
    for i, label in enumerate(model.labels):  # the model's own vectors for its labels, as it was trained
        if label in concepts:
            concept_vectors[concepts.index(label)] = model.label_vectors[i]
    baseline, baseline_note = load_baseline(record.tags)
    print(baseline_note)

    summary, figures = analyze_model(model, baseline, manifest, images, concepts, concept_vectors, config.analyze,
                                     config.loss, top_k=config.analyze.top_k, device=config.train.device,
                                     feature_batch_size=config.train.feature_batch_size)
    splits = split_indices(manifest, config.train.val_fraction, config.train.seed)
    summary["model"] = {"name": name, "version": str(record.version.version), "run_id": record.run_id,
                        "k": model.spec.k, "backbone": model.spec.backbone}
    summary["data"].update(dataset=str(dataset), dataset_version=version,
                           trained_on_version=record.tags.get("data.dataset_version"),
                           n_train_images=int(len(splits["train"])), n_val_images=int(len(splits["val"])))
    summary["labels"].update(resolution=resolved.how, aliases=dict(config.embedding.aliases),
                             vectors=f"{vectors_path.name} ({kv.vector_size}-d, {len(kv.key_to_index)} words)")
    summary["baseline_note"] = (baseline_note if baseline is not None else
                                f"Per-class F1 and confusion show the label space alone: {baseline_note}.")
    if version != summary["data"]["trained_on_version"]:
        print(f"note: the analyses run on data version {version}; the model was trained on "
              f"{summary['data']['trained_on_version']}")

    budget = args.budget or config.analyze.budget
    if config.analyze.sweep_k and not args.no_sweep:
        held = held_out_for(config.evaluate, concepts, unseen=data.unseen_labels())
        labels, vectors = training_labels(concepts, resolved.matrix, held.labels)
        sweep_started = time.perf_counter()
        rows, note = k_sweep(list(config.analyze.sweep_k), budget, config.analyze, config.model, config.loss,
                             config.train, manifest, images, labels, vectors, dataset_version=version,
                             checkpoint_dir=str(config.resolve(config.train.checkpoint_dir)))
        summary["k_sweep"] = {"budget": budget, "note": note, "rows": rows,
                              "seconds": round(time.perf_counter() - sweep_started, 1)}
        figures["k_sweep.png"] = sweep_figure(rows, model.spec.k, note)
    summary["seconds_total"] = round(time.perf_counter() - started, 1)
    histories = {"labelspace": model.history, **({"bce": baseline.history} if baseline is not None else {})}
    out = config.resolve(args.out or config.analyze.out)
    files = write_analysis(summary, figures, out, histories)

    print("\n" + committee_text(summary["committee"]))
    print("\n" + diversity_text(summary["row_diversity"]))
    if "k_sweep" in summary:
        print("\n" + sweep_text(summary["k_sweep"]))
    print(f"\nwrote {len(files)} files to {out}")
    if not args.no_log:
        log_analysis(record, files, flat_analysis_metrics(dvc_metrics(summary)))
        print(f"logged them to MLflow run {record.run_id} (artifacts analysis/)")
    print(f"labelspace analyze took {time.perf_counter() - started:.0f} s")
    return 0
