"""Batch evaluation and certification over an image folder (``fvit eval``, ``fvit certify``).

- :mod:`.store`: append-only, resumable row files (one complete line per flush + fsync) and
  atomic writes;
- :mod:`.data`: the image folder, the label map and the seeded subset;
- :mod:`.perturbation`: the perturbation test (Chefer et al.) and its AUC;
- :mod:`.evaluate`: the evaluation grid and its per-image engine (attacks reused across
  settings);
- :mod:`.certification`: Cohen's CERTIFY per image plus the top-k attention radius;
- :mod:`.summary`: means and 95% confidence intervals, CSV and Markdown tables;
- :mod:`.plots`: the summary figures.
"""
