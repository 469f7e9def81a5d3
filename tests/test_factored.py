"""FactoredMatrix against the dense product, and the attention circuits (``QK``, ``OV``) against what the
tiny checkpoint's attention layer computes (its cached scores and output)."""

import pytest
import torch

import nemo_explore as ne
from nemo_explore import FactoredMatrix

TEXT = "The little cat sat on the mat. The little cat sat on the mat."


def factors(lead=(3,), m=6, k=2, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*lead, m, k, generator=g, dtype=torch.float64),
            torch.randn(*lead, k, n, generator=g, dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("m, k, n", [(6, 2, 6), (5, 3, 7), (4, 6, 5)])
def test_factored_matrix_equals_the_dense_product(m, k, n):
    A, B = factors(m=m, k=k, n=n)
    fm, dense = FactoredMatrix(A, B), A @ B
    assert fm.shape == dense.shape and fm.ndim == 3 and fm.inner == k and len(fm) == 3
    torch.testing.assert_close(fm.AB, dense)
    torch.testing.assert_close(fm.T.AB, dense.mT)
    U, S, Vh = fm.svd()
    r = min(m, k, n)
    assert U.shape == (3, m, r) and S.shape == (3, r) and Vh.shape == (3, r, n)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh, dense)
    torch.testing.assert_close(S, torch.linalg.svdvals(dense)[..., :r])
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    torch.testing.assert_close(fm.get_corner(2), dense[..., :2, :2])
    other = torch.randn(n, 4, dtype=torch.float64)
    torch.testing.assert_close((fm @ other).AB, dense @ other)
    left = torch.randn(4, m, dtype=torch.float64)
    torch.testing.assert_close((left @ fm).AB, left @ dense)
    A2, B2 = factors(m=n, k=2, n=3, seed=1)
    torch.testing.assert_close((fm @ FactoredMatrix(A2, B2)).AB, dense @ (A2 @ B2))
    torch.testing.assert_close(fm[1].AB, dense[1])


def test_eigenvalues_are_the_products_nonzero_ones():
    A, B = factors(m=6, k=2, n=6)
    fm = FactoredMatrix(A, B)
    torch.testing.assert_close(fm.BA, B @ A)
    dense = torch.linalg.eigvals(A @ B)  # (3, 6): 4 zeros and the 2 of B @ A
    for got, full in zip(fm.eigenvalues, dense, strict=True):
        top = full[full.abs().argsort(descending=True)[:2]]
        assert torch.allclose(torch.sort(got.real).values, torch.sort(top.real).values)
        assert torch.allclose(torch.sort(got.imag).values, torch.sort(top.imag).values, atol=1e-9)


def test_bad_shapes_and_indices_are_clear():
    A, B = factors()
    with pytest.raises(ValueError, match=r"A \(\.\.\., m, k\) and B \(\.\.\., k, n\)"):
        FactoredMatrix(A, B.mT)
    with pytest.raises(IndexError, match="leading axes only"):
        FactoredMatrix(A, B)[0, 1]
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(*factors(m=4, n=5)).BA


@pytest.fixture(scope="module")
def tiny():
    model = ne.load("tiny")
    layer = model.layers("attention")[0]
    names = [f"blocks.{layer}.hook_mixer_in", f"blocks.{layer}.attn.hook_attn_scores",
             f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.hook_mixer_out"]  # fmt: skip
    with torch.no_grad():
        _, cache = model.run_with_cache(TEXT, names_filter=names)
    return model, layer, [cache[n][0] for n in names]


def test_qk_circuit_gives_the_attention_scores(tiny):
    model, layer, (x, scores, _, _) = tiny
    qk = model.QK[layer]
    assert isinstance(qk, FactoredMatrix)
    assert qk.shape == (model.cfg.n_heads, model.cfg.d_model, model.cfg.d_model)
    # from HF's projections directly: head h's query rows, and the rows of the KV head it reads
    attn, d = model.hf_model.model.layers[layer].mixer, model.cfg.d_head
    rep = model.cfg.n_heads // model.config.num_key_value_heads
    for h in range(model.cfg.n_heads):
        w_q = attn.q_proj.weight[h * d : (h + 1) * d]
        w_k = attn.k_proj.weight[(h // rep) * d : (h // rep + 1) * d]
        torch.testing.assert_close(model.QK[layer, h].AB, w_q.T @ w_k)
    by_circuit = torch.einsum("qd,hde,ke->hqk", x, qk.AB, x) / d**0.5  # p tokens, h heads
    causal = torch.ones(x.shape[0], x.shape[0], dtype=torch.bool).tril()
    torch.testing.assert_close(by_circuit[:, causal], scores[:, causal], rtol=1e-4, atol=1e-4)


def test_ov_circuit_gives_the_attention_output(tiny):
    model, layer, (x, _, pattern, out) = tiny
    ov = model.blocks[layer].attn.OV
    by_circuit = torch.einsum("hqk,kd,hde->qe", pattern, x, ov.AB)
    torch.testing.assert_close(by_circuit, out, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ov.norm(), torch.linalg.matrix_norm(ov.AB), rtol=1e-4)


def test_circuits_of_other_blocks_say_which_blocks_have_them(tiny):
    model, layer, _ = tiny
    mamba = model.layers("mamba")[0]
    with pytest.raises(KeyError, match=f"attention blocks are \\[{layer}"):
        model.OV[mamba]


@pytest.mark.parametrize(("m", "k", "n"), [(6, 2, 6), (5, 3, 4), (3, 5, 4)])
def test_transformer_lens_names_of_a_factored_matrix(m, k, n):
    """TL's ldim / rdim / mdim, U / S / Vh, collapse_l / collapse_r, unsqueeze and pair, against the
    dense product."""
    A, B = factors(m=m, k=k, n=n)
    fm = FactoredMatrix(A, B)
    dense = (A @ B).double()
    assert (fm.ldim, fm.mdim, fm.rdim) == (m, k, n)
    U, S, Vh = fm.U.double(), fm.S.double(), fm.Vh.double()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh, dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(U @ fm.collapse_l().double(), dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fm.collapse_r().double() @ Vh, dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(dense)[..., : S.shape[-1]], S, rtol=1e-4, atol=1e-5)
    up = fm.unsqueeze(0)
    assert up.shape == (1, *fm.shape)
    torch.testing.assert_close(up.AB[0], fm.AB)
    assert fm.unsqueeze(1).shape == (3, 1, m, n)
    with pytest.raises(IndexError, match="leading axes"):
        fm.unsqueeze(3)
    a, b = fm.pair
    assert a is fm.A and b is fm.B


def test_utils_get_corner_and_get_device():
    t = torch.arange(5 * 6 * 7).view(5, 6, 7)
    assert torch.equal(ne.utils.get_corner(t, 2), t[:2, :2, :2])
    A, B = factors(lead=(), m=6, k=2, n=6)
    torch.testing.assert_close(ne.utils.get_corner(FactoredMatrix(A, B), 3), (A @ B)[:3, :3])
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ne.utils.get_device().type == expected


def test_embed_and_unembed_as_transformer_lens_names_them():
    model = ne.load("tiny")
    assert model.embed.W_E is model.W_E or torch.equal(model.embed.W_E, model.W_E)
    assert torch.equal(model.unembed.W_U, model.W_U) and torch.equal(model.unembed.b_U, model.b_U)
    logits, cache = model.run_with_cache("The cat sat", names_filter="ln_final.hook_normalized")
    direct = cache["ln_final.hook_normalized"] @ model.unembed.W_U + model.unembed.b_U
    torch.testing.assert_close(direct, logits, rtol=1e-5, atol=1e-5)
