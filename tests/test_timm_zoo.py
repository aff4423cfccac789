"""timm coverage: one small model per CNN family, random weights, through the pruning space.

Each model (``pretrained=False``, 10 classes, 96 px input) is pruned with random masks keeping
60% of every group and checked like the torchvision zoo (``test_zoo.check_model``): output shape,
masked == pruned where the space claims exactness, the cost model against torch-pruning's counter,
the original model unchanged. A model is either pruned correctly or refused with our clear
RuntimeError/ValueError; a wrong result or an error without our message fails the sweep.

The sweep is ``@pytest.mark.slow``: ``OMP_NUM_THREADS=1 python -m pytest tests/test_timm_zoo.py
-m slow -s`` (prints a table; ``GCNPRUNE_TIMM_ONLY=a,b`` runs a subset). timm is a test extra
(``pip install -e .[timm]``); without it these tests are skipped.
"""
import os

import pytest
import torch

from test_zoo import assert_sweep, check_model, sweep

timm = pytest.importorskip("timm")

# One model per family (the smallest variant timm has).
TIMM_FAMILIES = {
    "resnet": "resnet18", "resnet-d": "resnet26d", "resnext (byobnet)": "resnext26ts",
    "seresnext": "seresnext26d_32x4d", "ecaresnet": "ecaresnet26t", "skresnet": "skresnet18",
    "res2net": "res2net50_14w_8s", "resnest": "resnest14d", "regnetx": "regnetx_002",
    "regnety": "regnety_002", "dla": "dla34", "dpn": "dpn48b", "densenet": "densenet121",
    "vgg": "vgg11_bn", "efficientnet": "efficientnet_b0", "mobilenetv2": "mobilenetv2_050",
    "mobilenetv3": "mobilenetv3_small_050", "mnasnet": "mnasnet_050", "fbnet": "fbnetc_100",
    "mixnet": "mixnet_s", "ghostnet": "ghostnet_100", "rexnet": "rexnet_100",
    "lcnet": "lcnet_050", "cspnet": "cspresnet50", "darknet": "darknet17",
    "hrnet": "hrnet_w18_small", "inception_v3": "inception_v3", "xception": "xception41",
    "convnext": "convnext_atto", "edgenext": "edgenext_xx_small", "mobilevit": "mobilevit_xxs",
    "nfnet": "nf_resnet26", "repvgg": "repvgg_a0", "gernet": "gernet_s",
    "mobileone": "mobileone_s0", "selecsls": "selecsls42b", "vovnet": "ese_vovnet19b_dw",
    "repghost": "repghostnet_050", "mobilenetv4": "mobilenetv4_conv_small", "hgnetv2": "hgnetv2_b0",
}
# Pass floor of the full sweep (of len(TIMM_FAMILIES)); raise it when coverage grows.
TIMM_MIN_PASS = 36
FAST_SUBSET = ("resnet18", "mobilenetv3_small_050")


def run_timm_model(name: str) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    return check_model(name, model, x, keep=0.6, jit=False)


@pytest.mark.parametrize("name", FAST_SUBSET)
def test_timm_subset(name):
    from test_zoo import _check_row
    torch.set_num_threads(1)
    _check_row(run_timm_model(name))


@pytest.mark.slow
def test_timm_full_sweep():
    torch.set_num_threads(1)
    names = list(TIMM_FAMILIES.values())
    only = [n for n in os.environ.get("GCNPRUNE_TIMM_ONLY", "").split(",") if n]
    if only:
        names = [n for n in names if n in only] or only
    by_status = sweep(names, run_timm_model, float(os.environ.get("GCNPRUNE_ZOO_MAX_GB", "5")),
                      "timm families")
    assert_sweep(by_status, 1 if only else TIMM_MIN_PASS)
