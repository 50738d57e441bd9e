"""Experiments: one evaluation run (options, plan, run folder, skip-if-complete) and suites of them."""

from maw_reranker.experiments.eval_run import EvalOptions, EvalOutcome, EvalPlan, RunConflictError, plan_eval, run_eval
from maw_reranker.experiments.suite import SuiteOptions, SuiteOutcome, plan, run_suite

__all__ = ["EvalOptions", "EvalOutcome", "EvalPlan", "RunConflictError", "SuiteOptions", "SuiteOutcome", "plan",
           "plan_eval", "run_eval", "run_suite"]
