"""Built-in models: names, shapes, input channels, small inputs, parameter counts."""
import pytest
import torch

from gcnprune_fast.models import MODEL_NAMES, get_model


def test_model_names():
    assert set(MODEL_NAMES) == {"resnet20", "resnet32", "resnet56", "resnet110", "vgg16_bn",
                                "mobilenet_v2", "simple_cnn"}


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in ("resnet56", "resnet110")])
@pytest.mark.parametrize("size,channels", [(32, 3), (8, 1), (40, 3)])
def test_forward_shapes(name, size, channels):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9),
                                         ("resnet110", 18)])
def test_resnet_depth(name, blocks):
    model = get_model(name)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem conv + 2 per block + 2 option-B projection shortcuts = depth - 1 + 2.
    assert len(convs) == 1 + 6 * blocks + 2
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == blocks


def test_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert abs(count(get_model("resnet20")) - 272_474) == 0
    assert 14.7e6 < count(get_model("vgg16_bn")) < 14.8e6
    assert 2.2e6 < count(get_model("mobilenet_v2")) < 2.3e6
    assert count(get_model("simple_cnn")) < 300_000
    vgg = get_model("vgg16_bn")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13


def test_mobilenet_has_depthwise_and_cifar_strides():
    model = get_model("mobilenet_v2")
    dw = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(dw) == 17 and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert model.features[0][0].stride == (1, 1)
    with torch.no_grad():
        assert model.eval().features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model name"):
        get_model("resnet21")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        get_model("resnet20", in_channels=-1)
