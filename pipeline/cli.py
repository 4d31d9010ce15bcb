"""Command line: `python -m pipeline <command>` runs each step, the whole chain, or the DAG demo.

Every setting of `PipelineConfig` is a flag (`--batch-size 64`) and a key of an optional YAML file
(`--config settings.yaml`); flags win over the file. Results are printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import DEFAULT_HOME, FLAT_SETTINGS, describe_setting
from pipeline.errors import PipelineError
from pipeline.presets import PRESET_KEY, PRESETS, resolve_preset

log = logging.getLogger("pipeline")


def _add_settings(parser: argparse.ArgumentParser, store_only: bool = False) -> None:
    """Add --config, --cache-dir and a flag per setting, or with `store_only` a flag per store setting."""
    group = parser.add_argument_group("settings (default: the value in --config, else the built-in default)")
    group.add_argument("--config", type=Path, help="YAML file of settings: setting names as keys (update_scheme or update-scheme)")
    group.add_argument("--cache-dir", help="local cache directory for shards and models")
    if not store_only:
        group.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            help="fill the settings left at their default from a preset, as the DAG's 'preset' Param does",
        )
    for key, (section, _, kind) in FLAT_SETTINGS.items():
        if store_only and section != "store":
            continue
        flag = "--" + key.replace("_", "-")
        # Values stay strings here; PipelineConfig validates and converts them with named errors.
        group.add_argument(flag, dest=key, metavar=kind.__name__.upper(), help=describe_setting(key).replace("%", "%%"))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_yaml(args.config))
    for key in [*FLAT_SETTINGS, "cache_dir", PRESET_KEY]:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return resolve_preset(values)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"cannot read settings file {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise PipelineError(f"settings file {path} must hold a mapping of setting names to values")
    return {key.replace("-", "_"): value for key, value in loaded.items()}


class _StrictParser(argparse.ArgumentParser):
    """A parser that rejects abbreviated flags, so a typo such as --epoch is an error, not --epochs."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_StrictParser)

    prepare = commands.add_parser("prepare", help="prepare the dataset into TFRecord shards")
    _add_settings(prepare)

    for name, help_text in [
        ("train", "train (or resume) the GAN of a run"),
        ("evaluate", "compute FID and KID of a run and write its report"),
        ("publish", "write run.json and move the model pointers"),
    ]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--fingerprint", required=True, help="dataset fingerprint printed by 'prepare'")
        command.add_argument("--run-id", required=True, help="run id; the same id resumes or reuses")
        _add_settings(command)

    run = commands.add_parser("run", help="run prepare, train, evaluate and publish in this process")
    run.add_argument("--run-id", help="run id (default: cli-<UTC time>)")
    _add_settings(run)

    demo = commands.add_parser("demo", help="run the Airflow DAG once on Fashion-MNIST with demo settings")
    demo.add_argument(
        "--airflow-home",
        type=Path,
        default=DEFAULT_HOME / "airflow",
        help="AIRFLOW_HOME for the embedded SQLite metadata database (default: %(default)s)",
    )
    _add_settings(demo)

    runs = commands.add_parser(
        "runs", help="list complete runs with their metrics and promotion state, and incomplete run ids"
    )
    _add_settings(runs, store_only=True)

    generate = commands.add_parser("generate", help="write images from the generator of a published run")
    generate.add_argument(
        "--model", default="best", help="best, latest or a run id (default: %(default)s)"
    )
    generate.add_argument("--count", type=int, default=64, help="number of images (default: %(default)s)")
    generate.add_argument(
        "--out", type=Path, required=True, help="a .png path for one grid, or a directory for one PNG per image"
    )
    generate.add_argument(
        "--latents",
        choices=("random", "fixed"),
        default="random",
        help="random: standard normal latents from --latent-seed; fixed: the run's sample-grid latents "
        "(default: %(default)s)",
    )
    generate.add_argument(
        "--latent-seed", type=int, help="seed of the random latents (default: a new seed, printed in the result)"
    )
    _add_settings(generate, store_only=True)
    return parser


def _execute(args: argparse.Namespace) -> Any:
    from pipeline import steps

    values = _settings(args)
    if args.command == "prepare":
        return steps.prepare(values)
    if args.command == "train":
        return steps.train(values, args.fingerprint, args.run_id)
    if args.command == "evaluate":
        return steps.evaluate(values, args.fingerprint, args.run_id)
    if args.command == "publish":
        metrics = steps.evaluate(values, args.fingerprint, args.run_id)
        return steps.publish(values, args.fingerprint, args.run_id, metrics)
    if args.command == "run":
        return steps.run_all(values, args.run_id or steps.new_run_id())
    if args.command == "runs":
        return _runs(values)
    if args.command == "generate":
        return _generate(values, args)
    if args.command == "demo":
        return _demo(values, args.airflow_home)
    raise AssertionError(f"unhandled command {args.command}")


def _demo(values: dict[str, Any], airflow_home: Path) -> dict[str, Any]:
    from pipeline import demo, steps

    params = {**demo.DEMO_PARAMS, **values}
    run_id = demo.run_dag(params, airflow_home)
    summary = steps.describe_run(params, run_id)
    log.info("report: %s", summary["report_html"])
    return summary


def _runs(values: dict[str, Any]) -> dict[str, Any]:
    from pipeline.config import PipelineConfig
    from pipeline.publish import list_runs
    from pipeline.retention import scan_runs
    from pipeline.storage import open_store

    store = open_store(PipelineConfig.from_mapping(values).store, create=False)
    return {"runs": list_runs(store), "incomplete_runs": scan_runs(store).incomplete}


def _generate(values: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.config import PipelineConfig
    from pipeline.generate import generate_images
    from pipeline.storage import open_store

    config = PipelineConfig.from_mapping(values)
    store = open_store(config.store, create=False)
    return generate_images(config, store, args.model, args.count, args.out, latents=args.latents, seed=args.latent_seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = _execute(args)
    except PipelineError as error:
        log.error("%s", error)
        return 2
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
