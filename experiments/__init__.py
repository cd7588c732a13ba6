"""Experiments: the workflows that the scripts in ``scripts/`` call.

Everything here builds on the library packages (``prune_env``, ``agents``,
``target_models``) and may use pandas and matplotlib, which the library packages never
import:

- :mod:`experiments.train`: search, then fine-tune, report and export one agent's network;
- :mod:`experiments.report`: the final measurements and ``report.json`` of a pruned network;
- :mod:`experiments.compare`: heuristics and agents at several budgets and seeds, tables, Pareto plot;
- :mod:`experiments.fidelity`: how well each evaluation mode ranks candidates (proxy fidelity);
- :mod:`experiments.train_with_pruning`: training loops that prune while they train, their plots;
- :mod:`experiments.sweep`: prune step by step and measure after each step.
"""
