"""DANet's position and channel attention (Fu et al., "Dual Attention Network for Scene
Segmentation", CVPR 2019, arXiv 1809.02983).

Position attention (PAM, paper Eq. 1-2): B = conv(A), C = conv(A) with C/8 channels,
D = conv(A) with C channels (1×1, bias); s_ji = softmax_i(B_iᵀ C_j) over the N = H·W keys, no
1/√d scaling; E_j = α Σ_i s_ji D_i + A_j, with α (``gamma``) a scalar initialised to 0.

Channel attention (CAM, Eq. 3-4): no convolutions. With A as C×N, energy X = A Aᵀ (C×C);
x_ji = softmax_i(A_i · A_j); E_j = β Σ_i x_ji A_i + A_j, β initialised to 0. The authors'
code takes the softmax of (rowmax(X) − X), which equals softmax(−X): ``variant="official"``
(default, it produced the published results) or ``"paper"`` (softmax(X)).

PAM's attention matrix is N×N: 1 GiB per image at 128×128 in float32, 10 GiB at 224×224.
Here it is never built whole for large maps: queries are processed in blocks of at most
``max_block_elements`` scores written into one preallocated output, and backward recomputes
each block from a per-query log-sum-exp instead of storing the probabilities, so memory grows
linearly in N for inference and for training.

Example:
    >>> import torch
    >>> from attnlab.layers import PositionAttention, ChannelAttention
    >>> x = torch.randn(1, 64, 40, 30)
    >>> PositionAttention(64)(x).shape, ChannelAttention(64)(x).shape
    (torch.Size([1, 64, 40, 30]), torch.Size([1, 64, 40, 30]))
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, reduced_channels
from .maps import MapTap

CAM_VARIANTS = ("official", "paper")
DEFAULT_BLOCK_ELEMENTS = 1 << 22  # 4M scores: 16 MiB per block in float32


# The blocked kernel is a pair of torch.library custom ops with an autograd formula: autograd
# and torch.compile see one opaque op each (Dynamo would otherwise unroll the block loops).
# Forward writes each block into one preallocated output (allocating each block's output and
# concatenating at the end fragments the heap: one experiment at 1×512×224×224 grew the peak
# by 9.8 GiB that way and by 0.26 GiB preallocated) and keeps
# only each query's log-sum-exp; backward recomputes the block probabilities from it, as
# FlashAttention does, so training memory is linear in N as well.


@torch.library.custom_op("attnlab::blocked_position_attention", mutates_args=())
def _blocked_forward(
    q: torch.Tensor, k: torch.Tensor, v_t: torch.Tensor, block_size: int, want_received: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # q: B×N×d, k: B×d×N, v_t: B×N×C (values with positions first)
    batch, n = q.shape[0], q.shape[1]
    out = v_t.new_empty(batch, n, v_t.shape[2])  # B×N×C
    lse = q.new_empty(batch, n)  # log Σ_j exp(q_i·k_j), per query
    received = q.new_zeros(batch, n if want_received else 0)
    for b in range(batch):
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            scores = torch.mm(q[b, start:stop], k[b])  # blk×N
            torch.logsumexp(scores, dim=1, out=lse[b, start:stop])
            probs = scores.sub_(lse[b, start:stop, None]).exp_()  # softmax, in place
            torch.mm(probs, v_t[b], out=out[b, start:stop])  # blk×C
            if want_received:
                received[b] += probs.sum(0)
    return out, lse, received


@_blocked_forward.register_fake
def _(q, k, v_t, block_size, want_received):
    batch, n = q.shape[0], q.shape[1]
    return (
        v_t.new_empty(batch, n, v_t.shape[2]),
        q.new_empty(batch, n),
        q.new_empty(batch, n if want_received else 0),
    )


@torch.library.custom_op("attnlab::blocked_position_attention_backward", mutates_args=())
def _blocked_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v_t: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, n = q.shape[0], q.shape[1]
    grad_out = grad_out.contiguous()
    grad_q, grad_k, grad_v = q.new_zeros(q.shape), k.new_zeros(k.shape), v_t.new_zeros(v_t.shape)
    # D_i = Σ_c dO_ic O_ic = Σ_j P_ij dP_ij, the softmax-backward row term.
    delta = (grad_out * out).sum(-1)  # B×N
    for b in range(batch):
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            probs = torch.mm(q[b, start:stop], k[b]).sub_(lse[b, start:stop, None]).exp_()
            grad_v[b].addmm_(probs.t(), grad_out[b, start:stop])  # N×C
            grad_scores = torch.mm(grad_out[b, start:stop], v_t[b].t())  # blk×N
            grad_scores.sub_(delta[b, start:stop, None]).mul_(probs)
            grad_q[b, start:stop] = torch.mm(grad_scores, k[b].t())  # blk×d
            grad_k[b].addmm_(q[b, start:stop].t(), grad_scores)  # d×N
    return grad_q, grad_k, grad_v


@_blocked_backward.register_fake
def _(grad_out, q, k, v_t, out, lse, block_size):
    return q.new_empty(q.shape), k.new_empty(k.shape), v_t.new_empty(v_t.shape)


def _setup_context(ctx, inputs, output):
    q, k, v_t, block_size, _ = inputs
    out, lse, _ = output
    ctx.save_for_backward(q, k, v_t, out, lse)
    ctx.block_size = block_size


def _backward(ctx, grad_out, _grad_lse, _grad_received):
    q, k, v_t, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: the backward op has no derivative of its own, and a silently
        # incomplete second derivative would be worse than none.
        raise RuntimeError(
            "PositionAttention: the blocked kernel has first-order gradients only; for double "
            "backward use block_size >= H·W (the unblocked formulation)"
        )
    grad_q, grad_k, grad_v = _blocked_backward(grad_out, q, k, v_t, out, lse, ctx.block_size)
    return grad_q, grad_k, grad_v, None, None


_blocked_forward.register_autograd(_backward, setup_context=_setup_context)


def position_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int | None = None,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    return_received: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(QᵀK) applied to V over all positions, in blocks of queries when large.

    Args:
        q: queries, B×N×d.
        k: keys, B×d×N.
        v: values, B×C×N.
        block_size: queries per block; None picks the largest block with at most
            ``max_block_elements`` scores. When one block holds all N queries the plain
            formulation runs (ordinary autograd, one N×N matrix); ``block_size >= N`` forces it.
        max_block_elements: score budget per block when ``block_size`` is None.
        return_received: also return, per key position, the attention it receives averaged
            over queries (B×N).

    Returns:
        out as B×C×N (out_j = Σ_i s_ji v_i), or (out, received) when asked.
    """
    n = q.shape[1]
    if block_size is None:
        block_size = max(1, max_block_elements // max(1, n))
    if isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"position_attention: block_size must be >= 1, got {block_size!r}")
    if block_size >= n:
        probs = torch.softmax(torch.bmm(q, k), dim=-1)  # B×N×N, softmax over keys
        out = torch.bmm(v, probs.transpose(1, 2))  # B×C×N
        return (out, probs.mean(1)) if return_received else out
    v_t = v.transpose(1, 2).contiguous()  # B×N×C
    out, _, received = _blocked_forward(q, k, v_t, block_size, return_received)
    out = out.transpose(1, 2)  # B×C×N view of the B×N×C result
    return (out, received / n) if return_received else out


