"""Export a trained model as a Hugging Face GPT-2 folder (safetensors weights and the tokenizer).

    python scripts/export_hf.py outputs/cpu-cosine_warmup/<date>_<time> -o exported/my-gpt
    python scripts/export_hf.py RUN_DIR/checkpoints/step_0000600.pt -o exported/my-gpt

The folder loads with transformers' AutoModelForCausalLM.from_pretrained and
AutoTokenizer.from_pretrained; its logits are minigpt's (minigpt/export_hf.py says how each
choice of our GPT maps onto GPT-2's config). Needs transformers and safetensors.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from minigpt.errors import UserError  # noqa: E402
from minigpt.export_hf import export_gpt2  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest intact checkpoint)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the folder to write (new, or empty)")
    args = ap.parse_args(argv)
    try:
        path, state = export_gpt2(args.checkpoint, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} (step {state['step']}) to {args.out}: load it with "
          f"AutoModelForCausalLM.from_pretrained('{args.out}') and AutoTokenizer.from_pretrained('{args.out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
