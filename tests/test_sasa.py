"""SASA's layer and attention stem against independent, deliberately naive float64 loops,
their counts against the exact models, and bad input through the CLI.

The references below are written from the definitions (SASA, Ramachandran et al. 2019,
eq. 3 and sec. 3.2; /work/shared/reference/operators.md sec. 3), not from the modules'
code: plain Python loops over batch, pixel, head, window position and channel on Python
floats (IEEE float64), with the masking spelled out. Only the weights and the input are
taken from the modules.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lrprof.build.ops import get_op, resolve_spec
from lrprof.build.ops import sasa as sasa_op
from lrprof.build.ops import sasa_stem as stem_op
from lrprof.build.ops.registry import spec_label
from lrprof.build.ops.sasa import SelfAttention2d
from lrprof.build.ops.sasa_stem import AttentionStem2d
from lrprof.cli import main
from lrprof.measure import counting
from lrprof.spec.layer import LayerSpec

TOL64 = 1e-10
TOL32 = 1e-5


# --------------------------------------------------------------------------- references


def _mat(conv_weight: torch.Tensor) -> list[list[float]]:
    return conv_weight.detach().to(torch.float64)[:, :, 0, 0].tolist()


def _softmax_sum(entries: list[tuple[float, list[float]]]) -> list[float]:
    """sum_e softmax(logit_e) * value_e over (logit, value vector) entries."""
    top = max(logit for logit, _ in entries)
    exps = [math.exp(logit - top) for logit, _ in entries]
    total = sum(exps)
    width = len(entries[0][1])
    return [sum(w * v[e] for w, (_, v) in zip(exps, entries, strict=True)) / total for e in range(width)]


def naive_sasa(layer: SelfAttention2d, x: torch.Tensor, *, zero_pad: bool = False,
               rel_on_values: bool = False, scale: float = 1.0) -> torch.Tensor:
    """y_ij = sum_ab softmax_ab(q_ij . k_ab + q_ij . r_(a-i,b-j)) v_ab per head, then a 2x2
    average pool for stride 2. Variants build known mistakes: `zero_pad` takes outside
    pixels as zero keys and values, `rel_on_values` adds r to the values instead of the
    logits, `scale` multiplies the logits (1/sqrt(d) in most transformers)."""
    xs = x.detach().to(torch.float64).tolist()
    wq, wk, wv = _mat(layer.query.weight), _mat(layer.key.weight), _mat(layer.value.weight)
    rows = layer.rel_rows.detach().to(torch.float64).tolist()
    cols = layer.rel_cols.detach().to(torch.float64).tolist()
    bsz, chans, height, width = x.shape
    heads = layer.heads
    d, r = chans // heads, layer.kernel_size // 2

    def project(w, b, i, j):
        return [sum(w[o][c] * xs[b][c][i][j] for c in range(chans)) for o in range(chans)]

    def rel(di, dj):  # r_(di, dj): row embedding then column embedding, d wide
        return rows[di + r] + cols[dj + r]

    y = [[[[0.0] * width for _ in range(height)] for _ in range(chans)] for _ in range(bsz)]
    for b in range(bsz):
        keys = {(i, j): project(wk, b, i, j) for i in range(height) for j in range(width)}
        vals = {(i, j): project(wv, b, i, j) for i in range(height) for j in range(width)}
        for i in range(height):
            for j in range(width):
                q = project(wq, b, i, j)
                for n in range(heads):
                    lo = n * d
                    entries = []
                    for di in range(-r, r + 1):
                        for dj in range(-r, r + 1):
                            a, c = i + di, j + dj
                            if 0 <= a < height and 0 <= c < width:
                                kv, vv = keys[a, c][lo:lo + d], vals[a, c][lo:lo + d]
                            elif zero_pad:
                                kv, vv = [0.0] * d, [0.0] * d
                            else:
                                continue  # masked out of the softmax
                            emb = rel(di, dj)
                            if rel_on_values:
                                logit = sum(q[lo + e] * kv[e] for e in range(d))
                                vv = [vv[e] + emb[e] for e in range(d)]
                            else:
                                logit = sum(q[lo + e] * (kv[e] + emb[e]) for e in range(d))
                            entries.append((logit * scale, vv))
                    out = _softmax_sum(entries)
                    for e in range(d):
                        y[b][lo + e][i][j] = out[e]
    result = torch.tensor(y, dtype=torch.float64)
    if layer.stride == 1:
        return result
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    pooled = torch.zeros(bsz, chans, out_h, out_w, dtype=torch.float64)
    for b, c, i, j in itertools.product(range(bsz), range(chans), range(out_h), range(out_w)):
        cells = [y[b][c][a][e] for a in (2 * i, 2 * i + 1) for e in (2 * j, 2 * j + 1)
                 if a < height and e < width]  # the pixels that exist at an odd edge
        pooled[b, c, i, j] = sum(cells) / len(cells)
    return pooled


def naive_stem(stem: AttentionStem2d, x: torch.Tensor) -> torch.Tensor:
    """Attention inside each b x b block; v = (sum_m p(a,c,m) W_V[m]) x with
    p = softmax_m((row_emb[a] + col_emb[c]) . nu[m]) at the pixel's in-block position."""
    xs = x.detach().to(torch.float64).tolist()
    wq, wk = _mat(stem.query.weight), _mat(stem.key.weight)
    wv = stem.value_weight.detach().to(torch.float64).tolist()  # [m][o][c]
    pos_rows = stem.pos_rows.detach().to(torch.float64).tolist()
    pos_cols = stem.pos_cols.detach().to(torch.float64).tolist()
    nu = stem.mixture_emb.detach().to(torch.float64).tolist()
    rows = stem.rel_rows.detach().to(torch.float64).tolist()
    cols = stem.rel_cols.detach().to(torch.float64).tolist()
    bsz, cin, height, width = x.shape
    c_out, blk, heads, mix = stem.channels, stem.block, stem.heads, stem.mixtures
    d = c_out // heads

    p = {}
    for a in range(blk):
        for c in range(blk):
            scores = [sum((pos_rows[a][e] + pos_cols[c][e]) * nu[m][e] for e in range(c_out))
                      for m in range(mix)]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            p[a, c] = [v / sum(exps) for v in exps]

    y = torch.zeros(bsz, c_out, height, width, dtype=torch.float64)
    for b in range(bsz):
        def pix(i, j, b=b):
            return [xs[b][c][i][j] for c in range(cin)]

        q = {(i, j): [sum(wq[o][c] * pix(i, j)[c] for c in range(cin)) for o in range(c_out)]
             for i in range(height) for j in range(width)}
        key = {(i, j): [sum(wk[o][c] * pix(i, j)[c] for c in range(cin)) for o in range(c_out)]
               for i in range(height) for j in range(width)}
        val = {}
        for i in range(height):
            for j in range(width):
                mixw = p[i % blk, j % blk]
                val[i, j] = [sum(mixw[m] * sum(wv[m][o][c] * pix(i, j)[c] for c in range(cin))
                                 for m in range(mix)) for o in range(c_out)]
        for i in range(height):
            for j in range(width):
                top, left = i - i % blk, j - j % blk
                members = [(a, c) for a in range(top, top + blk) for c in range(left, left + blk)
                           if a < height and c < width]  # pixels past the image are no keys
                for n in range(heads):
                    lo = n * d
                    entries = []
                    for a, c in members:
                        emb = rows[a % blk - i % blk + blk - 1] + cols[c % blk - j % blk + blk - 1]
                        logit = sum(q[i, j][lo + e] * (key[a, c][lo + e] + emb[e]) for e in range(d))
                        entries.append((logit, val[a, c][lo:lo + d]))
                    out = _softmax_sum(entries)
                    for e in range(d):
                        y[b, lo + e, i, j] = out[e]
    return y


