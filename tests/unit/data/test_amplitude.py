"""FedDG-style amplitude windows, group means and interpolation, checked by hand."""

from __future__ import annotations

import pytest
import torch

from omnifm.data.amplitude import amplitude_windows, group_mean_amplitudes, interpolate_amplitude, window_half_size


@pytest.mark.parametrize("shape, ratio, b", [((32, 32), 0.1, 3), ((64, 48), 0.1, 4), ((32, 32), 0.0, 0)])
def test_window_half_size(shape, ratio, b):
    assert window_half_size(*shape, ratio) == b


def test_bad_ratio_is_refused():
    with pytest.raises(ValueError, match="amplitude ratio must be in"):
        window_half_size(32, 32, 0.7)


def test_dc_window_of_a_constant_image_is_its_sum():
    windows = amplitude_windows(torch.full((1, 1, 8, 8), 2.0), ratio=0.0)
    assert windows.shape == (1, 1, 1, 1) and windows.item() == pytest.approx(128.0)


def test_group_means_are_means_of_disjoint_groups():
    images = torch.randn(10, 1, 16, 16)
    groups = group_mean_amplitudes(images, 0.1, groups=4, min_count=4, generator=torch.Generator().manual_seed(0))
    assert groups.shape == (2, 1, 3, 3), "10 images, groups of at least 4 -> 2 groups of 5"
    torch.testing.assert_close(groups.mean(dim=0), amplitude_windows(images, 0.1).mean(dim=0))
    none = group_mean_amplitudes(images[:3], 0.1, 4, 4, torch.Generator())
    assert none.shape == (0, 1, 3, 3), "fewer images than a group: nothing is uploaded"


def test_own_amplitude_leaves_the_image_unchanged_and_phase_is_kept():
    image = torch.randn(1, 1, 16, 16)
    bank = amplitude_windows(image, 0.1)
    out = interpolate_amplitude(image, bank, 0.1, torch.Generator().manual_seed(0), probability=1.0)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=1e-5)


def test_dc_interpolation_moves_a_constant_image_between_its_level_and_the_bank():
    image = torch.full((4, 1, 8, 8), 1.0)
    bank = torch.full((1, 1, 1, 1), 3.0 * 64)  # the DC amplitude of a constant-3 image
    out = interpolate_amplitude(image, bank, 0.0, torch.Generator().manual_seed(1), probability=1.0)
    levels = out.mean(dim=(1, 2, 3))
    assert torch.allclose(out, levels.view(4, 1, 1, 1).expand_as(out), atol=1e-5), "still constant"
    assert ((levels >= 1.0 - 1e-5) & (levels <= 3.0 + 1e-5)).all() and levels.std() > 0, "lam ~ U(0, 1) per image"


def test_empty_bank_and_bad_shapes():
    image = torch.randn(2, 1, 16, 16)
    assert interpolate_amplitude(image, torch.zeros(0, 1, 3, 3), 0.1, torch.Generator()) is image
    with pytest.raises(ValueError, match="amplitude bank entries have shape"):
        interpolate_amplitude(image, torch.zeros(1, 1, 5, 5), 0.1, torch.Generator())
