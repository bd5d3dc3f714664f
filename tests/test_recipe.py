from pathlib import Path

import pytest

from ncdetect.errors import ConfigError
from ncdetect.recipe import load_recipe

RECIPE = """
name: t
variables:
  ROOT: /data/corpus
  EPOCHS: "5"
profiles:
  quick:
    EPOCHS: "1"
sources:
  - name: a
    train: ${ROOT}/a_train.csv
    dev: {manifest: "${ROOT}/a_dev.csv", limit: 10}
    config: cfg.yaml
    set: {optim.epochs: "${EPOCHS}"}
targets:
  - name: tgt
    data: {corpus: in-the-wild, root: rel/itw}
sampling:
  rates: [0.5, 0.1, 0.1]
seeds: [0, 1]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_variables_profiles_and_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("ROOT", raising=False)
    recipe = load_recipe(write(tmp_path, RECIPE))
    assert recipe.sources[0].train.manifest == Path("/data/corpus/a_train.csv")
    assert recipe.sources[0].dev.limit == 10
    assert recipe.sources[0].set == {"optim.epochs": "5"}
    assert recipe.sources[0].config == (tmp_path / "cfg.yaml").resolve()
    assert recipe.targets[0].data.root == (tmp_path / "rel/itw").resolve()
    assert recipe.sampling.rates == [0.1, 0.5]  # sorted, deduplicated
    assert load_recipe(write(tmp_path, RECIPE), profile="quick").sources[0].set == {"optim.epochs": "1"}
    over = load_recipe(write(tmp_path, RECIPE), {"ROOT": "/elsewhere"}, profile="quick")
    assert over.sources[0].train.manifest == Path("/elsewhere/a_train.csv")
    monkeypatch.setenv("ROOT", "/from/env")
    assert load_recipe(write(tmp_path, RECIPE)).sources[0].train.manifest == Path("/from/env/a_train.csv")


def test_unset_variable_names_the_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    text = RECIPE.replace("${ROOT}/a_train.csv", "${NOPE}/a_train.csv")
    with pytest.raises(ConfigError, match=r"recipe.yaml:11: variable \$\{NOPE\} is not set"):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("seeds: [0, 1]", "seeds: [0, 1]\nbogus: 1"), "bogus"),
        (("rates: [0.5, 0.1, 0.1]", "rates: [0, 0.5]"), "rates must be in"),
        (("    data: {corpus: in-the-wild, root: rel/itw}", "    data: {corpus: in-the-wild}"),
         "needs a 'root'"),
        (("  - name: tgt", "  - name: a"), "unique"),
    ],
)
def test_invalid_recipes(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, RECIPE.replace(*edit)))


def test_unknown_profile_and_var(tmp_path):
    with pytest.raises(ConfigError, match="no profile 'slow'"):
        load_recipe(write(tmp_path, RECIPE), profile="slow")
    with pytest.raises(ConfigError, match="TYPO"):
        load_recipe(write(tmp_path, RECIPE), {"TYPO": "1"})
