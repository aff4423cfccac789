"""Parts every search method shares (channel-gcn today; the network-level searches next):

- :mod:`.reward`: the cached reward set and the mask scorer (masked evaluation, BN re-estimation
  in one forward, cache by mask content, channels_last evaluation);
- :mod:`.checkpoint`: fingerprinted, atomic search checkpoints and resume;
- :mod:`.policy_gradient`: advantages and the REINFORCE / PPO-clip update of a Bernoulli policy;
- :mod:`.gcn`: a GCN layer (normalized graph + ``ops.spmm`` + per-group or shared linear) for
  channel-level policies and network-level aggregators alike;
- :mod:`.layer_features`: AMC's layer embedding of the groups, their activation summary, the
  decision order and the dynamic state of a layer-by-layer search;
- :mod:`.ddpg` (AMC's DDPG) and :mod:`.ratio_ppo` (PPO-clip): agents choosing a keep ratio per step;
- :mod:`.ratio_search`: AMC's environment (legal widths, the action wall) and the episode loop;
- :mod:`.pruningnet`: the network-graph aggregator, PruningNet (generated or shared sliced
  weights for any widths), its training and the scorer of its sub-networks.
"""
from gcnprune_fast.methods.search.checkpoint import SearchCheckpoint
from gcnprune_fast.methods.search.ddpg import DDPGAgent, DDPGConfig
from gcnprune_fast.methods.search.gcn import GCNLayer, GroupedLinear
from gcnprune_fast.methods.search.policy_gradient import (MovingBaseline, bernoulli_policy_update,
                                                          leave_one_out_advantages,
                                                          normalized_advantages)
from gcnprune_fast.methods.search.reward import (REWARD_KINDS, MaskScorer, RewardSet,
                                                 channels_last_evaluation, mask_key)
from gcnprune_fast.methods.search.pruningnet import (PruningNet, PruningNetScorer,
                                                     prepare_pruningnet, train_pruningnet)
from gcnprune_fast.methods.search.ratio_ppo import PPOConfig, RatioPPOAgent
from gcnprune_fast.methods.search.ratio_search import RatioEnvironment, run_ratio_search

__all__ = ["SearchCheckpoint", "GCNLayer", "GroupedLinear", "MovingBaseline",
           "bernoulli_policy_update", "leave_one_out_advantages", "normalized_advantages",
           "REWARD_KINDS", "MaskScorer",
           "RewardSet", "channels_last_evaluation", "mask_key", "DDPGAgent", "DDPGConfig",
           "PPOConfig", "RatioPPOAgent", "RatioEnvironment", "run_ratio_search", "PruningNet",
           "PruningNetScorer", "prepare_pruningnet", "train_pruningnet"]
