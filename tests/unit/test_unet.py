import pytest
import torch
import torch.nn.functional as F

from ddpm.models import UNet
from ddpm.models.layers import ResBlock, timestep_embedding

SMALL = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_groups=8, dropout=0.0)


@pytest.mark.parametrize("channels,size,attn", [(1, 28, (14,)), (3, 32, (16,)), (3, 16, ())])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_shape_equals_input_shape(channels, size, attn, channels_last):
    net = UNet(
        image_size=size, in_channels=channels, attn_resolutions=attn, channels_last=channels_last, **SMALL
    )
    x = torch.randn(3, channels, size, size)
    out = net(x, torch.tensor([0, 10, 999]))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_ddpm_cifar10_net_has_35_7M_parameters():
    net = UNet(
        image_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
    )
    n = sum(p.numel() for p in net.parameters())
    assert round(n / 1e6, 1) == 35.7
    assert n == 35_746_307  # the count of Ho et al.'s TF model


def test_output_depends_on_t_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, attn_resolutions=(4,), **SMALL)
    for p in net.parameters():  # undo zero-init so every path carries signal
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([500, 500]))
    assert (a - b).abs().max() > 1e-4
    net(x, torch.tensor([3, 700])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_timestep_embedding_is_sinusoidal():
    t = torch.tensor([0, 1, 250])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 3)
    assert torch.allclose(emb[:, :4], torch.sin(t[:, None] * freqs), atol=1e-5)
    assert torch.allclose(emb[:, 4:], torch.cos(t[:, None] * freqs), atol=1e-5)


def test_image_size_the_unet_cannot_downsample():
    with pytest.raises(ValueError, match="image_size 30 cannot be halved 3 times .* divisible by 8"):
        UNet(image_size=30, in_channels=1, channel_mult=(1, 2, 2, 2), attn_resolutions=())


def test_unreachable_attention_resolution():
    with pytest.raises(ValueError, match=r"attn_resolutions \[16\] are not resolutions of this UNet"):
        UNet(image_size=28, in_channels=1, attn_resolutions=(16,), **SMALL)


def test_groupnorm_channels_must_divide():
    with pytest.raises(ValueError, match="GroupNorm groups"):
        UNet(
            image_size=8,
            in_channels=1,
            base_channels=12,
            channel_mult=(1,),
            num_groups=8,
            attn_resolutions=(),
        )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_is_multi_head_softmax_attention(num_heads, channels_last):
    """AttnBlock = x + proj(concat_h softmax(q_h k_h^T / sqrt(d)) v_h) with q, k, v the 1x1 convolution of GN(x)."""
    from ddpm.models.layers import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(16, num_heads, num_groups=4).double()
    torch.nn.init.normal_(block.proj.weight)  # zero-initialised: the block would be the identity
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    if channels_last:
        block, x = (
            block.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    d = 16 // num_heads
    q, k, v = (
        torch.nn.functional.conv2d(block.norm(x), block.qkv.weight, block.qkv.bias).flatten(2).chunk(3, dim=1)
    )
    heads = []
    for h in range(num_heads):
        qh, kh, vh = (m[:, h * d : (h + 1) * d] for m in (q, k, v))  # [B, d, HW]
        weights = torch.softmax(qh.transpose(1, 2) @ kh / d**0.5, dim=-1)  # [B, HW, HW]
        heads.append(vh @ weights.transpose(1, 2))  # [B, d, HW]
    expected = x + torch.nn.functional.conv2d(
        torch.cat(heads, 1).view(2, 16, 4, 4), block.proj.weight, block.proj.bias
    )
    torch.testing.assert_close(block(x), expected)


def _res_block_pair(seed: int = 0):
    """An additive ResBlock and a scale-shift one with the same convolutions and norms (temb_proj differs in size)."""
    torch.manual_seed(seed)
    add = ResBlock(8, 16, temb_dim=12, dropout=0.0, num_groups=4)
    ss = ResBlock(8, 16, temb_dim=12, dropout=0.0, num_groups=4, scale_shift=True)
    for p in add.parameters():  # undo zero-init so the second convolution carries signal
        torch.nn.init.normal_(p, std=0.2)
    state = {k: v for k, v in add.state_dict().items() if not k.startswith("temb_proj")}
    ss.load_state_dict(state, strict=False)
    return add.double(), ss.double()  # float64: the comparisons below are exact up to rounding


def test_scale_shift_block_is_adaptive_group_norm():
    """Dhariwal & Nichol 2021: h = conv2(SiLU(GN(h1) (1 + s) + b)), (s, b) = Linear(SiLU(temb)), written out with
    F.group_norm here; the additive block is conv2(SiLU(GN(h1 + e)))."""
    add, ss = _res_block_pair()
    torch.nn.init.normal_(ss.temb_proj.weight, std=0.3)
    torch.nn.init.normal_(ss.temb_proj.bias, std=0.3)
    x, temb = torch.randn(3, 8, 6, 6, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    h1 = F.conv2d(
        F.silu(F.group_norm(x, 4, add.norm1.weight, add.norm1.bias, eps=1e-6)),
        add.conv1.weight,
        add.conv1.bias,
        padding=1,
    )
    s, b = (F.silu(temb) @ ss.temb_proj.weight.T + ss.temb_proj.bias).split(16, dim=1)
    gn = F.group_norm(h1, 4, add.norm2.weight, add.norm2.bias, eps=1e-6)
    h = gn * (1 + s[:, :, None, None]) + b[:, :, None, None]
    expected = F.conv2d(x, add.skip.weight, add.skip.bias) + F.conv2d(
        F.silu(h), add.conv2.weight, add.conv2.bias, padding=1
    )
    torch.testing.assert_close(ss(x, temb), expected)
    e = F.silu(temb) @ add.temb_proj.weight.T + add.temb_proj.bias
    gn_add = F.group_norm(h1 + e[:, :, None, None], 4, add.norm2.weight, add.norm2.bias, eps=1e-6)
    expected_add = F.conv2d(x, add.skip.weight, add.skip.bias) + F.conv2d(
        F.silu(gn_add), add.conv2.weight, add.conv2.bias, padding=1
    )
    torch.testing.assert_close(add(x, temb), expected_add)


def test_scale_shift_with_a_zero_condition_equals_the_additive_block_with_a_zero_condition():
    add, ss = _res_block_pair(1)
    for block in (add, ss):
        torch.nn.init.zeros_(block.temb_proj.weight)
        torch.nn.init.zeros_(block.temb_proj.bias)
    x, temb = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    torch.testing.assert_close(ss(x, temb), add(x, temb))


def test_scale_shift_unet_depends_on_t_and_trains_every_parameter():
    torch.manual_seed(0)
    net = UNet(
        image_size=8, in_channels=1, attn_resolutions=(4,), scale_shift_norm=True, num_classes=3, **SMALL
    )
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    assert (net(x, torch.tensor([1, 1])) - net(x, torch.tensor([500, 500]))).abs().max() > 1e-4
    net(x, torch.tensor([3, 700]), y=torch.tensor([0, 2])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
