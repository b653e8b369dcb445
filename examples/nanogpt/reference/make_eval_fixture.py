"""Writes the fixture that proves veil's nanogpt loads a PyTorch GPT and computes the same loss:
a random-weight GPT of nanoGPT's architecture as safetensors (nanoGPT state-dict names, tied
lm_head.weight included as PyTorch saves it), a small text, and PyTorch's validation loss (the
`nanogpt eval` definition) and next-token logits. Run with /usr/bin/python3 (Debian python3-torch):
    /usr/bin/python3 examples/nanogpt/reference/make_eval_fixture.py examples/nanogpt/tests/fixtures
"""
import json
import os
import random
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt import GPT, save_safetensors  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(1234)
random.seed(1234)

# A deterministic text with punctuation, capitals, newlines and a few non-ASCII characters.
words = ("the cat sat on a mat while quiet rivers ran past old towns and bright lamps glowed "
         "over roads where people walked slowly home after work talking about weather music "
         "bread coffee books trains café naïve señor").split()
lines = []
for _ in range(220):
    sentence = " ".join(random.choice(words) for _ in range(random.randint(4, 11)))
    lines.append(sentence[0].upper() + sentence[1:] + random.choice([".", "!", "?", ","]))
text = "\n".join(lines) + "\n"
with open(os.path.join(out, "tiny.txt"), "w", encoding="utf-8") as f:
    f.write(text)

vocab = sorted(set(text))
stoi = {c: i for i, c in enumerate(vocab)}
ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
config = dict(vocab_size=len(vocab), block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
model = GPT(config).eval()

state = model.state_dict()  # holds transformer.wte.weight and lm_head.weight (tied, saved twice)
save_safetensors(os.path.join(out, "gpt_tiny.safetensors"), state,
                 {"vocab": "".join(vocab), "config": json.dumps(config)})

# A checkpoint of another architecture: its config says 3 layers, its tensors hold 2.
save_safetensors(os.path.join(out, "other_architecture.safetensors"), state,
                 {"vocab": "".join(vocab), "config": json.dumps(dict(config, n_layer=3))})

T = config["block_size"]
validation = ids[int(len(ids) * 0.9):]
windows = (len(validation) - 1) // T
inputs = torch.stack([validation[i * T:(i + 1) * T] for i in range(windows)])
targets = torch.stack([validation[i * T + 1:(i + 1) * T + 1] for i in range(windows)])
with torch.no_grad():
    logits, loss = model(inputs, targets)
    prompt = ids[:T].unsqueeze(0)
    next_logits = model(prompt)[0][0, -1]

with open(os.path.join(out, "gpt_tiny_expected.json"), "w") as f:
    json.dump({"generated_by": "examples/nanogpt/reference/make_eval_fixture.py, torch " + torch.__version__,
               "val_loss": loss.item(), "windows": windows, "prompt_length": T,
               "next_token_logits": next_logits.tolist()}, f, indent=1)
print("val_loss", loss.item(), "windows", windows)
