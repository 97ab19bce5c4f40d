#!/usr/bin/env python3
"""Reference timings for the speed comparisons, printed in the same format as our programs.

    python3 scripts/bench_reference.py gemm --threads 1     # numpy (OpenBLAS) sgemm
    python3 scripts/bench_reference.py rows                 # PyTorch CPU softmax / layer_norm / GELU
    python3 scripts/bench_reference.py dual --threads 2     # the tiny ALIGN training step, pairs/s
    python3 scripts/bench_reference.py bert --threads 2 --interleave target/release/examples/bert_bench
                                                            # BERT steps alternated with ours, one by one
    python3 scripts/bench_reference.py gemm --threads 1 --bert-base --torch --interleave target/release/examples/gemm_bench
                                                            # BERT-base's products against torch.matmul (MKL)
    python3 scripts/bench_reference.py gemm-bf16 --threads 2   # torch.matmul on bf16 tensors (oneDNN)
    python3 scripts/bench_reference.py bert --threads 2 --autocast
                                                            # BERT-base forward under autocast bf16
    python3 scripts/bench_reference.py bert --threads 2 --autocast --interleave target/release/examples/bert_bench
                                                            # the same, alternated step by step with ours in bf16
    python3 scripts/bench_reference.py effnet --threads 2 --torchvision --autocast
                                                            # torchvision efficientnet_b0 step, fp32 and bf16
    python3 scripts/bench_reference.py dual --threads 2 --autocast
                                                            # the tiny ALIGN step, fp32 and autocast bf16

PyTorch as fast as it runs here: run these with glibc's allocator tuned, e.g.
MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456
(and report the defaults too).

With `--threads 1` the interleaved comparisons pin both sides to one CPU (`--cpu N`, default
the last): the host's two vCPUs run up to 1.5x apart. Whole programs (conv, rows) are
alternated in rounds with scripts/alternate_runs.py.

Run it in the same sitting as the Rust side (`cargo run --release -p kernels --example
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
    shapes = [(m, k, n, "") for m, k, n in shapes]
    if "--bert-mini" in sys.argv:
        # one BERT-mini layer's linear maps at 32 x 64 tokens, as gemm_bench --bert-mini
        fwd = [(2048, 256, 768), (2048, 256, 256), (2048, 256, 1024), (2048, 1024, 256)]
        shapes = [(m, k, n, "tb") for m, k, n in fwd]
        shapes += [(m, n, k, "") for m, k, n in fwd]
        shapes += [(n, m, k, "ta") for m, k, n in fwd]
    if "--bert-base" in sys.argv:
        # BERT-base's linear maps at 32 x 64 tokens: x (2048 x in) times W^T, W (out x in)
        shapes = [(2048, 768, 768, "tb"), (2048, 768, 3072, "tb"), (2048, 3072, 768, "tb")]
    print(f"# numpy {np.__version__} threads {threads} runs {runs}", file=sys.stderr)
    if "--interleave" in sys.argv:
        # python3 scripts/bench_reference.py gemm --threads 1 --runs 30 --interleave target/release/examples/gemm_bench
        # With --torch the reference is PyTorch's matmul (MKL / oneDNN) instead of numpy's
        # OpenBLAS, on the same float32 operands.
        if "--torch" in sys.argv:
            import torch
            torch.set_num_threads(threads)
            rand, empty, matmul = (lambda r, c: torch.rand(r, c)), (lambda r, c: torch.empty(r, c)), torch.matmul
        else:
            rand = lambda r, c: np.random.rand(r, c).astype(np.float32)  # noqa: E731
            empty, matmul = (lambda r, c: np.empty((r, c), dtype=np.float32)), np.matmul
        cases = {}
        for m, k, n, op in shapes:
            a = rand(k, m).T if op == "ta" else rand(m, k)
            b = rand(n, k).T if op == "tb" else rand(k, n)
            c = empty(m, n)
            cases[f"{m} {k} {n} {op or '-'}"] = (lambda a=a, b=b, c=c: matmul(a, b, out=c))
        ours = [arg("--interleave", None), "--serve", "--threads", str(threads)]
        interleaved(ours, cases, runs, pause=0.3)
        return
    for m, k, n, op in shapes:
        # a transposed operand is a transposed view of a row-major array: BLAS gets the flag
        a = np.random.rand(k, m).astype(np.float32).T if op == "ta" else np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(n, k).astype(np.float32).T if op == "tb" else np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), dtype=np.float32)
        t = median_time(lambda: np.matmul(a, b, out=c), runs)
        label = f" {op}" if op else ""
        print(f"gemm {m} {k} {n}{label} {2 * m * n * k / t / 1e9:.1f}")


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


def interleaved(ours_cmd, cases, runs, pause=0.05):
    """Alternates reference steps with ours, step by step: `ours_cmd` is a program that prints
    "ready", then answers each stdin line (a case name) with one timed step's milliseconds.
    `cases` maps each name to the reference step. Prints, per case, both medians and the
    median of the per-pair ratios (reference time / ours: above 1 means ours is faster). On
    this shared host the speed drifts 2x over seconds; whole-program runs one after the other
    compare different phases, pairs a few hundred ms apart do not."""
    import statistics
    import subprocess

    if ours_cmd[ours_cmd.index("--threads") + 1] == "1":
        # One thread a side: both on the same CPU (this one's affinity is inherited by the
        # child). The two vCPUs of this host are slowed by neighbours independently, a 1.5x
        # difference for minutes at a time, so two single-threaded processes left to the
        # scheduler were often timed on different cores.
        cpu = int(arg("--cpu", max(os.sched_getaffinity(0))))
        os.sched_setaffinity(0, {cpu})
        print(f"# both sides pinned to cpu {cpu}", file=sys.stderr)
    proc = subprocess.Popen(ours_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", "the program did not start its serve loop"

    def ours(name):
        proc.stdin.write(name + "\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    for name, step in cases.items():
        step()  # warm-up, both sides
        ours(name)
        pairs = []
        for _ in range(runs):
            time.sleep(pause)  # let the other side's spinning threads go idle
            t = time.perf_counter()
            step()
            ref = (time.perf_counter() - t) * 1e3
            time.sleep(pause)
            pairs.append((ref, ours(name)))
        refs, outs = [p[0] for p in pairs], [p[1] for p in pairs]
        ratio = statistics.median(r / o for r, o in pairs)
        print(f"{name} reference {statistics.median(refs):.1f} ours {statistics.median(outs):.1f} "
              f"speedup {ratio:.3f} (pairs {runs}, per-pair min {min(r / o for r, o in pairs):.3f} "
              f"max {max(r / o for r, o in pairs):.3f})", flush=True)
    proc.stdin.close()
    proc.wait()


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
    if "--interleave" in sys.argv:
        # python3 scripts/bench_reference.py bert --threads 2 --runs 20 --interleave target/release/examples/bert_bench
        # with --autocast: BERT-base under autocast bf16 against ours with --precision bf16
        base = BertModel(BertConfig(), add_pooling_layer=False).eval()
        autocast = "--autocast" in sys.argv

        def base_step():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                base(input_ids=ids)
        def mini_step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = mini(input_ids=ids).last_hidden_state.float().mean()
            loss.backward()
        ours = [arg("--interleave", None), "--serve", "--threads", str(threads)]
        if autocast:
            ours += ["--precision", "bf16"]
        interleaved(ours, {"mini": mini_step, "base": base_step}, runs)
        return
    base = BertModel(BertConfig(), add_pooling_layer=False).eval()
    if "--autocast" in sys.argv:
        # what a bf16 user runs: the same fp32 model under autocast (bf16 matmuls)
        def base_bf16():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                base(input_ids=ids)
        base_bf16()
        print(f"bert-base fwd autocast-bf16 {median_time(base_bf16, min(runs, 5)) * 1e3:.1f}")
    print(f"bert-mini fwd+bwd {median_time(step, runs) * 1e3:.1f}")
    with torch.no_grad():
        print(f"bert-base fwd {median_time(lambda: base(input_ids=ids), min(runs, 3)) * 1e3:.1f}")


def gemm_bf16(threads, runs):
    """torch.matmul on bf16 tensors (f32 accumulation inside oneDNN), `gemm M K N GFLOPS` lines
    like `gemm_bench --dtype bf16`."""
    import torch

    torch.set_num_threads(threads)
    for m, k, n in [(2048, 768, 3072), (2048, 3072, 768), (2048, 2048, 2048)]:
        a = torch.randn(m, k, dtype=torch.bfloat16)
        b = torch.randn(k, n, dtype=torch.bfloat16)
        torch.matmul(a, b)
        t = median_time(lambda: torch.matmul(a, b), runs)
        print(f"gemm {m} {k} {n} {2 * m * k * n / t / 1e9:.1f}")


def effnet(threads, runs):
    """EfficientNet-B0 training step (forward + backward, batch 16, channels_last, training-mode
    BN), as `cargo run --release -p align --example efficientnet_bench`. `--torchvision` times
    torchvision's own `efficientnet_b0` (what a PyTorch user runs) instead of the
    efficientnet_lite_pytorch port; `--autocast` adds the same step under autocast bf16."""
    import torch

    torch.set_num_threads(threads)
    size = int(arg("--size", "224"))
    if "--torchvision" in sys.argv:
        import torchvision
        model, name = torchvision.models.efficientnet_b0(), "torchvision efficientnet_b0"
    else:
        from efficientnet_lite_pytorch import EfficientNet
        model, name = EfficientNet.from_name("efficientnet-b0"), "effnet-b0"
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(16, 3, size, size).to(memory_format=torch.channels_last)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).mean().backward()
    print(f"{name} {size} fwd+bwd {median_time(step, runs) * 1e3:.1f}")
    if "--autocast" in sys.argv:
        def step_bf16():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().mean()
            loss.backward()
        print(f"{name} {size} fwd+bwd autocast-bf16 {median_time(step_bf16, runs) * 1e3:.1f}")


def bn(threads, runs):
    """Batch norm (training statistics) + SiLU, forward and backward, on the shapes of
    `cargo run --release -p kernels --example bn_bench` (channels_last, as rows x channels)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    for n, hw, c in [(64, 32, 32), (64, 16, 96), (64, 4, 480), (16, 56, 144)]:
        rows = n * hw * hw
        x = torch.randn(n, hw, hw, c).permute(0, 3, 1, 2)  # NCHW view of NHWC (channels_last) data
        x.requires_grad_(True)
        w = torch.ones(c, requires_grad=True)
        b = torch.zeros(c, requires_grad=True)
        dy = torch.randn_like(x)

        def fwd():
            with torch.no_grad():
                F.silu(F.batch_norm(x, None, None, w, b, training=True, eps=1e-3))

        def fwd_bwd():
            F.silu(F.batch_norm(x, None, None, w, b, training=True, eps=1e-3)).backward(dy)
        f = median_time(fwd, runs)
        fb = median_time(fwd_bwd, runs)
        print(f"torch bn_silu rows {rows} c {c}: forward {f * 1e3:.2f} ms, backward {(fb - f) * 1e3:.2f} ms (fwd+bwd {fb * 1e3:.2f})")


