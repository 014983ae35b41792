import pytest
import torch
from torch import nn

from fedgrad_core.models import available_models, make_model, ultimate_layer

SHAPES = {"digits_mlp": (1, 8, 8), "lenet": (1, 28, 28), "cnn_mnist": (1, 28, 28), "vgg9": (3, 32, 32), "vgg9_narrow": (3, 32, 32), "vgg9_slim": (3, 32, 32), "resnet18": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_maps_images_to_logits_through_a_final_linear(name):
    c, h, w = SHAPES[name]
    model = make_model(name, in_channels=c, num_classes=10, seed=0)

    logits = model.eval()(torch.zeros(2, c, h, w))
    weight, bias = ultimate_layer(model)

    assert logits.shape == (2, 10)
    state = model.state_dict()
    assert state[weight].shape[0] == 10 and state[bias].shape == (10,)
    assert list(state)[-2:] == [weight, bias]  # the ultimate layer is last in state-dict order


def test_all_models_are_covered():
    assert sorted(SHAPES) == available_models()


def test_vgg9_has_the_papers_size_and_no_batch_norm():
    model = make_model("vgg9", in_channels=3, num_classes=10, seed=0)

    params = sum(p.numel() for p in model.parameters())
    assert 9.1e6 < params < 9.3e6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_initialisation_depends_on_the_seed_only_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)

    a = make_model("digits_mlp", in_channels=1, num_classes=10, seed=5).state_dict()
    b = make_model("digits_mlp", in_channels=1, num_classes=10, seed=5).state_dict()
    c = make_model("digits_mlp", in_channels=1, num_classes=10, seed=6).state_dict()

    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    assert torch.equal(torch.rand(1), before)
