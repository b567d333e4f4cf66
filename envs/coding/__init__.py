"""The coding environment (HumanEval, MBPP): tasks and episode, the sandboxed checker, training data."""