def dual(threads, runs):
    """The tiny ALIGN training step in PyTorch: EfficientNet-B0 at 64x64 (stem + blocks, global
    pooling, no head conv: 320-d) + BERT-mini ([CLS] -> Linear 256 -> 320), both L2-normalised,
    symmetric contrastive loss with a learnable temperature and label smoothing 0.1, LAMB
    (weight decay 1e-5; written out below, torch has none), no dropout or drop-connect (the tiny
    recipe). Batch 64, TOKENS tokens per caption (default 24, about what our padded-to-longest
    batches of built-in captions hold). Compare with the pairs/s that `align train --steps 40`
    logs (log.jsonl), run in the same sitting."""
    import torch
    import torch.nn.functional as F
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import BertConfig, BertModel

    torch.set_num_threads(threads)
    channels_last = "--channels-first" not in sys.argv
    batch, tokens = 64, int(arg("--tokens", "24"))
    image = EfficientNet.from_name("efficientnet-b0")
    if channels_last:
        image = image.to(memory_format=torch.channels_last)
    # the tiny recipe trains without dropout and drop-connect (TrainConfig::tiny)
    text = BertModel(BertConfig(vocab_size=230, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=1024, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0), add_pooling_layer=False)
    proj = torch.nn.Linear(256, 320)
    log_t = torch.nn.Parameter(torch.zeros(()))
    # the head conv and classifier are not part of the ALIGN image tower (as in ours)
    head = {id(p) for m in (image._conv_head, image._bn1, image._fc) for p in m.parameters()}
    params = [p for m in (image, text, proj) for p in m.parameters() if id(p) not in head] + [log_t]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    image.train(), text.train()

    def image_features(x):
        x = image._swish(image._bn0(image._conv_stem(x)))
        for idx, block in enumerate(image._blocks):
            x = block(x, drop_connect_rate=0.0)
        return x.mean(dim=(2, 3))

    x = torch.randn(batch, 3, 64, 64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ids = torch.randint(5, 230, (batch, tokens))
    labels = torch.arange(batch)

    def step():
        a = F.normalize(image_features(x), dim=-1)
        b = F.normalize(proj(text(input_ids=ids).last_hidden_state[:, 0]), dim=-1)
        logits = a @ b.t() / log_t.exp()
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.t(), labels, label_smoothing=0.1)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p, (m, v) in zip(params, state):
                if p.grad is None:  # e.g. BERT's unused position rows get zeros, not None
                    continue
                m.mul_(0.9).add_(p.grad, alpha=0.1)
                v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                u = m / (v.sqrt() + 1e-6) + 1e-5 * p
                wn, un = p.norm(), u.norm()
                trust = (wn / un) if wn > 0 and un > 0 else 1.0
                p.sub_(1e-3 * trust * u)
    t = median_time(step, runs)
    layout = "channels-last" if channels_last else "channels-first"
    print(f"pytorch tiny ALIGN step ({layout}, {tokens} tokens): {t * 1e3:.0f} ms, {batch / t:.1f} pairs/s")
    if "--autocast" in sys.argv:
        # the whole step under autocast bf16: it changes the forward's matmuls and convolutions
        # (backward follows their dtypes); the loss and the LAMB update's elementwise ops stay fp32
        forward = step

        def step_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                forward()
        t = median_time(step_bf16, runs)
        print(f"pytorch tiny ALIGN step autocast-bf16 ({layout}, {tokens} tokens): {t * 1e3:.0f} ms, {batch / t:.1f} pairs/s")


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
    {"gemm": gemm, "gemm-bf16": gemm_bf16, "rows": rows, "conv": conv, "bert": bert, "effnet": effnet, "dual": dual, "bn": bn}[what](threads, runs)
