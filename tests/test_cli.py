"""The command line as a user runs it: a fresh interpreter, JSON on stdout, errors on stderr."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def run_cli(*args, cwd=REPO_ROOT):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_bad_setting_exits_2_naming_it(tmp_path):
    result = run_cli("prepare", "--records-per-shard", "-5", "--store-uri", str(tmp_path))

    assert result.returncode == 2
    assert "records_per_shard" in result.stderr
    assert "-5" in result.stderr


def test_cli_unknown_store_scheme_is_rejected(tmp_path):
    result = run_cli("prepare", "--store-uri", "ftp://host/path")

    assert result.returncode == 2
    assert "store_uri" in result.stderr


def test_cli_yaml_settings_and_flags(tmp_path, fashion_mnist_dir):
    settings = tmp_path / "settings.yaml"
    settings.write_text("max-train-examples: 100\nmax_test_examples: 50\nrecords_per_shard: 1000\n")

    result = run_cli(
        "prepare",
        "--config", str(settings),
        "--max-train-examples", "120",
        "--store-uri", str(tmp_path / "store"),
        "--cache-dir", str(tmp_path / "cache"),
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_train"] == 120
    assert summary["num_test"] == 50


def test_cli_settings_file_must_be_mapping(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("- epochs\n")

    result = run_cli("prepare", "--config", str(settings))

    assert result.returncode == 2
    assert "mapping" in result.stderr


def test_cli_preset_fills_unset_settings(tmp_path, fashion_mnist_dir):
    result = run_cli(
        "prepare",
        "--preset", "smoke",
        "--max-test-examples", "100",
        "--store-uri", str(tmp_path / "store"),
        "--cache-dir", str(tmp_path / "cache"),
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_train"] == 512
    assert summary["num_test"] == 100


def test_cli_unknown_preset_is_rejected():
    result = run_cli("prepare", "--preset", "fast")

    assert result.returncode == 2
    assert "fast" in result.stderr


def test_cli_rejects_abbreviated_flag():
    result = run_cli("run", "--epoch", "3")

    assert result.returncode == 2
    assert "--epoch" in result.stderr


def test_cli_help_shows_setting_defaults():
    result = run_cli("train", "--help")
    # argparse wraps help text to the terminal width, so compare with whitespace collapsed.
    help_text = " ".join(result.stdout.split())

    assert result.returncode == 0
    assert "--batch-size INT Images per step. Must be between 1 and 65536. Default: 128." in help_text
    assert "Must be one of alternating, simultaneous. Default: alternating." in help_text
    assert "--steps INT Training steps; overrides epochs when set. Must be a positive integer or unset." in help_text
    assert "--flip BOOL Mirror training images left-right with probability 1/2. True or false" in help_text


def test_cli_runs_help_lists_store_settings_only():
    result = run_cli("runs", "--help")

    assert result.returncode == 0
    assert "--store-uri" in result.stdout
    assert "--epochs" not in result.stdout
    assert "--update-scheme" not in result.stdout
