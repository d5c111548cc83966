"""Grow a nanoGPT-style model inside your own training loop with `msgc.Growth`.

    python examples/grow_in_your_loop.py

The loop is plain PyTorch (AdamW, a cosine LambdaLR, byte-level Shakespeare). msgc adds
`msgc.Growth(...)` before it and `growth.step(step)` at the top of each step, which grows,
ramps and folds the model on the schedule and returns the model and optimizer to use.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import msgc
from msgc.train.corpus import load_corpus

STAGES = ({"step": 60, "hidden": 96, "heads": 6}, {"step": 120, "ffn": 512, "layers": 3})


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, block_size: int, d: int = 64, n_head: int = 4, n_layer: int = 2) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, d), nn.Embedding(block_size, d)  # bytes
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, 256, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, 256)


@torch.no_grad()
def eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = F.cross_entropy(model.eval()(x).flatten(0, 1), y.flatten())
    model.train()
    return loss.item()


def main(steps: int = 200, stages: Sequence[dict] = STAGES, ramp_steps: int = 30,
         batch_size: int = 16, block_size: int = 64, lr: float = 3e-3, log_every: int = 20
         ) -> dict:
    """Train; the losses, the final model, and each growth and fold with the loss on that
    step's batch just before and just after it (eval mode)."""
    torch.manual_seed(0)
    data = torch.frombuffer(bytearray(load_corpus("shakespeare")["train"].encode()),
                            dtype=torch.uint8).long()

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - block_size - 1, (batch_size,)).tolist()
        x = torch.stack([data[i:i + block_size] for i in ix])
        return x, torch.stack([data[i + 1:i + 1 + block_size] for i in ix])

    model = GPT(block_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and norm weights
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1, (s + 1) / warmup)
                                                  * 0.5 * (1 + math.cos(math.pi * s / steps)))
    growth = msgc.Growth(stages, model, optimizer, example_inputs=(get_batch()[0],),
                         ramp_steps=ramp_steps, lr_scheduler=scheduler)
    losses, events = [], []
    for step in range(steps):
        x, y = get_batch()
        previous = model
        model, optimizer = growth.step(step)
        if model is not previous:  # grown or folded: the function must be the same
            event = {**growth.events[-1], "before": eval_loss(previous, x, y),
                     "after": eval_loss(model, x, y)}
            events.append(event)
            print(f"step {step:4d}  {event['event']} {event.get('sizes', '')}  "
                  f"loss {event['before']:.6f} -> {event['after']:.6f}")
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.2e}")
    return {"losses": losses, "events": events, "model": model}


if __name__ == "__main__":
    main()
