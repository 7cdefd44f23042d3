"""What perturbs: PGD, AutoAttack and torchattacks adapters, BPDA/EOT wrappers (later issues).

Every attack will take inputs and eps in [0, 1] pixel space; normalisation lives in the model.
"""
