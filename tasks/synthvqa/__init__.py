"""SynthVQA: a deterministic synthetic video multiple-choice QA set that stresses token reduction.

``generate`` renders samples and writes splits; ``synthvqa.yaml`` + ``utils`` are the lmms-eval task.
"""
