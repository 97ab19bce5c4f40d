#!/usr/bin/env python3
"""Reference timings for the speed comparisons, printed in the same format as our programs.

    python3 scripts/bench_reference.py gemm --threads 1     # numpy (OpenBLAS) sgemm
    python3 scripts/bench_reference.py rows                 # PyTorch CPU softmax / layer_norm / GELU

Run it in the same session as the Rust side (`cargo run --release -p kernels --example
gemm_bench -- --threads 1`, `cargo bench --bench kernels`): the machines are shared and noisy,
so only ratios measured together mean anything. Thread counts are set through the environment
before numpy / torch load.
"""
import os
import sys
import time


def arg(flag, default):
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default


def median_time(f, runs):
    f()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def gemm(threads, runs):
    for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]:
        os.environ[var] = str(threads)
    import numpy as np

    shapes = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 768, 768), (2048, 768, 3072), (2048, 3072, 768)]
    print(f"# numpy {np.__version__} threads {threads} runs {runs}", file=sys.stderr)
    for m, k, n in shapes:
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), dtype=np.float32)
        t = median_time(lambda: np.matmul(a, b, out=c), runs)
        print(f"gemm {m} {k} {n} {2 * m * n * k / t / 1e9:.1f}")


def rows(threads, runs):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    x = torch.randn(256, 16384)
    t = median_time(lambda: torch.softmax(x, dim=-1), runs)
    print(f"softmax 256x16384 fwd {t * 1e3:.3f} ms")
    x = torch.randn(2048, 768)
    w, b = torch.randn(768), torch.randn(768)
    t = median_time(lambda: F.layer_norm(x, (768,), w, b), runs)
    print(f"layer_norm 2048x768 fwd {t * 1e3:.3f} ms")
    x = torch.randn(2048, 3072)
    t = median_time(lambda: F.gelu(x), runs)
    print(f"gelu 2048x3072 fwd {t * 1e3:.3f} ms")


def conv(threads, runs):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cases = [("conv3x3_32to32_112", 16, 112, 32, 32, 3, False), ("dw3x3_c96_56", 16, 56, 96, 96, 3, True),
             ("dw5x5_c96_56", 16, 56, 96, 96, 5, True), ("conv1x1_96to24_56", 16, 56, 96, 24, 1, False)]
    for name, n, h, ci, co, k, depthwise in cases:
        x = torch.randn(n, ci, h, h).to(memory_format=torch.channels_last).requires_grad_(True)
        w = torch.randn(co, 1 if depthwise else ci, k, k).to(memory_format=torch.channels_last).requires_grad_(True)
        groups = ci if depthwise else 1
        fwd = median_time(lambda: F.conv2d(x.detach(), w.detach(), padding=k // 2, groups=groups), runs)

        def step():
            y = F.conv2d(x, w, padding=k // 2, groups=groups)
            y.backward(torch.ones_like(y))
        both = median_time(step, runs)
        print(f"{name} {fwd * 1e3:.2f} {both * 1e3:.2f}")


def bert(threads, runs):
    import torch
    from transformers import BertConfig, BertModel

    torch.set_num_threads(threads)
    b, t = 32, 64
    ids = torch.randint(1000, 21000, (b, t))
    mini = BertModel(BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), add_pooling_layer=False).train()

    def step():
        mini(input_ids=ids).last_hidden_state.mean().backward()
    print(f"bert-mini fwd+bwd {median_time(step, runs) * 1e3:.1f}")
    base = BertModel(BertConfig(), add_pooling_layer=False).eval()
    with torch.no_grad():
        print(f"bert-base fwd {median_time(lambda: base(input_ids=ids), min(runs, 3)) * 1e3:.1f}")


def effnet(threads, runs):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(threads)
    size = int(arg("--size", "224"))
    model = EfficientNet.from_name("efficientnet-b0").to(memory_format=torch.channels_last).train()
    x = torch.randn(16, 3, size, size).to(memory_format=torch.channels_last)

    def step():
        model(x).mean().backward()
    print(f"effnet-b0 {size} fwd+bwd {median_time(step, runs) * 1e3:.1f}")


def tokenize(vocab_dir, path, runs=5):
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(os.path.join(vocab_dir, "vocab.txt"), lowercase=True)
    text = open(path, encoding="utf-8").read()
    lines = text.split("\n")
    t = median_time(lambda: tok.encode_batch(lines), runs)
    n = sum(len(e.ids) for e in tok.encode_batch(lines))
    print(f"hf tokenizers: {len(lines)} lines, {n} tokens, {len(text.encode()) / t / 1e6:.1f} MB/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "tokenize":
        tokenize(sys.argv[2], sys.argv[3])
        sys.exit(0)
    what = sys.argv[1] if len(sys.argv) > 1 else "gemm"
    threads = int(arg("--threads", "1"))
    runs = int(arg("--runs", "7"))
    {"gemm": gemm, "rows": rows, "conv": conv, "bert": bert, "effnet": effnet}[what](threads, runs)
