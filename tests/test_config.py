"""Training configs: validation, one-line errors that list the valid keys, --set overrides, examples."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from ncdetect.config import TrainConfig, apply_override, load_config, valid_keys, validate_config
from ncdetect.errors import ConfigError

EXAMPLES = ["tiny_resnet", "resnet18", "convnext_atto", "lcnn"]


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_complete_and_round_trip():
    cfg = load_config(None, [])
    data = cfg.to_dict()
    assert set(data) == {"model", "frontend", "data", "optim", "loss", "augment", "train"}
    # The saved (resolved) config validates back to the same config.
    again = validate_config(yaml.safe_load(yaml.safe_dump(data)))
    assert again == cfg


def test_unknown_key_in_section_lists_valid_keys(tmp_path):
    path = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and "'optim.lrr'" in msg
    for key in ("epochs", "lr", "weight_decay", "warmup_epochs", "grad_clip"):
        assert key in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'.*model, frontend, data, optim"):
        load_config(_write(tmp_path, "optimizer: {lr: 1}\n"), [])


def test_unknown_key_via_set_and_nested_section():
    with pytest.raises(ConfigError, match=r"'augment.specaugment.masks'.*freq_masks"):
        load_config(None, ["augment.specaugment.masks=3"])


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("optim.lr=fast", "optim.lr"),
        ("optim.epochs=2.5", "optim.epochs"),
        ("optim.epochs=0", "optim.epochs"),
        ("loss.balance=oversample", "loss.balance"),
        ("train.amp=fp8", "train.amp"),
        ("data.batch_size=[1, 2]", "data.batch_size"),
    ],
)
def test_bad_values_name_the_key(override, where):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert where in str(info.value) and "\n" not in str(info.value)


def test_set_values_are_yaml():
    cfg = load_config(
        None,
        [
            "optim.lr=0.003",
            "optim.epochs=7",
            "optim.grad_clip=null",
            "model.kwargs.width=8",
            "model.kwargs.depths=[1, 1, 1, 1]",
            "augment.specaugment.enabled=true",
            "augment.rawboost=true",  # shorthand for .enabled
            "train.patience=null",
        ],
    )
    assert cfg.optim.lr == 0.003 and cfg.optim.epochs == 7 and cfg.optim.grad_clip is None
    assert cfg.model.kwargs == {"width": 8, "depths": [1, 1, 1, 1]}
    assert cfg.augment.specaugment.enabled and cfg.augment.rawboost.enabled
    assert cfg.train.patience is None


def test_set_overrides_the_file(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.1\n  epochs: 3\n")
    cfg = load_config(path, ["optim.lr=0.5"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 3


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim.lr.x=1"])
def test_malformed_set(bad):
    with pytest.raises(ConfigError, match="--set"):
        data = {"optim": {"lr": 0.1}}
        apply_override(data, bad)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.1\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: invalid YAML"):
        load_config(path, [])


def test_config_must_be_a_mapping_and_exist(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"), [])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", [])


def test_unknown_model_and_frontend_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet99'.*tiny_resnet"):
        load_config(None, ["model.name=resnet99"])
    with pytest.raises(ConfigError, match=r"unknown front-end 'mfcc'.*logmel"):
        load_config(None, ["frontend.name=mfcc"])


def test_rawboost_and_feature_cache_exclude_each_other():
    with pytest.raises(ConfigError, match="feature_cache"):
        load_config(None, ["data.feature_cache=true", "augment.rawboost.enabled=true"])


def test_valid_keys_walks_sections():
    assert "lr" in valid_keys(("optim",))
    assert "freq_masks" in valid_keys(("augment", "specaugment"))
    assert set(valid_keys(())) == set(TrainConfig.model_fields)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_load_and_build(name):
    from ncdetect.runs import build_frontend, build_model

    path = Path(str(resources.files("ncdetect") / "configs" / f"{name}.yaml"))
    cfg = load_config(path, [])
    assert cfg.model.name == name
    frontend = build_frontend(cfg)
    model = build_model(cfg, frontend.n_features)
    assert model.embedding_dim == cfg.model.embedding_dim


def test_bad_model_kwargs_are_config_errors():
    from ncdetect.runs import build_frontend, build_model

    cfg = load_config(None, ["model.kwargs.widht=8"])
    with pytest.raises(ConfigError, match="widht"):
        build_model(cfg, build_frontend(cfg).n_features)


def test_cli_reports_config_error_in_one_line(tmp_path, toy_manifest):
    cfg = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ncdetect.cli", "train", "--config", str(cfg), "--train", str(toy_manifest),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncdetect: error:") and "valid keys in optim" in lines[0]
    assert not (tmp_path / "run").exists()


def test_values_are_applied_as_data_and_strings_as_yaml_text():
    """A recipe's ``set`` reaches the config as a mapping, without a text round trip; its strings are YAML
    text like ``--set`` values (recipe variables are substituted into text)."""
    cfg = load_config(None, values={"optim.lr": 1e-05, "model.kwargs.dims": [8, 16, 32, 64],
                                    "optim.epochs": "7", "data.cache_dir": "", "train.seed": 3})
    assert cfg.optim.lr == 1e-05 and cfg.optim.epochs == 7 and cfg.train.seed == 3
    assert cfg.model.kwargs["dims"] == [8, 16, 32, 64] and cfg.data.cache_dir is None
    same = load_config(None, ["optim.lr=0.00001", "model.kwargs.dims=[8, 16, 32, 64]", "optim.epochs=7",
                              "data.cache_dir=", "train.seed=3"])
    assert same.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"optim.lr.x: 1: optim.lr is a value"):
        load_config(None, values={"optim.lr": 1, "optim.lr.x": 1})
