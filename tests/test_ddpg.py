"""The agents of the layer-by-layer ratio searches: AMC's DDPG and the PPO alternative find a
known optimum on a toy reward; their state_dicts continue exactly."""
import pytest
import torch

from gcnprune_fast.methods.search.ddpg import DDPGAgent, DDPGConfig, truncated_normal
from gcnprune_fast.methods.search.ratio_ppo import PPOConfig, RatioPPOAgent

TARGET = torch.tensor([0.9, 0.2, 0.7, 0.1])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(t, prev):
    s = torch.zeros(len(TARGET) + 1)
    s[t] = 1.0
    s[-1] = prev
    return s


def _episode(agent, explore=True):
    states, actions, prev = [], [], 1.0
    for t in range(len(TARGET)):
        s = _state(t, prev)
        a = agent.act(s, explore=explore)
        states.append(s)
        actions.append(a)
        prev = a
    states = torch.stack(states)
    actions = torch.tensor(actions)
    reward = -float((actions - TARGET).abs().sum())
    return states, actions, torch.cat([states[1:], states[-1:]]), reward


def _train(agent, episodes):
    for _ in range(episodes):
        agent.observe_episode(*_episode(agent))
    return -_episode(agent, explore=False)[3]  # greedy L1 error


def test_truncated_normal_stays_in_bounds():
    g = torch.Generator().manual_seed(0)
    x = truncated_normal(torch.full((2000,), 0.95), 0.5, 0.2, 1.0, g)
    assert float(x.min()) >= 0.2 and float(x.max()) <= 1.0
    assert 0.6 < float(x.mean()) < 0.8  # truncation pulls the mean inside
    assert torch.equal(truncated_normal(torch.tensor([1.5, 0.1]), 0.0, 0.2, 1.0), torch.tensor([1.0, 0.2]))


def test_ddpg_finds_toy_optimum():
    # AMC's algorithm and schedule (noise 0.5 decaying 0.95 per episode), a smaller and faster
    # learning network for the 4-step toy
    config = DDPGConfig(low=0.05, high=1.0, warmup=10, hidden=128, lr_actor=1e-3, lr_critic=3e-3,
                        batch_size=32)
    agent = DDPGAgent(len(TARGET) + 1, len(TARGET), config, seed=0)
    start = -_episode(agent, explore=False)[3]
    err = _train(agent, 160)
    assert start > 0.9  # the untrained actor is far from the optimum
    assert err < 0.2, err
    assert agent.sigma < 0.5 * config.noise  # exploration decayed


def test_ppo_finds_toy_optimum():
    config = PPOConfig(low=0.05, high=1.0, hidden=64, lr=3e-3, episodes_per_update=8, init_std=0.3)
    agent = RatioPPOAgent(len(TARGET) + 1, len(TARGET), config, seed=0)
    start = -_episode(agent, explore=False)[3]
    err = _train(agent, 400)
    assert start > 0.9
    assert err < 0.3, err


@pytest.mark.parametrize("kind", ["ddpg", "ppo"])
def test_agent_state_dict_continues_exactly(kind):
    def make():
        if kind == "ddpg":
            return DDPGAgent(5, 4, DDPGConfig(hidden=16, warmup=2, batch_size=4), seed=1)
        return RatioPPOAgent(5, 4, PPOConfig(hidden=16, episodes_per_update=3), seed=1)

    a = make()
    _train(a, 4)
    b = make()
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        ea, eb = _episode(a), _episode(b)
        assert torch.equal(ea[1], eb[1])
        a.observe_episode(*ea)
        b.observe_episode(*eb)
    with pytest.raises(ValueError, match="different configuration"):
        other = DDPGAgent(5, 4, DDPGConfig(hidden=8), seed=1) if kind == "ddpg" else \
            RatioPPOAgent(5, 4, PPOConfig(hidden=8), seed=1)
        other.load_state_dict(a.state_dict())


def test_config_checks():
    with pytest.raises(ValueError, match="low < high"):
        DDPGConfig(low=0.5, high=0.4)
    with pytest.raises(ValueError, match="low < high"):
        PPOConfig(low=1.0)
