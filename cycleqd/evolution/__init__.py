"""The evolution: `run` (the feature: `cycleqd.evolve`), `loop` (drives the algorithm), `evaluator` (a candidate
scored by real episodes), `report` (`cycleqd report`), `command` (the demo's call)."""
