"""Sample text from a trained checkpoint.

examples:
    minigpt sample outputs/cpu-cosine_warmup/<date>/checkpoints/step_0000600.pt \
        --prompt "def main(" --max-new-tokens 200 --temperature 0.8 --top-k 50 --num-samples 2
    minigpt sample outputs/cpu-cosine_warmup/<date>     # a run folder: its newest checkpoint
"""

from __future__ import annotations

import sys

import torch

from minigpt.data.tokenizer import tokenizer_from_json
from minigpt.errors import UserError
from minigpt.model import GPT, GPTConfig
from minigpt.run.checkpoint import checkpoint_to_read
from minigpt.tools import parser as tool_parser


def main(argv=None, prog=None) -> int:
    parser = tool_parser(__doc__, prog)
    parser.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest checkpoint)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cache", action="store_true", help="recompute the full context at every token")
    args = parser.parse_args(argv)
    try:
        path, state = checkpoint_to_read(args.checkpoint)
        if args.temperature < 0 or args.top_k < 0 or args.max_new_tokens < 1:
            raise UserError("--temperature and --top-k must be >= 0 and --max-new-tokens >= 1")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"loaded {path} (step {state['step']})", file=sys.stderr)  # which one a run folder gave
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(args.device).eval()
    tokenizer = tokenizer_from_json(state["tokenizer"])
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eot_id]
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                         use_cache=not args.no_cache, generator=generator)
    for i, row in enumerate(out.tolist()):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(tokenizer.decode(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
