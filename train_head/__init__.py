"""Stage two: train heads on cached features (CoRe and baselines), sweeps; see docs/ARCHITECTURE.md.

Kept light on purpose (no torch import here): `python -m train_head --help` and the submodules import
what they need. Entry points: `train_head.trainer.train`, `train_head.config.resolve_config`,
`train_head.sweep.run_many`; CLI `python -m train_head`.
"""
