"""`decaylab demo`: does weight decay help at the checkpoint a user would keep? λ = 0 against λ > 0, paired over
seeds, on builtin data, with the samples and the report.

The default story (`configs/demo_lm.yaml`): a small decoder-only Transformer that overfits 200 of Shakespeare's
speeches; `--config` runs the same comparison on any config (e.g. `configs/demo.yaml`, GRU translation).
"""

from decaylab.demo.run import DEMO_CONFIG, DEMO_SEEDS, DemoResult, run_demo

__all__ = ["DEMO_CONFIG", "DEMO_SEEDS", "DemoResult", "run_demo"]
