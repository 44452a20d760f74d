"""model/: the network and its weights.

Holds ``DABNet`` and ``DABNetConfig`` (the ablation knobs) with official checkpoint reading
(:mod:`.dabnet`), the fast exact CPU ops (:mod:`.fast_ops`) and training-checkpoint I/O (:mod:`.checkpoints`).

May import: the shared bottom layer and data/.
"""

from .dabnet import DABNet, DABNetConfig

__all__ = ["DABNet", "DABNetConfig"]
