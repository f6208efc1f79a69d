"""Train a GPT from scratch:  python train.py [group=option ...] [key=value ...]

The same as `minigpt train ...`: both run minigpt/launch/train.py's main() (the command line
checked, the config composed by Hydra's @hydra.main app and typed, each job trained). This file
stays for the commands of a checkout and of the docs, and for Hydra's shell completion
(`python train.py --shell-completion install=bash`), which looks for "@hydra.main" in it.

Examples:
    python train.py                                  # the CPU default on the stdlib corpus
    python train.py scheduler=wsd optim.lr=3e-3
    python train.py -m scheduler=constant_warmup,cosine_warmup optim.lr=1e-3,3e-3
    python train.py experiment=warmup_divergence_cpu
    python train.py experiment=lr_range_test          # ramp the LR, suggest a peak
"""

from minigpt.launch.train import main

if __name__ == "__main__":
    main()
