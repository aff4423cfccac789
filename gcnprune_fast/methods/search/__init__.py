"""Parts every search method shares (channel-gcn today; the network-level searches next):

- :mod:`.reward`: the cached reward set and the mask scorer (masked evaluation, BN re-estimation
  in one forward, cache by mask content, channels_last evaluation);
- :mod:`.checkpoint`: fingerprinted, atomic search checkpoints and resume;
- :mod:`.policy_gradient`: advantages and the REINFORCE / PPO-clip update of a Bernoulli policy;
- :mod:`.gcn`: a GCN layer (normalized graph + ``ops.spmm`` + per-group or shared linear) for
  channel-level policies and network-level aggregators alike.
"""
from gcnprune_fast.methods.search.checkpoint import SearchCheckpoint
from gcnprune_fast.methods.search.gcn import GCNLayer, GroupedLinear
from gcnprune_fast.methods.search.policy_gradient import (MovingBaseline, bernoulli_policy_update,
                                                          normalized_advantages)
from gcnprune_fast.methods.search.reward import (REWARD_KINDS, MaskScorer, RewardSet,
                                                 channels_last_evaluation, mask_key)

__all__ = ["SearchCheckpoint", "GCNLayer", "GroupedLinear", "MovingBaseline",
           "bernoulli_policy_update", "normalized_advantages", "REWARD_KINDS", "MaskScorer",
           "RewardSet", "channels_last_evaluation", "mask_key"]
