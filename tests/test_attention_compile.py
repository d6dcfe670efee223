"""torch.compile smoke test over module families with hand-written autograd Functions.

Marked slow although it starts neither Ray nor a server (the one exception to the rule in pyproject.toml's
marker description): its 13 tests take ~125 s on 2 shared CPU cores (triplet alone ~31 s), too long for the
fast suite. Measured for issue 12; revisit if compile times drop.
"""

from __future__ import annotations

import pytest
import torch

from attnsearch.attention import build_attention


@pytest.mark.slow
@pytest.mark.parametrize("name,knobs", [("sa", {"groups": 4}), ("cbam", {})])
def test_compiled_matches_eager(name: str, knobs: dict) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = build_attention(name, 32, **knobs)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.2)
    x = torch.randn(4, 32, 6, 9)
    g = torch.randn_like(x)
    grads = []
    for fn in (m, torch.compile(m, fullgraph=True)):
        xi = x.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = fn(xi)
        (y * g).sum().backward()
        grads.append((y.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp1, gp0, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["se", "cbam", "bam", "eca", "coord", "simam", "na", "nam", "sa", "triplet", "gc"])
def test_every_module_compiles_as_training_does(name: str) -> None:
    """train.py compiles with dynamic=False; the last, smaller batch triggers one recompilation."""
    torch._dynamo.reset()
    knobs = {"groups": 4} if name == "sa" else {}
    m = build_attention(name, 32, **knobs)
    compiled = torch.compile(m, dynamic=False)
    for batch in (4, 3):
        x = torch.randn(batch, 32, 6, 9, requires_grad=True)
        y = compiled(x)
        y.square().sum().backward()
        torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-5)
        assert x.grad is not None and torch.isfinite(x.grad).all()
