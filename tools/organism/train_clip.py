"""Train the model organism's CLIP: a tiny transformers CLIPModel, contrastively, on the world's frames
and captions, so that the scorer's CLIP scores mean something on the world.

    python tools/organism/train_clip.py --out OUT [--steps 1500] [--smoke]

OUT is a folder the scorer loads (`--evaluate-model OUT`): the weights, the tokenizer (the project's
tiny CLIP tokenizer) and an OpenAI-style preprocessor config. Each step draws a fresh batch of world
clips, takes a random frame of each and its caption, and minimises CLIP's symmetric contrastive loss
(`CLIPModel(return_loss=True)`: every other caption in the batch is a negative). Frames and captions are
prepared exactly as `scores.Scorer` prepares them (frames at the model's image size, /255, OpenAI mean
and std; captions padded to the text model's length). Printed at the end: held-out retrieval accuracy
(each frame's caption among the batch's) for the trained model and for its random start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from anyv2v_batch.world import make_clip  # noqa: E402

SIZE = 32
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
HELD_OUT = 10**9


def draw(seed: int, count: int) -> tuple[np.ndarray, list[str]]:
    """A random frame of each of `count` fresh clips, and the clips' captions."""
    rng = np.random.default_rng(seed)
    clips = [make_clip(seed * 1000 + i, frames=8, width=SIZE, height=SIZE) for i in range(count)]
    frames = np.stack([c.frames[int(rng.integers(0, 8))] for c in clips])
    return frames, [c.caption for c in clips]


def pixels(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def tokens(tokenizer, captions: list[str], length: int) -> dict[str, torch.Tensor]:
    out = tokenizer(captions, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return {"input_ids": out.input_ids, "attention_mask": out.attention_mask}


@torch.no_grad()
def retrieval(model, tokenizer, batches: int = 8, count: int = 32) -> float:
    """Held-out top-1 accuracy: each frame's own caption scores highest among `count` captions."""
    model.eval()
    hits = 0
    for b in range(batches):
        frames, captions = draw(HELD_OUT + b, count)
        out = model(
            pixel_values=pixels(frames), **tokens(tokenizer, captions, model.config.text_config.max_position_embeddings)
        )
        # captions can repeat in a batch ("a red disc moves right" twice): any identical caption is a hit
        best = out.logits_per_image.argmax(dim=1).tolist()
        hits += sum(captions[j] == captions[i] for i, j in enumerate(best))
    model.train()
    return hits / (batches * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None, help="a CLIP tokenizer folder to start from")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.batch = 3, 8
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    start = (
        args.tokenizer or HERE.parents[2] / "shared" / "fixtures" / "anyv2v-reference" / "tiny-i2vgen-xl" / "tokenizer"
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(start))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=SIZE, patch_size=4, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=3, num_attention_heads=4),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    before = retrieval(model, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    length = config.text_config.max_position_embeddings
    started = time.perf_counter()
    for step in range(args.steps):
        frames, captions = draw(step, args.batch)
        loss = model(pixel_values=pixels(frames), **tokens(tokenizer, captions, length), return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"clip {step}: {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    after = retrieval(model, tokenizer)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": MEAN, "image_std": STD,
        "size": {"shortest_edge": SIZE}, "crop_size": {"height": SIZE, "width": SIZE},
    }, indent=1))  # fmt: skip
    (out / "training.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "final_loss": round(loss.item(), 4),
        "seconds": round(time.perf_counter() - started, 1), "retrieval_top1": {"random": before, "trained": after},
    }, indent=1))  # fmt: skip
    print(f"held-out retrieval top-1 among 32: random {before:.3f} -> trained {after:.3f}")


if __name__ == "__main__":
    main()
