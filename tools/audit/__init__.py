"""Privacy audit: attacks that measure what the app's outputs leak (not part of the FAB).

- :mod:`tools.audit.membership`: membership inference on a published model
  (loss threshold, Yeom et al. 2018; LiRA, Carlini et al. 2022) and ROC summaries.
- :mod:`tools.audit.inversion`: reconstruction of a client's examples from its update
  by the server ("Inverting Gradients", Geiping et al. 2020); refuses ciphertexts.
- :mod:`tools.audit.canary`: one-run privacy auditing of DP-SGD (Steinke, Nasr and
  Jagielski 2023): an empirical lower bound on ε to hold against the claimed ε.

- :mod:`tools.audit.run`: the audit of one finished run directory (the three attacks
  with their adversaries, ``audit.json``); ``fl-compare`` runs it for every setting.
- :mod:`tools.audit.cli`: ``fl-audit RUN_DIR`` / ``python -m tools.audit RUN_DIR``.
"""
