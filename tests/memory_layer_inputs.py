"""The front half of a memory layer, written from its documented equations for the per-token
references (test_memory_layer_reference, test_titans_lmm_reference): the q/k/v projection, the causal
depthwise convolution + SiLU, q and k L2-normalised per head, and the sigmoid gates."""
import torch


def layer_inputs(layer, x):
    """x (B, T, d) -> q, k, v (B, T, H, D), the gates σ(·) (B, T, n_gates, H) and the convolution's
    state after the sequence (its last K − 1 inputs, (B, C, K − 1))."""
    b, t, _ = x.shape
    h, dh, kernel = layer.h, layer.dh, layer.cfg.conv_size
    pre = x @ layer.qkv.weight.T                                                   # (B, T, 3HD)
    w = layer.conv.conv.weight[:, 0, :]                                            # (C, K)
    padded = torch.cat([pre.new_zeros(b, kernel - 1, pre.shape[-1]), pre], dim=1)
    conv = torch.stack([(padded[:, s:s + kernel] * w.T).sum(1) for s in range(t)], dim=1)
    z = conv * torch.sigmoid(conv)
    q, k, v = z.view(b, t, 3, h, dh).unbind(2)                                     # (B, T, H, D)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    g = torch.sigmoid(x @ layer.gates.weight.T + layer.gates.bias).view(b, t, -1, h)
    return q, k, v, g, padded[:, -(kernel - 1):].transpose(1, 2)
