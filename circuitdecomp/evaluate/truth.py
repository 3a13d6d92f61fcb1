"""The animal world's ground truth in the form scoring reads: two families of directions with per-input coefficients.

This is one of the ground truth's three allowed uses (scoring); the world itself knows nothing of evaluation types.
"""

from circuitdecomp.evaluate.recovery import Family, GroundTruth
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.sampler import true_coefficients
from circuitdecomp.world.world import World


def ground_truth(world: World, examples: Examples) -> GroundTruth:
    """Animals (v_i, c_i(x)) and attributes (u_j, c'_j(x)) at the read-out position, scored also within the entity subspace."""
    coef = true_coefficients(world, examples.entity)
    families = (
        Family("animals", world.animal_directions, coef.animals),
        Family("attributes", world.attribute_directions, coef.attributes),
    )
    return GroundTruth(families, world.geometry.entity_basis)
