"""EMA vector quantiser: lookup, straight-through gradients, EMA update, restarts, precision."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from brainad.models.quantizer import EMAQuantizer


def _grid(vectors: torch.Tensor, batch: int, side: int) -> torch.Tensor:
    """(batch*side*side, dim) row vectors → z (batch, dim, side, side), row order preserved."""
    return vectors.view(batch, side, side, -1).permute(0, 3, 1, 2).contiguous()


@pytest.fixture
def codebook() -> torch.Tensor:
    return torch.tensor(
        [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [-10.0, 0.0, 0.0]]
    )  # four well-separated codes in 3-D


def _quantizer(codebook: torch.Tensor, counts: float, decay: float = 0.9) -> EMAQuantizer:
    """A quantiser whose EMA state says every code has absorbed ``counts`` vectors."""
    q = EMAQuantizer(codebook.shape[0], codebook.shape[1], decay, dead_code_threshold=0.5)
    q.embedding.copy_(codebook)
    q.cluster_size.fill_(counts)
    q.embed_sum.copy_(codebook * counts)
    return q


def test_nearest_code_commitment_and_straight_through(codebook: torch.Tensor) -> None:
    q = _quantizer(codebook, counts=8.0).eval()
    torch.manual_seed(0)
    vectors = torch.randn(2 * 3 * 3, 3) * 6.0
    z = _grid(vectors, 2, 3).requires_grad_(True)
    out = q(z)
    expected = torch.cdist(vectors, codebook).argmin(1)  # brute-force nearest code
    assert torch.equal(out.indices.flatten(), expected)
    assert out.indices.shape == (2, 3, 3) and out.indices.dtype == torch.long
    assert torch.allclose(out.quantized, _grid(codebook[expected], 2, 3))
    assert torch.allclose(out.commitment, (vectors - codebook[expected]).pow(2).mean())
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through: identity gradient


def test_ema_moves_code_toward_mean_of_its_vectors(codebook: torch.Tensor) -> None:
    decay, n = 0.9, 8
    q = _quantizer(codebook, counts=float(n), decay=decay).train()
    torch.manual_seed(1)
    vectors = torch.tensor([8.0, 1.0, 0.0]) + 0.3 * torch.randn(n, 3)  # all nearest to code 0
    mean = vectors.mean(0)
    before = (q.embedding[0] - mean).norm()
    out = q(_grid(vectors, 2, 2))
    assert torch.all(out.indices == 0)
    # the EMA statistics, written out by hand (Laplace smoothing with eps = 1e-5, K = 4)
    sizes = torch.full((4,), decay * n)
    sizes[0] += (1 - decay) * n
    sums = decay * n * codebook
    sums[0] += (1 - decay) * vectors.sum(0)
    smoothed = (sizes + 1e-5) / (sizes.sum() + 4 * 1e-5) * sizes.sum()
    assert torch.allclose(q.cluster_size, sizes)
    assert torch.allclose(q.embedding, sums / smoothed[:, None], atol=1e-5)
    # at steady state (N_k = n_k) that is e <- e + (1 - decay) * (mean - e)
    assert torch.allclose(
        q.embedding[0], codebook[0] + (1 - decay) * (mean - codebook[0]), atol=1e-3
    )
    assert (q.embedding[0] - mean).norm() < before
    assert torch.allclose(q.embedding[1:], codebook[1:], atol=1e-3)  # unused codes stay put


def test_eval_mode_and_update_false_leave_buffers_unchanged(codebook: torch.Tensor) -> None:
    q = _quantizer(codebook, counts=0.1)  # every code below the restart threshold
    z = _grid(torch.randn(8, 3), 2, 2)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()(z)
    q.train()(z, update=False)
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key
    q(z)  # a real training step does change them (the test above is not vacuous)
    assert not torch.equal(q.embedding, before["embedding"])


def test_dead_codes_are_restarted_from_batch_vectors() -> None:
    q = EMAQuantizer(8, 3, decay=0.99, dead_code_threshold=0.5).train()
    q.embedding.copy_(torch.cat([torch.randn(4, 3), torch.full((4, 3), 1e3)]))  # 4..7 unreachable
    q.cluster_size.copy_(torch.tensor([10.0] * 4 + [0.0] * 4))
    q.embed_sum.copy_(q.embedding * q.cluster_size[:, None])
    vectors = torch.randn(16, 3)
    q(_grid(vectors, 4, 2))
    distance_to_batch = torch.cdist(q.embedding, vectors).min(1).values
    assert torch.all(distance_to_batch[4:] < 1e-6)  # restarted codes are batch vectors
    assert torch.allclose(q.cluster_size[4:], torch.ones(4))
    assert torch.all(distance_to_batch[:4] > 1e-3)  # live codes were only moved by the EMA


def test_first_training_step_initialises_codebook_from_batch() -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(16, 4, decay=0.99, dead_code_threshold=0.01).train()
    vectors = 0.01 * torch.randn(64, 4) + 5.0  # far from the N(0, 1) initial codes
    q(_grid(vectors, 4, 4))
    assert torch.cdist(q.embedding, vectors).min(1).values.max() < 0.1


def test_perplexity_and_usage(codebook: torch.Tensor) -> None:
    q = _quantizer(codebook, counts=8.0).eval()
    one_code = q(_grid(codebook[[2] * 8] + 0.1, 2, 2))
    assert one_code.perplexity.item() == pytest.approx(1.0, abs=1e-4)
    assert one_code.usage.item() == pytest.approx(0.25)
    every_code = q(_grid(codebook.repeat(2, 1), 2, 2))
    assert every_code.perplexity.item() == pytest.approx(4.0, rel=1e-4)
    assert every_code.usage.item() == pytest.approx(1.0)
    assert torch.equal(every_code.counts, torch.full((4,), 2.0))


def test_float32_under_bfloat16_autocast() -> None:
    q = EMAQuantizer(16, 4, decay=0.9, dead_code_threshold=0.01).train()
    z = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert out.quantized.dtype == torch.float32
    assert out.commitment.dtype == torch.float32
    assert q.embedding.dtype == torch.float32 and q.cluster_size.dtype == torch.float32


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        EMAQuantizer(8, 4, decay=1.0, dead_code_threshold=0.1)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        EMAQuantizer(8, 4, decay=0.9, dead_code_threshold=-1.0)
    with pytest.raises(ValueError, match="shape"):
        EMAQuantizer(8, 4, decay=0.9, dead_code_threshold=0.1)(torch.randn(2, 3, 4, 4))


# ------------------------------------------------------------------------- torch.distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(q: EMAQuantizer, batches: torch.Tensor) -> dict[str, torch.Tensor]:
    for batch in batches:
        q(batch)
    return q.state_dict()


def _ddp_worker(rank: int, port: int, batches: torch.Tensor, codes: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(123 + rank)  # different RNG streams: restarts must still agree
        restarting = EMAQuantizer(8, 3, decay=0.8, dead_code_threshold=0.5).train()
        torch.distributed.broadcast(restarting.embedding, src=0)  # what DDP does at wrap time
        plain = EMAQuantizer(8, 3, decay=0.8, dead_code_threshold=0.0).train()
        plain.embedding.copy_(codes)
        states = {
            "restarting": _run(restarting, batches[:, rank]),
            "plain": _run(plain, batches[:, rank]),
        }
        torch.save(states, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_replicas_stay_identical(tmp_path) -> None:
    torch.manual_seed(0)
    shift = torch.tensor([0.0, 4.0]).view(1, 2, 1, 1, 1, 1)  # the ranks see different data
    batches = torch.randn(3, 2, 2, 3, 2, 2) + shift  # (step, rank, B, dim, h, w)
    codes = torch.randn(8, 3)
    mp.spawn(_ddp_worker, args=(_free_port(), batches, codes, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for kind in ("restarting", "plain"):
        for key, value in states[0][kind].items():
            assert torch.equal(value, states[1][kind][key]), (kind, key)
    # without restarts, two ranks equal one process that sees the concatenated global batch
    single = EMAQuantizer(8, 3, decay=0.8, dead_code_threshold=0.0).train()
    single.embedding.copy_(codes)
    expected = _run(single, batches.flatten(1, 2))
    for key, value in expected.items():
        assert torch.allclose(states[0]["plain"][key], value, atol=1e-5), key