@register_attention(
    "pam",
    paper="Dual Attention Network for Scene Segmentation (CVPR 2019), position attention",
    arxiv="1809.02983",
    year=2019,
    kind="self-attention",
)
class PositionAttention(nn.Module):
    """DANet position attention module (PAM), blocked so memory is linear in H·W.

    Args:
        channels: input channels C.
        rd_ratio: query/key width as a fraction of C (paper: 1/8).
        qk_channels: query/key width given directly; overrides ``rd_ratio``.
        block_size: queries per block, or None (default) for automatic blocks bounded by
            ``max_block_elements`` scores. Results do not depend on it beyond rounding.
        max_block_elements: score budget per block and sample (default 4M, 16 MiB in
            float32). Maps small enough for one block (N² ≤ budget, e.g. up to 45×45) use the
            plain formulation.

    Observable map: ``spatial_map`` (kind ``"spatial"``), the attention each position
    receives averaged over all queries, B×1×H×W (computed only while its tap is watched).
    """

    # γ starts at 0, so the module is an identity at init (used by insert_attention).
    identity_at_init = True

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        qk_channels: int | None = None,
        block_size: int | None = None,
        max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    ) -> None:
        super().__init__()
        self.channels = check_channels("PositionAttention", channels)
        qk = reduced_channels("PositionAttention", channels, rd_ratio, qk_channels)
        if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
            raise ValueError(f"PositionAttention: block_size must be >= 1, got {block_size!r}")
        if max_block_elements < 1:
            raise ValueError(
                f"PositionAttention: max_block_elements must be >= 1, got {max_block_elements}"
            )
        self.block_size = block_size
        self.max_block_elements = max_block_elements
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # α of the paper
        self.spatial_map = MapTap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, channels, height, width = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B×N×d
        k = self.key(x).flatten(2)  # B×d×N
        v = self.value(x).flatten(2)  # B×C×N
        observed = self.spatial_map.observed
        result = position_attention(
            q,
            k,
            v,
            block_size=self.block_size,
            max_block_elements=self.max_block_elements,
            return_received=observed,
        )
        if observed:
            out, received = result
            self.spatial_map(received.reshape(batch, 1, height, width))  # B×1×H×W
        else:
            out = result
        # x first, so the result keeps x's memory format.
        return x + self.gamma * out.reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, qk_channels={self.query.out_channels}"


@register_attention(
    "cam",
    paper="Dual Attention Network for Scene Segmentation (CVPR 2019), channel attention",
    arxiv="1809.02983",
    year=2019,
    kind="self-attention",
)
class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM): C×C affinities of the raw features.

    Args:
        channels: input channels C.
        variant: ``"official"`` (softmax of rowmax(X) − X, the authors' code that produced
            the published results) or ``"paper"`` (softmax(X), Eq. 3); None takes ``preset``.
        preset: the same choice under the name every module uses for paper-vs-code
            differences (default ``"official"``); ``variant`` wins when both are given.

    Observable map: ``channel_map`` (kind ``"channel-affinity"``), the attention matrix
    x_ji as B×C×C.
    """

    # γ starts at 0, so the module is an identity at init (used by insert_attention).
    identity_at_init = True

    def __init__(
        self, channels: int, *, variant: str | None = None, preset: str = "official"
    ) -> None:
        super().__init__()
        self.channels = check_channels("ChannelAttention", channels)
        preset = check_choice("ChannelAttention", "preset", preset, CAM_VARIANTS)
        self.variant = check_choice(
            "ChannelAttention", "variant", preset if variant is None else variant, CAM_VARIANTS
        )
        self.gamma = nn.Parameter(torch.zeros(1))  # β of the paper
        self.channel_map = MapTap("channel-affinity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, channels, height, width = x.shape
        a = x.reshape(batch, channels, height * width)  # B×C×N
        energy = torch.bmm(a, a.transpose(1, 2))  # B×C×C
        if self.variant == "official":
            energy = energy.amax(-1, keepdim=True) - energy
        attention = self.channel_map(torch.softmax(energy, dim=-1))  # B×C×C
        out = torch.bmm(attention, a).reshape(batch, channels, height, width)
        return self.gamma * out + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}"
