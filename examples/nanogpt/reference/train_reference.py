"""PyTorch side of the nanogpt comparison: trains the same GPT (gpt.py) on the same text with the
same recipe as `nanogpt train` (nanoGPT's get_batch windows, AdamW with decay on 2-D weights only,
warmup + cosine, gradient clipping), times each iteration, and reports the validation loss by the
`nanogpt eval` rule (every non-overlapping window of the last 10%, in order).

Run it at PyTorch's best settings on this kind of CPU (Debian's OpenBLAS otherwise picks an SSE3
kernel):
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 \
      examples/nanogpt/reference/train_reference.py --data FILE_OR_DIR [--n-layer 4 ...]
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt import GPT  # noqa: E402


def read_text(path):
    """A file, or every regular file of a directory sorted by name (symlinks and fortune's .dat
    indices skipped), concatenated: the rule of `nanogpt train --data`."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path)
                       if os.path.isfile(os.path.join(path, n)) and not os.path.islink(os.path.join(path, n))
                       and not n.endswith(".dat"))
        return "".join(open(os.path.join(path, n), encoding="utf-8").read() for n in names)
    return open(path, encoding="utf-8").read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    for name, default in [("n-layer", 4), ("n-head", 4), ("n-embd", 128), ("block-size", 64), ("batch-size", 12),
                          ("max-iters", 2000), ("warmup-iters", 100), ("lr-decay-iters", 2000), ("seed", 1337),
                          ("threads", 2)]:
        parser.add_argument("--" + name, type=int, default=default)
    for name, default in [("lr", 1e-3), ("min-lr", 1e-4), ("beta2", 0.99), ("weight-decay", 0.1),
                          ("grad-clip", 1.0), ("dropout", 0.0)]:
        parser.add_argument("--" + name, type=float, default=default)
    parser.add_argument("--timing-only", action="store_true",
                        help="skip the validation loss: only time the iterations (for bench/run)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    text = read_text(args.data)
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)
    train, validation = ids[:cut], ids[cut:]
    config = dict(vocab_size=len(vocab), block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                  n_embd=args.n_embd, dropout=args.dropout, bias=True)
    model = GPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, args.beta2))

    def lr_at(step):
        if step < args.warmup_iters:
            return args.lr * (step + 1) / (args.warmup_iters + 1)
        if step >= args.lr_decay_iters:
            return args.min_lr
        ratio = (step - args.warmup_iters) / (args.lr_decay_iters - args.warmup_iters)
        return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)

    T, B = args.block_size, args.batch_size
    times = []
    for step in range(args.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        start = time.perf_counter()
        offsets = torch.randint(len(train) - T, (B,))
        x = torch.stack([train[i:i + T] for i in offsets])
        y = torch.stack([train[i + 1:i + 1 + T] for i in offsets])
        _, loss = model(x, y)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        if step % 100 == 0:
            print(f"iter {step}: loss {loss.item():.4f}, {times[-1] * 1000:.1f} ms", flush=True)

    times.sort()
    print(f"torch {torch.__version__}: median {times[len(times) // 2] * 1000:.2f} ms/iter over {len(times)} iterations")
    if args.timing_only:
        return
    model.eval()
    windows = (len(validation) - 1) // T
    total = 0.0
    with torch.no_grad():
        for first in range(0, windows, 8):
            chunk = range(first, min(first + 8, windows))
            x = torch.stack([validation[i * T:(i + 1) * T] for i in chunk])
            y = torch.stack([validation[i * T + 1:(i + 1) * T + 1] for i in chunk])
            logits, _ = model(x)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
    print(f"val_loss {total / (windows * T):.6f}")


if __name__ == "__main__":
    main()
