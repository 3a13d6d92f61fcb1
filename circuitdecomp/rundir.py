"""The run directory's layout: one name per file that one stage writes and another reads.

Every stage finds its inputs through these names, so no stage imports another to learn where a file is.
"""

WORLD_FILE = "world.safetensors"  # the world's tensors (ground truth included) and its config
TARGET_FILE = "target.safetensors"  # the trained (or planted) target's weights
DECOMPOSITION_FILE = "decomposition.safetensors"  # the finished decomposition: components and CI functions
FEATURES_FILE = "features.safetensors"  # features from circuits: directions and per-input values
CONTROLS_FILE = "controls.safetensors"  # <control>/directions, <control>/values on the scored inputs
RANDOM_START = "spd_random_start"  # sub-directory and metric prefix of the decomposition from a random start
CHECKPOINTS = "checkpoints"  # resumable training state (target training under checkpoints/target/)
