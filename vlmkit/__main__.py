"""`python -m vlmkit ...` is the `vlmkit` command (`vlmkit.cli.vlmkit_main`), for launchers that run a module: `accelerate launch -m vlmkit sft --config cfg.yaml`."""
import sys
from vlmkit.cli import vlmkit_main

if __name__ == '__main__': sys.exit(vlmkit_main())
