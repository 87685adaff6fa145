"""Pretrained weights: the catalogue (:mod:`.catalogue`) and the run folders made from it (:mod:`.fetch`)."""
from .catalogue import CATALOGUE, PretrainedWeights, audioset_labels, catalogue_table
from .fetch import MIRROR_ENV, PretrainedError, pretrained, resolve_run

__all__ = ["CATALOGUE", "PretrainedWeights", "audioset_labels", "catalogue_table", "MIRROR_ENV", "PretrainedError",
           "pretrained", "resolve_run"]
