"""The seed's four losses against values worked out by hand, and their gradients."""

import pytest
import torch

from stylecore.losses import (
    content_loss,
    content_loss_per_sample,
    gram_matrix,
    style_loss,
    style_loss_per_sample,
    tv_loss,
    tv_loss_per_sample,
)


def test_content_loss_is_weighted_sum_of_squares():
    current = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    original = torch.tensor([[[[0.0, 2.0], [5.0, 1.0]]]])
    # differences 1, 0, -2, 3 → squares 1 + 0 + 4 + 9 = 14
    assert content_loss(0.5, current, original).item() == pytest.approx(7.0)


def test_gram_matrix_by_hand():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, C=2, H=1, W=2)
    # F = [[1, 2], [3, 4]] → F·Fᵀ = [[5, 11], [11, 25]]
    raw = gram_matrix(features, normalize=False)
    assert raw.shape == (1, 2, 2)
    assert raw[0].tolist() == [[5.0, 11.0], [11.0, 25.0]]
    # normalised by C·H·W = 4
    assert gram_matrix(features)[0].tolist() == [[1.25, 2.75], [2.75, 6.25]]


def test_gram_matrix_is_per_sample():
    a = torch.randn(1, 3, 4, 5)
    b = torch.randn(1, 3, 4, 5)
    both = gram_matrix(torch.cat([a, b]))
    assert torch.allclose(both[0], gram_matrix(a)[0])
    assert torch.allclose(both[1], gram_matrix(b)[0])


def test_style_loss_by_hand():
    feats = {"x": torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]]), "y": torch.tensor([[[[2.0]]]])}
    targets = [torch.zeros(1, 2, 2), torch.tensor([[[1.0]]])]
    # layer x: Σ G² = 1.25² + 2·2.75² + 6.25² = 1.5625 + 15.125 + 39.0625 = 55.75
    # layer y: G = 4/1 = 4 → (4 − 1)² = 9
    loss = style_loss(feats, ["x", "y"], targets, [2.0, 10.0])
    assert loss.item() == pytest.approx(2.0 * 55.75 + 10.0 * 9.0)


def test_style_loss_takes_positional_layers_like_the_seed():
    feats = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    loss = style_loss(feats, [1], [torch.tensor([[[8.0]]])], [1.0])
    assert loss.item() == pytest.approx(1.0)  # G = 9 → (9 − 8)²


def test_tv_loss_by_hand_over_all_channels():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # channel 0: vertical (2−0)² + (4−1)² = 13, horizontal (1−0)² + (4−2)² = 5; channel 1: 0
    assert tv_loss(img, 3.0).item() == pytest.approx(3.0 * 18)


def test_losses_sum_rather_than_average():
    small, large = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 4, 4)
    assert content_loss(1.0, large, 0 * large).item() == 4 * content_loss(1.0, small, 0 * small).item()


def test_gradcheck_all_losses():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 4, dtype=torch.double, requires_grad=True)
    target = torch.randn(1, 2, 3, 4, dtype=torch.double)
    gram_target = [torch.randn(1, 2, 2, dtype=torch.double)]
    assert torch.autograd.gradcheck(lambda t: content_loss(0.7, t, target), (x,))
    assert torch.autograd.gradcheck(lambda t: gram_matrix(t), (x,))
    assert torch.autograd.gradcheck(lambda t: style_loss({"a": t}, ["a"], gram_target, [1.3]), (x,))
    assert torch.autograd.gradcheck(lambda t: tv_loss(t, 0.4), (x,))


def test_per_sample_variants_match_for_each_sample():
    torch.manual_seed(1)
    x, y = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    targets = [gram_matrix(y)]
    per_content = content_loss_per_sample(2.0, x, y)
    per_style = style_loss_per_sample({"a": x}, ["a"], targets, [5.0])
    per_tv = tv_loss_per_sample(x, 0.3)
    for i in range(3):
        xi, yi = x[i : i + 1], y[i : i + 1]
        assert per_content[i].item() == pytest.approx(content_loss(2.0, xi, yi).item(), rel=1e-5)
        assert per_style[i].item() == pytest.approx(style_loss({"a": xi}, ["a"], [targets[0][i : i + 1]], [5.0]).item(), rel=1e-5)
        assert per_tv[i].item() == pytest.approx(tv_loss(xi, 0.3).item(), rel=1e-5)