# --------------------------------------------------------------------------- helpers


def randomised(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Float64, every parameter drawn from N(0, scale^2): embeddings as large as weights."""
    module = module.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * scale)
    return module.eval()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    assert scale > 0, "reference output is all zeros: the comparison would be vacuous"
    return (got.to(torch.float64) - ref).abs().max().item() / scale


# --------------------------------------------------------------------------- SASA layer

CASES = [
    # (B, C, H, W, k, heads, stride)
    (1, 8, 5, 5, 3, 2, 1),    # borders on every side
    (2, 8, 6, 7, 5, 4, 1),    # several heads, non-square, batch
    (1, 8, 5, 7, 3, 1, 2),    # one head, stride 2 with odd sizes
    (1, 12, 6, 6, 5, 3, 2),   # stride 2, even sizes
    (1, 8, 3, 4, 9, 2, 1),    # k larger than the image: every window masked in part
    (1, 4, 1, 1, 3, 2, 2),    # one pixel, stride 2
    (1, 16, 4, 4, 1, 8, 1),   # k = 1: attention to oneself only
]


@pytest.mark.parametrize("method", ["shift", "unfold"])
@pytest.mark.parametrize("rel_logits", ["factored", "per-position"])
@pytest.mark.parametrize("b,c,h,w,k,heads,s", CASES)
def test_layer_matches_the_naive_loops(b, c, h, w, k, heads, s, rel_logits, method):
    seed = hash((b, c, h, w, k, heads, s)) % 2**31
    layer = randomised(SelfAttention2d(c, k, heads, s, rel_logits, method), seed)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
    ref = naive_sasa(layer, x)
    assert got.shape == ref.shape == (b, c, -(-h // s), -(-w // s))
    assert rel_err(got, ref) < TOL64
    with torch.no_grad():  # float32: same weights, rounding only
        got32 = layer.float()(x.float())
    assert rel_err(got32, ref) < TOL32


@pytest.mark.parametrize("method", ["shift", "unfold"])
@pytest.mark.parametrize("variant", [{"zero_pad": True}, {"rel_on_values": True}, {"scale": 0.5}])
def test_known_mistakes_are_told_apart(variant, method):
    """The check can fail: zero-padded keys, embeddings on the values, or scaled logits
    (1/sqrt(d) with d = 4) each give another output than the layer's."""
    layer = randomised(SelfAttention2d(8, 3, 2, 1, method=method), seed=7)
    x = torch.randn(1, 8, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
    assert rel_err(got, naive_sasa(layer, x)) < TOL64
    assert rel_err(got, naive_sasa(layer, x, **variant)) > 1e-3


def test_heads_attend_apart():
    """Changing one head's keys changes that head's output channels only."""
    layer = randomised(SelfAttention2d(8, 3, 2, 1), seed=3)
    x = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.key.weight[4:] += 1.0  # head 1's key rows
        after = layer(x)
    assert torch.equal(before[:, :4], after[:, :4])
    assert (before[:, 4:] - after[:, 4:]).abs().max() > 1e-3


# --------------------------------------------------------------------------- the stem

STEM_CASES = [
    # (B, C_in, C, H, W, block, heads, mixtures)
    (1, 3, 8, 8, 8, 4, 2, 3),    # whole blocks
    (2, 3, 8, 6, 7, 4, 1, 2),    # padded to 8x8: the padding is masked and cropped
    (1, 2, 12, 5, 6, 3, 3, 1),   # one mixture, padded rows
    (1, 3, 4, 3, 3, 4, 2, 2),    # one block larger than the image
]


@pytest.mark.parametrize("values", ["mixed", "per-mixture"])
@pytest.mark.parametrize("rel_logits", ["factored", "per-position"])
@pytest.mark.parametrize("b,cin,c,h,w,blk,heads,mix", STEM_CASES)
def test_stem_matches_the_naive_loops(b, cin, c, h, w, blk, heads, mix, rel_logits, values):
    seed = hash((b, cin, c, h, w, blk, heads, mix)) % 2**31
    stem = randomised(AttentionStem2d(cin, c, blk, heads, mix, rel_logits, values), seed)
    x = torch.randn(b, cin, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        got = stem(x)
    ref = naive_stem(stem, x)
    assert got.shape == ref.shape == (b, c, h, w)
    assert rel_err(got, ref) < TOL64


# --------------------------------------------------------------------------- counts

COUNT_GRID = [
    # (B, C, H, W, k, heads, stride)
    *[(1, 16, 9, 9, k, heads, s) for k, heads, s in itertools.product((1, 3, 7), (1, 4, 8), (1, 2))],
    (2, 24, 7, 11, 5, 3, 2),   # odd sizes, batch, head width 8
    (1, 32, 4, 4, 9, 8, 1),    # window larger than the image
    (1, 64, 14, 14, 7, 8, 2),  # a SASA-ResNet res4-like shape
]


@pytest.mark.parametrize("method", ["shift", "unfold"])
@pytest.mark.parametrize("rel_logits", ["factored", "per-position"])
@pytest.mark.parametrize("b,c,h,w,k,heads,s", COUNT_GRID)
def test_layer_counted_equals_exact(b, c, h, w, k, heads, s, rel_logits, method):
    layer = SelfAttention2d(c, k, heads, s, rel_logits, method).eval()
    counted = counting.count(layer, torch.randn(b, c, h, w))
    model = sasa_op.cost_of(c, h, w, k, heads, s, b, rel_logits)
    assert counted.uncounted == {} and counted.opaque == ()
    assert counted.macs == model.macs
    assert counted.softmax_exps == model.softmax_exps == b * heads * k * k * h * w
    assert sum(p.numel() for p in layer.parameters()) == model.params == 3 * c * c + k * (c // heads)


@pytest.mark.parametrize("rel_logits,values", list(itertools.product(["factored", "per-position"],
                                                                     ["mixed", "per-mixture"])))
@pytest.mark.parametrize("b,cin,c,h,w,blk,heads,mix", [(1, 3, 64, 16, 16, 4, 8, 4),
                                                        (2, 3, 16, 9, 7, 4, 2, 3),
                                                        (1, 5, 8, 6, 6, 2, 4, 1)])
def test_stem_counted_equals_exact(b, cin, c, h, w, blk, heads, mix, rel_logits, values):
    stem = AttentionStem2d(cin, c, blk, heads, mix, rel_logits, values).eval()
    counted = counting.count(stem, torch.randn(b, cin, h, w))
    model = stem_op.cost_of(cin, h, w, c, blk, heads, mix, b, rel_logits, values)
    assert counted.uncounted == {} and counted.opaque == ()
    assert counted.macs == model.macs
    assert counted.softmax_exps == model.softmax_exps
    assert sum(p.numel() for p in stem.parameters()) == model.params


def test_layer_terms_by_hand():
    """C = 128, 56x56, k = 7, 8 heads: each term from the definition, by hand."""
    model = sasa_op.cost_of(128, 56, 56, 7, 8)
    hw = 56 * 56
    assert model.term("query 1x1").macs == model.term("value 1x1").macs == 128 * 128 * hw == 51_380_224
    assert model.term("logits q.k").macs == model.term("weighted sum of values").macs == 19_668_992
    assert model.term("relative logits q.r").macs == 128 * 7 * hw == 2_809_856
    assert model.macs == 3 * 51_380_224 + 2 * 19_668_992 + 2_809_856 == 196_288_512
    assert model.softmax_exps == 8 * 49 * hw
    assert model.params == 3 * 128 * 128 + 7 * 16
    per_position = sasa_op.cost_of(128, 56, 56, 7, 8, rel_logits="per-position")
    assert per_position.macs - model.macs == 128 * (49 - 7) * hw
    strided = sasa_op.cost_of(128, 56, 56, 7, 8, stride=2)
    assert strided.macs == model.macs  # the attention runs at 56x56; the pool adds none


@pytest.mark.parametrize("c,k,heads,rel_logits", [(c, k, 8, r) for c in (16, 64, 512) for k in (1, 3, 7, 11)
                                                   for r in ("factored", "per-position")])
def test_published_model_bounds_the_count(c, k, heads, rel_logits):
    """counted / (3*C^2 + 2*C*k^2) per pixel = 1 + C*k (or C*k^2) / (3*C^2 + 2*C*k^2)."""
    model = sasa_op.cost_of(c, 10, 10, k, heads, rel_logits=rel_logits)
    ratio = model.macs / model.paper_macs
    extra = (k if rel_logits == "factored" else k * k) / (3 * c + 2 * k * k)
    assert ratio == pytest.approx(1 + extra)
    low, high = model.paper_band
    assert low <= ratio <= high


# --------------------------------------------------------------------------- the CLI


def _layer(*args: str) -> list[str]:
    return ["layer", "--no-stock", "--device", "cpu", "--size", "8", "--min-runs", "2",
            "--min-time", "0.01", *args]


BAD = [
    (["--op", "sasa", "--heads", "3", "--channels", "64"], "--heads", "1, 2, 4, 8, 16, 32"),
    (["--op", "sasa", "--heads", "8", "--channels", "24"], "--heads", "even width"),
    (["--op", "sasa", "--heads", "0"], "--heads", ">= 1"),
    (["--op", "sasa", "--m", "4"], "--m", "not a parameter of op sasa"),
    (["--op", "sasa", "--k", "4"], "--k", "odd"),
    (["--op", "sasa", "--stride", "3"], "--stride", "one of 1, 2"),
    (["--op", "sasa", "--rel-logits", "full"], "--rel-logits", "factored, per-position"),
    (["--op", "sasa-stem", "--channels", "3", "--out-channels", "64", "--heads", "5"], "--heads",
     "out_channels (64)"),
    (["--op", "sasa-stem", "--channels", "3", "--values", "all"], "--values", "mixed, per-mixture"),
    (["--op", "sasa-stem", "--channels", "3", "--k", "3"], "--k", "not a parameter of op sasa-stem"),
]


@pytest.mark.parametrize("args,flag,allowed", BAD, ids=[" ".join(a[1:]) for a, _, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, flag, allowed, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(_layer(*args, "--out", str(out)))
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert flag in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_layer_command_profiles_sasa_rows(tmp_path, capsys):
    """Both implementations and both relative-logit formulations, stride 2: counted ==
    exact, parameters == model and the output == the float64 reference, for each row."""
    import json

    out = tmp_path / "out"
    rc = main(_layer("--op", "sasa", "--impl", "all", "--channels", "16", "--k", "3", "--heads", "4",
                     "--stride", "2", "--rel-logits", "factored,per-position", "--out", str(out)))
    capsys.readouterr()
    assert rc == 0
    records = [r for r in json.loads((out / "layer.json").read_text())["records"]
               if r["config"]["op"] == "sasa"]
    assert len(records) == 4 and {r["config"]["impl"] for r in records} == {"shift", "unfold"}
    for r in records:
        assert r["checks"]["verdict"] == "ok", r["checks"]
        assert r["counted"]["fwd_MACs"] == r["model"]["exact_MACs"]
        assert r["checks"]["output_ok"] is True


def test_schema_resolves_the_defaults():
    spec = resolve_spec(LayerSpec(op="sasa", channels=64, height=8, width=8))
    assert dict(spec.params) == {"k": 7, "heads": 8, "stride": 1, "rel_logits": "factored"}
    assert spec_label(spec).startswith("sasa[shift] k=7 heads=8 s=1 C=64")
    assert get_op("sasa").reference_impl == "unfold"
    stem = resolve_spec(LayerSpec(op="sasa-stem", channels=3, height=8, width=8))
    assert dict(stem.params)["out_channels"] == 64
    assert get_op("sasa").schema.get("stride").choices == (1, 2)
