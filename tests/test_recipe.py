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
    (tmp_path / "cfg.yaml").write_text("model: {name: tiny_resnet}\n")
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


# Each mistake is found at load, before any work, as one line naming the recipe file, the key and the
# valid values.
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("rates: [0.5, 0.1, 0.1]", "rates: [0.5]\n  strategies: [ncc, random]"),
         r"recipe.yaml: sampling.strategies \(ncc\): unknown strategy 'ncc'; valid: .*kcenter.*nc.*random"),
        (("rates: [0.5, 0.1, 0.1]", "rates: [0.5]\n  strategies: [nc, full]"),
         r"sampling.strategies: 'full' is reserved"),
        (("rates: [0.5, 0.1, 0.1]", "rates: [0.5]\n  fake_mode: clas"),
         r"recipe.yaml: sampling.fake_mode: 'clas' is not one of class, attack, kmeans, spread"),
        (("rates: [0.5, 0.1, 0.1]", "rates: [0.5]\n  metric: manhattan"),
         r"sampling.metric: 'manhattan' is not one of euclidean, cosine"),
        (("rates: [0.5, 0.1, 0.1]",
          "rates: [0.5]\n  strategies: [random, {name: x, strategy: nc, options: {fake_mode: cluster}}]"),
         r"sampling.strategies \(x\): fake_mode must be one of class, attack, kmeans, spread, got 'cluster'"),
        (("rates: [0.5, 0.1, 0.1]",
          "rates: [0.5]\n  strategies: [random, {name: x, strategy: nc, options: {colour: red}}]"),
         r"sampling.strategies \(x\): unknown option 'colour'; valid: .*fake_mode"),
        (("rates: [0.5, 0.1, 0.1]",
          "rates: [0.5]\n  strategies: [random, {name: x, strategy: kcenter, options: {order: far}}]"),
         r"sampling.strategies \(x\): order 'far' applies to strategies nc, nc-kcenter only; "
         r"kcenter takes order 'near'"),
        (("rates: [0.5, 0.1, 0.1]",
          "rates: [0.5]\n  strategies: [random, {name: random, strategy: nc}]"),
         r"selection names must be unique; repeated: random"),
        (("rates: [0.5, 0.1, 0.1]", "rates: [0.5]\n  headline: kcenter"),
         r"sampling.headline: 'kcenter' is not one of the selections: nc, random"),
        (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be unique"),
        (("seeds: [0, 1]", "seeds: []"), "at least one source, one target and one seed"),
        (("seeds: [0, 1]", "seeds: [0]\nreport: {projection: umap}"),
         r"recipe.yaml: report.projection: 'umap' is not one of pca, tsne"),
        (("seeds: [0, 1]", "seeds: [0]\nreport: {validation: [nope]}"),
         r"report.validation: 'nope' is not a target; targets: tgt"),
        (("seeds: [0, 1]", "seeds: [0]\nreport: {validation: [tgt]}"), r"keep at least one test target"),
        (("config: cfg.yaml", "config: missing.yaml"),
         r"sources\[0\] \(a\): config file .*missing.yaml not found"),
        (("set: {optim.epochs: \"${EPOCHS}\"}", "set: {optim.epochz: 3}"),
         r"recipe.yaml: sources\[0\] \(a\): .*optim.*epochz"),
        (("set: {optim.epochs: \"${EPOCHS}\"}", "set: {optim.epochs: -3}"),
         r"recipe.yaml: sources\[0\] \(a\): .*epochs"),
        (("seeds: [0, 1]", "seeds: [0]\ncompact: {config: cfg.yaml, set: {model.name: resnet81}}"),
         r"recipe.yaml: compact: .*resnet81.*valid"),
        (("seeds: [0, 1]", "seeds: [0]\ncompact: {budget: step}"),
         r"recipe.yaml: compact.budget: Input should be 'epochs' or 'steps'"),
        (("seeds: [0, 1]", "seeds: [0]\ncompact: {max_epochs: 40}"),
         r"compact.max_epochs: caps the epochs of budget steps; this recipe's budget is 'epochs'"),
        (("seeds: [0, 1]", "seeds: [0]\ncompact: {budget: steps, max_epochs: 0}"),
         r"recipe.yaml: compact.max_epochs: Input should be greater than or equal to 1"),
        (("seeds: [0, 1]", "seeds: [0]\ncompact: {budget: steps, set: {optim.steps: 100}}"),
         r"recipe.yaml: compact: optim.steps is what budget steps sets for each compact model"),
        (("limit: 10}", "limit: 10, filter: \"attack in ['-', 'A01'\"}"),
         r"sources\[0\].dev.filter: .* does not parse"),
    ],
)
def test_recipe_mistakes_are_caught_at_load(tmp_path, edit, message):
    assert edit[0] in RECIPE
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, RECIPE.replace(*edit)))


def test_variants_and_a_filter_with_backticks_load(tmp_path):
    text = RECIPE.replace("rates: [0.5, 0.1, 0.1]", """rates: [0.5]
  strategies:
    - random
    - nc
    - {name: nc-attack, strategy: nc, options: {fake_mode: attack}}""").replace(
        "limit: 10}", "limit: 10, filter: \"`attack` in ['-', 'A01'] and speaker != 'x'\"}")
    recipe = load_recipe(write(tmp_path, text))
    variants = {v.name: (v.strategy, v.options) for v in recipe.sampling.variants()}
    assert variants == {"random": ("random", {"metric": "euclidean"}),
                        "nc": ("nc", {"metric": "euclidean", "fake_mode": "class"}),
                        "nc-attack": ("nc", {"fake_mode": "attack"})}


def test_target_by_columns_are_checked_at_load(tmp_path):
    manifest = tmp_path / "target.csv"
    manifest.write_text("utt_id,path,label,dataset,attack,speaker,language\n"
                        "u1,a.wav,bonafide,t,-,s1,en\nu2,b.wav,spoof,t,A1,s1,es\n")
    text = RECIPE.replace("data: {corpus: in-the-wild, root: rel/itw}",
                          f"data: {manifest}\n    by: [language]")
    assert load_recipe(write(tmp_path, text)).targets[0].by == ["language"]
    columns = r"\(its columns: utt_id, path, label, dataset, attack, speaker, language\)"
    missing = r"targets\[0\].by: column 'channel' is not in .*target.csv "
    with pytest.raises(ConfigError, match=missing + columns):
        load_recipe(write(tmp_path, text.replace("by: [language]", "by: [language, channel]")))
    with pytest.raises(ConfigError, match=r"targets\[0\].by: column 'language' is named twice"):
        load_recipe(write(tmp_path, text.replace("by: [language]", "by: [language, language]")))
