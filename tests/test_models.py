"""Models: shapes, the embedding contract, parameter counts, options, training, export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ncdetect.errors import ConfigError, NcdetectError
from ncdetect.models import DropPath, SpoofModel, create_model, list_models, model_options, stats_pool

ALL = ["attn_mlp", "convnext_atto", "convnext_femto", "lcnn", "resnet18", "resnet34", "tiny_resnet"]

# Narrow variants keep the per-model tests fast; only the parameter-count test builds the defaults.
SMALL = {
    "resnet18": dict(width=8),
    "resnet34": dict(width=8),
    "tiny_resnet": dict(width=8),
    "convnext_atto": dict(dims=[8, 16, 32, 64], drop_path=0.0),
    "convnext_femto": dict(dims=[8, 16, 32, 64], drop_path=0.0),
    "lcnn": dict(width=8),
    "attn_mlp": dict(hidden=16, attention_dim=8),
}

# Parameter counts at the defaults with n_features=80 (lcnn, which flattens frequency, and attn_mlp, whose
# frame MLP reads every feature, depend on F).
DEFAULT_PARAMS = {
    "attn_mlp": 251_811,
    "convnext_atto": 3_538_106,
    "convnext_femto": 5_028_882,
    "lcnn": 240_962,
    "resnet18": 2_926_562,
    "resnet34": 5_455_458,
    "tiny_resnet": 373_810,
}


def small(name: str, n_features: int = 60, **extra) -> SpoofModel:
    return create_model(name, n_features, **{**SMALL[name], **extra})


def test_registry_lists_every_family():
    assert list_models() == sorted(ALL)
    assert set(SMALL) == set(ALL)


@pytest.mark.parametrize("n_features", [80, 60])
@pytest.mark.parametrize("name", ALL)
def test_output_and_embedding_shapes(name, n_features):
    model = small(name, n_features).eval()
    x = torch.randn(2, 1, n_features, 100)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    assert logits.shape == (2, 2)
    assert emb.shape == (2, 256)
    assert model.embedding_dim == 256
    assert isinstance(model.head, nn.Linear) and model.head.weight.shape == (2, 256)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", ALL)
def test_embed_is_exactly_the_input_of_the_head(name):
    model = small(name).eval()
    seen = []
    model.head.register_forward_hook(lambda mod, args, out: seen.append((args[0].clone(), out.clone())))
    x = torch.randn(3, 1, 60, 80)
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
    assert torch.equal(seen[0][0], emb)
    assert torch.equal(logits, model.head(emb))
    assert torch.equal(seen[0][1], logits)


def test_embedding_dim_is_configurable():
    model = small("tiny_resnet", embedding_dim=64).eval()
    with torch.no_grad():
        assert model.embed(torch.randn(2, 1, 60, 64)).shape == (2, 64)
    assert model.embedding_dim == 64 and model.head.in_features == 64


@pytest.mark.parametrize("name", ALL)
def test_default_parameter_counts(name):
    model = create_model(name, 80)
    assert model.num_parameters() == DEFAULT_PARAMS[name]
    if name == "tiny_resnet":
        assert model.num_parameters() <= 500_000


def test_resnet18_width64_trunk_is_the_classic_resnet18():
    model = create_model("resnet18", 80, width=64)
    trunk = sum(p.numel() for p in model.trunk.parameters())
    # torchvision resnet18 without its fc: 11,176,512; our stem is a 3x3 conv on one channel (576 weights)
    # instead of a 7x7 conv on three (9,408).
    assert trunk == 11_176_512 - 9_408 + 576
    assert 11.0e6 <= trunk <= 11.3e6


@pytest.mark.parametrize("name", ALL)
def test_batch_of_one_in_eval(name):
    model = small(name).eval()
    with torch.no_grad():
        one = model(torch.randn(1, 1, 60, 100))
    assert one.shape == (1, 2) and torch.isfinite(one).all()


@pytest.mark.parametrize("name", ALL)
def test_batch_items_are_independent_in_eval(name):
    model = small(name).eval()
    x = torch.randn(3, 1, 60, 90)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_variable_length_input(name):
    model = small(name).eval()
    with torch.no_grad():
        for frames in (model.min_frames, 50, 133, 401):
            out = model(torch.randn(2, 1, 60, frames))
            assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_wrong_input_shape_is_a_config_error(name):
    model = small(name).eval()
    with pytest.raises(ConfigError, match=r"\(B, 1, 60"):
        model(torch.randn(2, 1, 80, 100))  # a model built for 60 features fed 80
    with pytest.raises(ConfigError, match="T>="):
        model(torch.randn(2, 1, 60, model.min_frames - 1))


def test_training_batch_of_one_is_a_clear_error():
    model = small("tiny_resnet").train()
    with pytest.raises(NcdetectError, match="at least 2"):
        model(torch.randn(1, 1, 60, 64))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        create_model("resnet50", 80)
    for name in ALL:
        assert name in str(err.value)


def test_unknown_option_names_valid_options():
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", 80, widht=16)
    message = str(err.value)
    assert "widht" in message
    for option in ("width", "depths", "stem_stride", "freq_pool"):
        assert option in message
    with pytest.raises(ConfigError, match="dims"):
        create_model("convnext_atto", 80, width=16)  # width is a ResNet option, ConvNeXt takes dims


@pytest.mark.parametrize(
    ("name", "kwargs", "n_features"),
    [
        ("resnet18", dict(depths=[2, 2, 2]), 80),
        ("resnet18", dict(width=0), 80),
        ("resnet18", dict(width=True), 80),
        ("resnet18", dict(stem_stride=[1, 2, 3]), 80),
        ("convnext_atto", dict(drop_path=1.0), 80),
        ("convnext_atto", dict(dims="40,80,160,320"), 80),
        ("convnext_atto", {}, 16),  # four downsamplings by 32 leave nothing of 16 rows
        ("lcnn", {}, 8),
        ("tiny_resnet", dict(freq_pool="max"), 80),
        ("tiny_resnet", {}, 0),
    ],
)
def test_bad_option_values_are_config_errors(name, kwargs, n_features):
    with pytest.raises(ConfigError):
        create_model(name, n_features, **kwargs)


def test_options_and_spec_round_trip():
    assert model_options("tiny_resnet") == dict(
        width=16, depths=(1, 1, 1, 1), stem_stride=2, freq_pool="mean"
    )
    model = create_model("convnext_atto", 60, embedding_dim=32, dims=[8, 16, 32, 64])
    spec = model.spec
    assert spec["name"] == "convnext_atto" and spec["n_features"] == 60 and spec["embedding_dim"] == 32
    assert spec["kwargs"]["dims"] == [8, 16, 32, 64] and spec["kwargs"]["depths"] == [2, 2, 6, 2]
    rebuilt = create_model(spec["name"], spec["n_features"], spec["embedding_dim"], **spec["kwargs"])
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys, same shapes


def test_flatten_pooling_keeps_frequency_and_depends_on_it():
    mean60 = create_model("tiny_resnet", 60, width=8)
    mean80 = create_model("tiny_resnet", 80, width=8)
    flat60 = create_model("tiny_resnet", 60, width=8, freq_pool="flatten")
    flat80 = create_model("tiny_resnet", 80, width=8, freq_pool="flatten")
    assert mean60.num_parameters() == mean80.num_parameters()
    assert flat60.trunk_freq == 4 and flat80.trunk_freq == 5  # 60 -> 30 (stem) -> 15 -> 8 -> 4
    assert flat80.embedding[0].in_features == 2 * 64 * 5
    with torch.no_grad():
        assert flat80.eval()(torch.randn(1, 1, 80, 70)).shape == (1, 2)


def test_stats_pool_is_mean_and_population_std_and_stable():
    x = torch.randn(4, 5, 37, dtype=torch.float64)
    pooled = stats_pool(x)
    torch.testing.assert_close(pooled[:, :5], x.mean(-1))
    torch.testing.assert_close(pooled[:, 5:], x.std(-1, unbiased=False))
    # Zero variance: the clamp keeps the square root and its gradient finite.
    flat = torch.ones(2, 3, 9, requires_grad=True)
    out = stats_pool(flat)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(flat.grad).all()
    single = stats_pool(torch.randn(2, 3, 1))  # one frame left after downsampling
    assert torch.isfinite(single).all()


@pytest.mark.parametrize("name", ["tiny_resnet", "convnext_atto", "lcnn"])
def test_mixed_precision_forward_and_backward(name):
    torch.manual_seed(0)
    model = small(name).eval()
    x = torch.randn(4, 1, 60, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name):
    model = small(name).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 60, 64)), torch.tensor([0, 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ALL)
def test_a_few_steps_overfit_two_samples(name):
    torch.manual_seed(0)
    model = small(name).train()
    x = torch.randn(2, 1, 60, 64)
    y = torch.tensor([0, 1])
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optim.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < 0.2
    with torch.no_grad():  # train mode: with two samples the eval-mode BN running stats lag behind
        assert model(x).argmax(1).tolist() == [0, 1]


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_weights(name):
    torch.manual_seed(123)
    a = small(name)
    torch.manual_seed(123)
    b = small(name)
    torch.manual_seed(124)
    c = small(name)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_drop_path_only_in_training():
    drop = DropPath(0.5)
    x = torch.ones(2000, 3, 2, 2)
    torch.manual_seed(0)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    assert set(torch.unique(per_sample).tolist()) == {0.0, 2.0}  # whole samples dropped, the rest rescaled
    assert (per_sample.std(1) == 0).all()
    assert 0.4 < (per_sample[:, 0] == 0).float().mean().item() < 0.6
    assert torch.equal(drop.eval()(x), x)

    model = small("convnext_atto", drop_path=0.5, layer_scale_init=1.0)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates[-1] == 0.5 and rates == sorted(rates)  # linear rule over depth
    x = torch.randn(4, 1, 60, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("name", ALL)
def test_onnx_export_matches_with_dynamic_batch_and_time(name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = small(name).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model,
            (torch.randn(2, 1, 60, 100),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "batch", 3: "frames"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch, frames in ((1, 64), (3, 173)):
        x = torch.randn(batch, 1, 60, frames)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"features": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
