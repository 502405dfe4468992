"""Tuning: the search over compilation choices (MetaSchedule + XGBoost), locally or over RPC.

``tune`` drives it (budgets per task, resumable); ``builder`` and ``measure`` are where
candidates are built and measured; ``replay`` answers candidates the database already holds;
``database`` (with its ``lock`` and ``database_check``) keeps one database per (target,
model); ``stop`` ends a run cleanly; ``intrinsics`` keeps MetaSchedule's start-up cheap.
"""
